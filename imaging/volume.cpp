#include "imaging/volume.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <map>
#include <numeric>
#include <sstream>

#include <itkImage.h>
#include <itkImageFileReader.h>
#include <itkImageFileWriter.h>
#include <itkLinearInterpolateImageFunction.h>
#include <itkNearestNeighborInterpolateImageFunction.h>
#include <itkNiftiImageIO.h>
#include <itkResampleImageFilter.h>

#include "imaging/scan.h"

namespace fedrad::imaging {
namespace {

using FloatImage = itk::Image<float, 3>;

std::string fmt(double v) {
  std::ostringstream s;
  s.precision(6);
  s << v;
  return s.str();
}

FloatImage::Pointer to_itk(const Volume& v) {
  auto image = FloatImage::New();
  FloatImage::RegionType region;
  FloatImage::SizeType size;
  for (int k = 0; k < 3; ++k) size[k] = static_cast<itk::SizeValueType>(v.size[k]);
  region.SetSize(size);
  image->SetRegions(region);
  FloatImage::SpacingType spacing;
  FloatImage::PointType origin;
  FloatImage::DirectionType direction;
  for (int k = 0; k < 3; ++k) {
    spacing[k] = v.spacing[k];
    origin[k] = v.origin[k];
    for (int j = 0; j < 3; ++j) direction(k, j) = v.direction[k * 3 + j];
  }
  image->SetSpacing(spacing);
  image->SetOrigin(origin);
  image->SetDirection(direction);
  image->Allocate();
  std::copy(v.voxels.begin(), v.voxels.end(), image->GetBufferPointer());
  return image;
}

Volume from_itk(const FloatImage* image) {
  Volume v;
  const auto size = image->GetLargestPossibleRegion().GetSize();
  for (int k = 0; k < 3; ++k) {
    v.size[k] = static_cast<int>(size[k]);
    v.spacing[k] = image->GetSpacing()[k];
    v.origin[k] = image->GetOrigin()[k];
    for (int j = 0; j < 3; ++j) v.direction[k * 3 + j] = image->GetDirection()(k, j);
  }
  v.voxels.assign(image->GetBufferPointer(), image->GetBufferPointer() + v.count());
  return v;
}

Status check_volume(const std::string& what, const Volume& v) {
  for (int k = 0; k < 3; ++k) {
    if (v.size[k] <= 0) return invalid_argument(what + ": empty volume");
    if (!(v.spacing[k] > 0)) return invalid_argument(what + ": spacing must be positive");
  }
  if (v.voxels.size() != v.count()) {
    return invalid_argument(what + ": " + std::to_string(v.voxels.size()) + " voxels, size says " +
                            std::to_string(v.count()));
  }
  return ok_status();
}

template <typename T>
Status write_typed(const std::string& path, const Volume& v) {
  using Image = itk::Image<T, 3>;
  auto image = Image::New();
  auto f = to_itk(v);
  image->CopyInformation(f);
  image->SetRegions(f->GetLargestPossibleRegion());
  image->Allocate();
  T* out = image->GetBufferPointer();
  for (size_t i = 0; i < v.voxels.size(); ++i) {
    if constexpr (std::is_same_v<T, float>) {
      out[i] = v.voxels[i];
    } else {
      const double r = std::nearbyint(static_cast<double>(v.voxels[i]));
      if (!(r >= std::numeric_limits<T>::min() && r <= std::numeric_limits<T>::max())) {
        return invalid_argument(path + ": voxel value " + fmt(v.voxels[i]) + " does not fit the mask type");
      }
      out[i] = static_cast<T>(r);
    }
  }
  auto writer = itk::ImageFileWriter<Image>::New();
  writer->SetImageIO(itk::NiftiImageIO::New());
  writer->SetFileName(path);
  writer->SetInput(image);
  writer->Update();
  return ok_status();
}

double dot(const std::array<double, 3>& a, const std::array<double, 3>& b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

struct Slice {
  std::string path;
  DicomPixels pixels;
  double d = 0;  // position along the normal
};

}  // namespace

const char* problem_name(SeriesProblemKind kind) {
  switch (kind) {
    case SeriesProblemKind::kMissingSlice: return "missing_slice";
    case SeriesProblemKind::kDuplicatePosition: return "duplicate_position";
    case SeriesProblemKind::kInconsistentGeometry: return "inconsistent_geometry";
    case SeriesProblemKind::kNoGeometry: return "no_geometry";
    case SeriesProblemKind::kUnreadable: return "unreadable";
  }
  return "?";
}

bool SeriesVolume::has(SeriesProblemKind kind) const {
  return std::any_of(problems.begin(), problems.end(), [&](const SeriesProblem& p) { return p.kind == kind; });
}

StatusOr<SeriesVolume> series_to_volume(const std::vector<std::string>& files, const ReadOptions& options) {
  if (files.empty()) return invalid_argument("series_to_volume: no files");
  SeriesVolume out;
  std::vector<Slice> slices;
  std::map<std::string, int> series_uids;
  bool blocking = false;
  for (const auto& path : files) {
    auto header = read_header(path);
    if (header.ok()) series_uids[header->series_uid]++;
    auto px = read_dicom(path, options);
    if (!px.ok()) {
      out.problems.push_back({SeriesProblemKind::kUnreadable, px.status().message()});
      blocking = true;
      continue;
    }
    if (!px->has_position || !px->has_orientation) {
      out.problems.push_back({SeriesProblemKind::kNoGeometry, path + ": no ImagePositionPatient/ImageOrientationPatient"});
      blocking = true;
      continue;
    }
    slices.push_back({path, std::move(px).value(), 0});
  }
  if (!series_uids.empty()) out.series_uid = series_uids.begin()->first;
  if (series_uids.size() > 1) {
    out.problems.push_back({SeriesProblemKind::kInconsistentGeometry,
                            "files from " + std::to_string(series_uids.size()) + " series"});
    blocking = true;
  }
  if (slices.empty()) return out;

  const DicomPixels& ref = slices.front().pixels;
  const std::array<double, 3> row{ref.orientation[0], ref.orientation[1], ref.orientation[2]};
  const std::array<double, 3> col{ref.orientation[3], ref.orientation[4], ref.orientation[5]};
  const std::array<double, 3> normal{row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2],
                                     row[0] * col[1] - row[1] * col[0]};
  for (auto& s : slices) {
    const DicomPixels& p = s.pixels;
    std::string what;
    for (int i = 0; i < 6; ++i)
      if (std::abs(p.orientation[i] - ref.orientation[i]) > 1e-4) what = "orientation";
    if (p.rows != ref.rows || p.columns != ref.columns) {
      what = "size " + std::to_string(p.rows) + "x" + std::to_string(p.columns) + " vs " + std::to_string(ref.rows) +
             "x" + std::to_string(ref.columns);
    }
    if (std::abs(p.row_spacing - ref.row_spacing) > 1e-4 || std::abs(p.column_spacing - ref.column_spacing) > 1e-4) {
      what = "pixel spacing " + fmt(p.row_spacing) + "/" + fmt(p.column_spacing) + " vs " + fmt(ref.row_spacing) +
             "/" + fmt(ref.column_spacing);
    }
    if (p.frames != 1) what = std::to_string(p.frames) + " frames in one slice file";
    if (!what.empty()) {
      out.problems.push_back({SeriesProblemKind::kInconsistentGeometry, s.path + ": " + what});
      blocking = true;
    }
    s.d = dot(p.position, normal);
  }
  std::stable_sort(slices.begin(), slices.end(), [](const Slice& a, const Slice& b) { return a.d < b.d; });

