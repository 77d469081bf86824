// 3D volumes: DICOM series to volume, NIfTI read/write, resampling (ITK inside; no ITK type in
// this header). Coordinates are DICOM/ITK patient coordinates (LPS, mm); ITK converts NIfTI's
// RAS on the way in and out.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "common/status.h"
#include "imaging/dicom.h"

namespace fedrad::imaging {

// A 3D image: voxels x fastest (along a row), then y (down the columns), then z (slices).
struct Volume {
  std::array<int, 3> size{0, 0, 0};
  std::array<double, 3> spacing{1, 1, 1};              // mm per voxel along x, y, z
  std::array<double, 3> origin{0, 0, 0};               // centre of voxel (0,0,0), mm
  std::array<double, 9> direction{1, 0, 0, 0, 1, 0, 0, 0, 1};  // row-major 3x3; column k = axis k
  std::vector<float> voxels;

  size_t count() const { return static_cast<size_t>(size[0]) * size[1] * size[2]; }
  size_t index(int x, int y, int z) const { return (static_cast<size_t>(z) * size[1] + y) * size[0] + x; }
  float at(int x, int y, int z) const { return voxels[index(x, y, z)]; }
};

// What can be wrong with a series, by name.
enum class SeriesProblemKind {
  kMissingSlice,          // a gap along the normal larger than 1.5x the usual slice distance
  kDuplicatePosition,     // two slices at the same position (the later file is left out)
  kInconsistentGeometry,  // orientation, rows/columns or pixel spacing differ between slices
  kNoGeometry,            // ImagePositionPatient / ImageOrientationPatient missing
  kUnreadable,            // a file of the series could not be decoded
};
const char* problem_name(SeriesProblemKind kind);  // "missing_slice", "duplicate_position", ...

struct SeriesProblem {
  SeriesProblemKind kind;
  std::string detail;  // which slices / files, what differs
};

struct SeriesVolume {
  std::string series_uid;
  std::vector<std::string> files;       // in slice order, as used in the volume
  std::vector<SeriesProblem> problems;  // empty: a clean series
  bool has_volume = false;              // false when a problem makes a volume meaningless
  Volume volume;                        // when has_volume; z spacing = median slice distance
  bool has(SeriesProblemKind kind) const;
};

// Builds one volume from the files of one series (any order). Slices are sorted by their position
// along the normal n = row direction x column direction (ImageOrientationPatient), d = IPP . n.
// Missing slices and duplicates are reported and the volume is still built (duplicates dropped;
// a gap is not filled); inconsistent geometry, missing geometry or an unreadable file are reported
// and no volume is built. Fails only when `files` is empty.
StatusOr<SeriesVolume> series_to_volume(const std::vector<std::string>& files, const ReadOptions& options = {});

// Groups the DICOM image files under `dir` by SeriesInstanceUID (header-only scan) and builds a
// volume for each series, in series UID order.
StatusOr<std::vector<SeriesVolume>> load_series(const std::string& dir, const ReadOptions& options = {});

// NIfTI-1 (.nii, .nii.gz) through itk::NiftiImageIO. Any stored voxel type is read as float.
StatusOr<Volume> read_nifti(const std::string& path);

enum class VoxelType { kFloat32, kUInt8, kInt16 };
// Masks: kUInt8 / kInt16 (values are rounded; a value out of the type's range is an error).
Status write_nifti(const std::string& path, const Volume& volume, VoxelType type = VoxelType::kFloat32);

enum class Interpolation { kLinear, kNearest };  // linear for images, nearest for label masks
// Resamples to `spacing` over the same physical extent: size_k = max(1, round(size_k * old_k /
// new_k)), same origin and direction (voxel (0,0,0) keeps its centre). Outside the input: 0.
StatusOr<Volume> resample(const Volume& in, const std::array<double, 3>& spacing, Interpolation interpolation);

}  // namespace fedrad::imaging
