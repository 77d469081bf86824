// A site's segmentation data: images plus masks, listed in a `cases.csv`:
//
//   case,t1,t1c,t2,flair,mask
//   BR0001,BR0001/t1.nii.gz,BR0001/t1c.nii.gz,BR0001/t2.nii.gz,BR0001/flair.nii.gz,BR0001/seg.nii.gz
//
// One column per input channel (named by the study's segmentation.channels, in any column order),
// paths relative to the csv. A channel is a NIfTI file (.nii, .nii.gz) or a folder holding one
// DICOM series; the mask is NIfTI with the study's label values (0 = background). Loading a case:
// every channel is resampled (linear) to the study's spacing, the mask with nearest neighbour;
// the volume is cropped to the bounding box of the foreground (voxels non-zero in any channel,
// e.g. the brain of skull-stripped MRI) plus a margin; each channel is z-scored over the
// foreground (nnU-Net's scheme for MRI), the background set to 0. No torch here.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "imaging/volume.h"

namespace fedrad::imaging {

struct SegCaseRow {
  std::string id;
  std::vector<std::string> channels;  // absolute or csv-relative paths resolved, in the requested order
  std::string mask;                   // "" when the csv has no mask column (prediction)
  int line = 0;                       // in cases.csv, for messages
};

// Reads `csv_path`; `channels` are the column names to take, in model order. Errors name the file,
// the row (line) and the column: missing columns, empty cells, files that do not exist, duplicate
// case ids. need_mask: the `mask` column is required.
StatusOr<std::vector<SegCaseRow>> read_cases_csv(const std::string& csv_path, const std::vector<std::string>& channels,
                                                 bool need_mask = true);

struct SegLoadOptions {
  std::vector<int> labels = {1};   // mask values of classes 1..K
  std::vector<double> spacing;     // [] = keep the stored spacing
  int margin = 4;                  // voxels kept around the foreground's bounding box
  bool crop = true;
};

// One case in memory, in the study's grid (resampled and cropped).
struct SegCase {
  std::string id;
  int channels = 0;
  std::array<int, 3> size{0, 0, 0};       // x y z of the cropped grid
  std::array<double, 3> spacing{1, 1, 1}; // mm
  std::vector<float> image;               // channels x z x y x, normalised
  std::vector<uint8_t> classes;           // z x y x, class index 0..K per voxel; empty without a mask
  // Where this grid sits: the resampled (uncropped) grid's size and the crop's first voxel in it,
  // and the first channel's original geometry (voxels dropped) to write predictions back.
  std::array<int, 3> grid_size{0, 0, 0};
  std::array<int, 3> crop_lo{0, 0, 0};
  Volume reference;

  size_t voxels() const { return static_cast<size_t>(size[0]) * size[1] * size[2]; }
};

// A channel: a NIfTI file, or a folder with exactly one DICOM series.
StatusOr<Volume> read_channel(const std::string& path);

// Builds a case from volumes already read (channels share one size; the mask too, when present).
StatusOr<SegCase> make_seg_case(const std::string& id, std::vector<Volume> channels, const Volume* mask,
                                const SegLoadOptions& options, const std::string& where = "");

StatusOr<SegCase> load_seg_case(const SegCaseRow& row, const SegLoadOptions& options);

// Every case of a cases.csv, `threads` at a time (0 = all cores). Fails on the first bad case
// (a segmentation study should not quietly train on fewer cases than listed).
StatusOr<std::vector<SegCase>> load_seg_cases(const std::string& csv_path, const std::vector<std::string>& channels,
                                              const SegLoadOptions& options, int threads = 0);

// Z-scores `n` values over the voxels where `foreground` is 1 (all voxels when it is empty or
// holds fewer than 1% of them); background voxels become 0.
void zscore_foreground(float* values, size_t n, const std::vector<uint8_t>& foreground);

// A class map of `c`'s grid back in the case's original geometry (nearest neighbour; outside the
// crop: background), as a label-value volume ready for write_nifti.
Volume classes_to_reference(const SegCase& c, const std::vector<uint8_t>& classes, const std::vector<int>& labels);

}  // namespace fedrad::imaging
