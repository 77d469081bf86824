// Synthetic brain-tumour-like MRI for tests, the segmentation demo and benchmarks: skull-stripped
// 3D volumes of four channels (t1, t1c, t2, flair) with exact masks in the BraTS convention
// (1 necrotic core, 2 oedema, 4 enhancing tumour), written as NIfTI plus a cases.csv per split,
// the layout imaging/seg_data.h reads.
//
// Each case: an ellipsoidal brain (white matter, a grey-matter shell, two ventricles), one tumour
// of random size, position and lumpy shape (oedema around an enhancing rim around necrosis; small
// tumours may lack necrosis), per-case contrast, a smooth bias field and Gaussian noise. Sites
// differ as scanners do: intensity scale, noise level, bias strength and voxel spacing
// (resolution), so that a study must resample and normalise.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "imaging/volume.h"

namespace fedrad::imaging {

struct SyntheticSegSiteSpec {
  std::string name = "site-1";
  int num_train = 8;
  int num_val = 4;
  double extent_mm = 120;  // field of view along each axis
  double spacing = 2.0;    // isotropic voxel size (mm): the site's resolution
  double scale = 1.0;      // intensity scale (scanner units)
  double noise = 0.05;     // Gaussian noise, as a fraction of white matter's intensity
  double bias = 0.1;       // amplitude of the smooth multiplicative bias field
};

// Three heterogeneous sites for the segmentation demo and benchmark.
std::vector<SyntheticSegSiteSpec> default_seg_sites();

// Channel names, in the order synthetic_brain_case returns them.
const std::vector<std::string>& synthetic_seg_channels();

struct SyntheticSegCase {
  std::vector<Volume> channels;  // t1, t1c, t2, flair
  Volume mask;                   // 0, 1, 2, 4
};

// One case (exposed for tests): `size` voxels per axis at `spacing` mm.
SyntheticSegCase synthetic_brain_case(int size, double spacing, double scale, double noise, double bias, uint64_t seed);

// Writes ROOT/<name>/{train,val}/<case>/{t1,t1c,t2,flair,seg}.nii.gz and a cases.csv per split
// (columns case,t1,t1c,t2,flair,mask).
Status write_synthetic_seg_site(const std::string& root, const SyntheticSegSiteSpec& spec, uint64_t seed);

}  // namespace fedrad::imaging