  // Duplicates: same position (to a micrometre); the later file is dropped.
  std::vector<Slice> kept;
  for (auto& s : slices) {
    if (!kept.empty() && std::abs(s.d - kept.back().d) < 1e-3) {
      out.problems.push_back({SeriesProblemKind::kDuplicatePosition,
                              s.path + " and " + kept.back().path + " both at " + fmt(s.d) + " mm along the normal"});
      continue;
    }
    kept.push_back(std::move(s));
  }
  std::vector<double> gaps;
  for (size_t i = 1; i < kept.size(); ++i) gaps.push_back(kept[i].d - kept[i - 1].d);
  double nominal = kept.front().pixels.slice_thickness > 0 ? kept.front().pixels.slice_thickness : 1.0;
  if (!gaps.empty()) {
    std::vector<double> sorted = gaps;
    std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
    nominal = sorted[sorted.size() / 2];
  }
  for (size_t i = 0; i < gaps.size(); ++i) {
    if (gaps[i] > 1.5 * nominal) {
      const long missing = std::lround(gaps[i] / nominal) - 1;
      out.problems.push_back({SeriesProblemKind::kMissingSlice,
                              "gap of " + fmt(gaps[i]) + " mm (usual " + fmt(nominal) + " mm) between " +
                                  fmt(kept[i].d) + " and " + fmt(kept[i + 1].d) + " mm along the normal: about " +
                                  std::to_string(std::max(1L, missing)) + " slice(s) missing"});
    }
  }
  for (const auto& s : kept) out.files.push_back(s.path);
  if (blocking) return out;

