// A synthetic chest-X-ray-like data set for the demo and tests, written as real DICOM files
// through imaging/dicom.h, so the demo exercises the same path as hospital data.
//
// Each image: a bright thorax with two darker lung fields, ribs, a mediastinum and noise; a
// "PNEUMONIA" image adds blurred bright opacities inside the lungs. Sites differ the way real
// sites do: encoding, MONOCHROME1 vs 2, bit depth, image size, class balance and brightness.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "imaging/dicom.h"

namespace fedrad::imaging {

struct SyntheticSiteSpec {
  std::string name;               // folder name, e.g. "site-1"
  int num_train = 200;
  int num_val = 60;
  double pneumonia_share = 0.5;
  int size = 64;                  // rows = columns
  int bits_stored = 8;
  bool monochrome1 = false;
  Encoding encoding = Encoding::kExplicitLittle;
  bool with_extension = true;     // files named IMxxxxx.dcm or IMxxxxx
  double brightness = 1.0;        // per-site intensity scale
  double noise = 0.05;            // per-site noise level (fraction of full scale)
};

// Three heterogeneous sites for the demo.
std::vector<SyntheticSiteSpec> default_demo_sites();

// Writes ROOT/<name>/{train,val}/<patient>/<file> plus a labels.csv in each split. Files carry PHI
// canaries (PatientName CANARY^<NAME>^<n>, PatientID PHI-...) as the shared data does.
Status write_synthetic_site(const std::string& root, const SyntheticSiteSpec& spec, uint64_t seed);

// One image's displayed values in [0, 2^bits_stored), rows*columns (exposed for tests).
std::vector<uint16_t> synthetic_chest_xray(int size, bool pneumonia, int bits_stored, double brightness,
                                           double noise, uint64_t seed);

}  // namespace fedrad::imaging