  Volume& v = out.volume;
  v.size = {ref.columns, ref.rows, static_cast<int>(kept.size())};
  v.spacing = {ref.column_spacing, ref.row_spacing, nominal};
  v.origin = kept.front().pixels.position;
  for (int k = 0; k < 3; ++k) {
    v.direction[k * 3 + 0] = row[k];
    v.direction[k * 3 + 1] = col[k];
    v.direction[k * 3 + 2] = normal[k];
  }
  v.voxels.reserve(v.count());
  for (const auto& s : kept) v.voxels.insert(v.voxels.end(), s.pixels.pixels.begin(), s.pixels.pixels.end());
  out.has_volume = true;
  return out;
}

StatusOr<std::vector<SeriesVolume>> load_series(const std::string& dir, const ReadOptions& options) {
  FEDRAD_ASSIGN_OR_RETURN(auto scan, scan_folder(dir));
  std::map<std::string, std::vector<std::string>> by_series;
  for (const auto& f : scan.files) by_series[f.series_uid].push_back(f.path);
  std::vector<SeriesVolume> out;
  for (const auto& [uid, files] : by_series) {
    FEDRAD_ASSIGN_OR_RETURN(auto sv, series_to_volume(files, options));
    out.push_back(std::move(sv));
  }
  return out;
}

StatusOr<Volume> read_nifti(const std::string& path) {
  try {
    auto reader = itk::ImageFileReader<FloatImage>::New();
    auto io = itk::NiftiImageIO::New();
    if (!io->CanReadFile(path.c_str())) return corrupt(path + ": not a NIfTI file");
    reader->SetImageIO(io);
    reader->SetFileName(path);
    reader->Update();
    return from_itk(reader->GetOutput());
  } catch (const std::exception& e) {
    return corrupt(path + ": cannot read NIfTI (" + std::string(e.what()).substr(0, 300) + ")");
  }
}

Status write_nifti(const std::string& path, const Volume& volume, VoxelType type) {
  FEDRAD_RETURN_IF_ERROR(check_volume(path, volume));
  try {
    switch (type) {
      case VoxelType::kFloat32: return write_typed<float>(path, volume);
      case VoxelType::kUInt8: return write_typed<uint8_t>(path, volume);
      case VoxelType::kInt16: return write_typed<int16_t>(path, volume);
    }
  } catch (const std::exception& e) {
    return io_error(path + ": cannot write NIfTI (" + std::string(e.what()).substr(0, 300) + ")");
  }
  return internal_error(path + ": unknown voxel type");
}

StatusOr<Volume> resample(const Volume& in, const std::array<double, 3>& spacing, Interpolation interpolation) {
  FEDRAD_RETURN_IF_ERROR(check_volume("resample", in));
  for (double s : spacing)
    if (!(s > 0) || !std::isfinite(s)) return invalid_argument("resample: target spacing must be positive");
  try {
    auto image = to_itk(in);
    using Filter = itk::ResampleImageFilter<FloatImage, FloatImage>;
    auto filter = Filter::New();
    filter->SetInput(image);
    FloatImage::SizeType size;
    FloatImage::SpacingType out_spacing;
    for (int k = 0; k < 3; ++k) {
      size[k] = static_cast<itk::SizeValueType>(std::max(1L, std::lround(in.size[k] * in.spacing[k] / spacing[k])));
      out_spacing[k] = spacing[k];
    }
    filter->SetSize(size);
    filter->SetOutputSpacing(out_spacing);
    filter->SetOutputOrigin(image->GetOrigin());
    filter->SetOutputDirection(image->GetDirection());
    filter->SetDefaultPixelValue(0);
    if (interpolation == Interpolation::kNearest) {
      filter->SetInterpolator(itk::NearestNeighborInterpolateImageFunction<FloatImage, double>::New());
    } else {
      filter->SetInterpolator(itk::LinearInterpolateImageFunction<FloatImage, double>::New());
    }
    filter->SetNumberOfWorkUnits(1);  // deterministic and CI-friendly; volumes here are small
    filter->Update();
    return from_itk(filter->GetOutput());
  } catch (const std::exception& e) {
    return internal_error(std::string("resample failed: ") + e.what());
  }
}

}  // namespace fedrad::imaging
