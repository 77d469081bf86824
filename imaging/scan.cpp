#include "imaging/scan.h"

#include <algorithm>
#include <exception>
#include <filesystem>
#include <sstream>
#include <system_error>

#include <dcmtk/config/osconfig.h>  // must precede every other DCMTK header
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <nlohmann/json.hpp>

#include "common/progress.h"
#include "imaging/dicom.h"

namespace fedrad::imaging {
namespace {

namespace fs = std::filesystem;

// Values longer than this stay on disk (DCMTK reads them lazily, and we never ask).
constexpr Uint32 kMaxHeaderValue = 256;

std::string get_string(DcmItem* item, const DcmTagKey& tag) {
  OFString value;
  if (item == nullptr || item->findAndGetOFString(tag, value).bad()) return "";
  std::string s = value.c_str();
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  while (!s.empty() && s.front() == ' ') s.erase(0, 1);
  return s;
}

int get_us(DcmItem* item, const DcmTagKey& tag, int fallback) {
  Uint16 v = 0;
  return item->findAndGetUint16(tag, v).good() ? v : fallback;
}

int get_is(DcmItem* item, const DcmTagKey& tag, int fallback) {
  Sint32 v = 0;
  return item->findAndGetSint32(tag, v).good() ? static_cast<int>(v) : fallback;
}

std::string size_key(int rows, int columns) { return std::to_string(rows) + "x" + std::to_string(columns); }

bool hidden(const fs::path& relative) {
  for (const auto& part : relative) {
    const std::string name = part.string();
    if (!name.empty() && name[0] == '.' && name != "." && name != "..") return true;
  }
  return false;
}

StatusOr<FileHeader> read_header_unchecked(const std::string& path) {
  DcmFileFormat file;
  OFCondition cond = file.loadFile(path.c_str(), EXS_Unknown, EGL_noChange, kMaxHeaderValue, ERM_autoDetect);
  if (cond.bad()) return corrupt(path + ": not readable as DICOM (" + std::string(cond.text()) + ")");
  DcmDataset* ds = file.getDataset();
  FileHeader h;
  h.path = path;
  h.study_uid = get_string(ds, DCM_StudyInstanceUID);
  h.series_uid = get_string(ds, DCM_SeriesInstanceUID);
  h.modality = get_string(ds, DCM_Modality);
  h.transfer_syntax = get_string(file.getMetaInfo(), DCM_TransferSyntaxUID);
  if (h.transfer_syntax.empty()) h.transfer_syntax = DcmXfer(ds->getOriginalXfer()).getXferID();
  h.photometric = get_string(ds, DCM_PhotometricInterpretation);
  h.rows = get_us(ds, DCM_Rows, 0);
  h.columns = get_us(ds, DCM_Columns, 0);
  h.frames = std::max(1, get_is(ds, DCM_NumberOfFrames, 1));
  h.samples_per_pixel = get_us(ds, DCM_SamplesPerPixel, 1);
  h.bits_allocated = get_us(ds, DCM_BitsAllocated, 0);
  h.bits_stored = get_us(ds, DCM_BitsStored, h.bits_allocated);
  h.has_pixel_data = ds->tagExists(DCM_PixelData) || ds->tagExists(DCM_FloatPixelData) ||
                     ds->tagExists(DCM_DoubleFloatPixelData);
  h.instance_number = get_is(ds, DCM_InstanceNumber, 0);
  std::error_code ec;
  h.bytes = fs::file_size(path, ec);
  if (ec) h.bytes = 0;
  return h;
}

}  // namespace

StatusOr<FileHeader> read_header(const std::string& path) {
  try {
    return read_header_unchecked(path);
  } catch (const std::exception& e) {
    return corrupt(path + ": header unreadable (" + e.what() + ")");
  } catch (...) {
    return corrupt(path + ": header unreadable");
  }
}

std::string transfer_syntax_name(const std::string& uid) {
  static const std::map<std::string, std::string> names = {
      {"1.2.840.10008.1.2", "Implicit VR Little Endian"},
      {"1.2.840.10008.1.2.1", "Explicit VR Little Endian"},
      {"1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian"},
      {"1.2.840.10008.1.2.2", "Explicit VR Big Endian"},
      {"1.2.840.10008.1.2.4.50", "JPEG Baseline"},
      {"1.2.840.10008.1.2.4.51", "JPEG Extended"},
      {"1.2.840.10008.1.2.4.57", "JPEG Lossless"},
      {"1.2.840.10008.1.2.4.70", "JPEG Lossless SV1"},
      {"1.2.840.10008.1.2.4.80", "JPEG-LS Lossless"},
      {"1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless"},
      {"1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless"},
      {"1.2.840.10008.1.2.4.91", "JPEG 2000"},
      {"1.2.840.10008.1.2.5", "RLE Lossless"},
  };
  auto it = names.find(uid);
  return it == names.end() ? uid : it->second;
}

StatusOr<FolderScan> scan_folder(const std::string& dir, const ScanOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return not_found(dir + ": not a folder");
  FolderScan scan;
  scan.root = dir;
  std::vector<fs::path> paths;
  fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
  if (ec) return io_error(dir + ": cannot list (" + ec.message() + ")");
  for (; it != end; it.increment(ec)) {
    if (ec) return io_error(dir + ": cannot list (" + ec.message() + ")");
    const fs::path rel = it->path().lexically_relative(dir);
    if (hidden(rel)) {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file(ec)) continue;
    if (rel == "labels.csv") continue;
    paths.push_back(it->path());
  }
  std::sort(paths.begin(), paths.end());
  Progress progress("index", "indexing " + dir, paths.size(), "files");
  for (const auto& p : paths) {
    progress.advance();
    ++scan.files_seen;
    const std::string rel = p.lexically_relative(dir).generic_string();
    auto h = read_header(p.string());
    if (!h.ok()) {
      scan.unreadable.push_back({rel, h.status().message()});
      continue;
    }
    h->relative = rel;
    if (!h->has_pixel_data) {
      ++scan.without_pixels;
      continue;
    }
    if (options.decode_pixels) {
      ReadOptions ro;
      ro.frame = 0;
      ro.colour = ColourPolicy::kLuma;  // colour is readable when asked; the index reports it as such
      auto px = read_dicom(p.string(), ro);
      if (!px.ok()) {
        scan.unreadable.push_back({rel, px.status().message()});
        continue;
      }
    }
    const FileHeader& f = *h;
    scan.bytes += f.bytes;
    StudySummary& study = scan.studies[f.study_uid];
    study.study_uid = f.study_uid;
    SeriesSummary& series = study.series[f.series_uid];
    series.series_uid = f.series_uid;
    if (series.modality.empty()) series.modality = f.modality;
    ++series.files;
    series.frames += f.frames;
    series.sizes[size_key(f.rows, f.columns)]++;
    series.transfer_syntaxes[f.transfer_syntax]++;
    scan.modalities[f.modality.empty() ? "(none)" : f.modality]++;
    scan.transfer_syntaxes[f.transfer_syntax]++;
    scan.sizes[size_key(f.rows, f.columns)]++;
    scan.files.push_back(std::move(h).value());
  }
  if (fs::exists(fs::path(dir) / "labels.csv", ec)) {
    FEDRAD_ASSIGN_OR_RETURN(scan.labels, index_site(dir));
    scan.has_labels = true;
  }
  return scan;
}

namespace {

nlohmann::json problems_json(const std::vector<FileProblem>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& p : v) a.push_back({{"file", p.path}, {"reason", p.reason}});
  return a;
}

std::string join_counts(const std::map<std::string, int>& m, bool syntax_names) {
  std::ostringstream out;
  bool first = true;
  for (const auto& [k, n] : m) {
    out << (first ? "" : ", ") << (syntax_names ? transfer_syntax_name(k) : k) << " " << n;
    first = false;
  }
  return out.str();
}

}  // namespace

std::string to_json(const FolderScan& scan) {
  nlohmann::json studies = nlohmann::json::array();
  size_t series_count = 0;
  for (const auto& [uid, study] : scan.studies) {
    nlohmann::json series = nlohmann::json::array();
    for (const auto& [suid, s] : study.series) {
      series.push_back({{"series_uid", suid},
                        {"modality", s.modality},
                        {"files", s.files},
                        {"frames", s.frames},
                        {"sizes", s.sizes},
                        {"transfer_syntaxes", s.transfer_syntaxes}});
      ++series_count;
    }
    studies.push_back({{"study_uid", uid}, {"series", series}});
  }
  nlohmann::json syntax_names = nlohmann::json::object();
  for (const auto& [uid, n] : scan.transfer_syntaxes) syntax_names[uid] = transfer_syntax_name(uid);
  nlohmann::json j = {{"folder", scan.root},
                      {"files_seen", scan.files_seen},
                      {"dicom_images", scan.files.size()},
                      {"without_pixels", scan.without_pixels},
                      {"bytes", scan.bytes},
                      {"study_count", scan.studies.size()},
                      {"series_count", series_count},
                      {"studies", studies},
                      {"modalities", scan.modalities},
                      {"transfer_syntaxes", scan.transfer_syntaxes},
                      {"transfer_syntax_names", syntax_names},
                      {"sizes", scan.sizes},
                      {"unreadable", problems_json(scan.unreadable)}};
  if (scan.has_labels) {
    j["labelled_files"] = scan.labels.files.size();
    j["labels"] = scan.labels.label_counts;
    j["unlabelled"] = problems_json(scan.labels.unlabelled);
    j["missing"] = problems_json(scan.labels.missing);
    j["bad_rows"] = problems_json(scan.labels.bad_rows);
  }
  return j.dump(2);
}

std::string describe(const FolderScan& scan) {
  std::ostringstream out;
  size_t series_count = 0;
  for (const auto& [uid, study] : scan.studies) series_count += study.series.size();
  out << scan.root << ": " << scan.files.size() << " DICOM image file(s), " << scan.studies.size()
      << " stud" << (scan.studies.size() == 1 ? "y" : "ies") << ", " << series_count << " series, "
      << scan.bytes / 1024 << " KiB";
  if (scan.without_pixels) out << "; " << scan.without_pixels << " DICOM file(s) without an image";
  out << "\n";
  if (!scan.modalities.empty()) out << "  modalities: " << join_counts(scan.modalities, false) << "\n";
  if (!scan.transfer_syntaxes.empty()) out << "  transfer syntaxes: " << join_counts(scan.transfer_syntaxes, true) << "\n";
  if (!scan.sizes.empty()) out << "  sizes: " << join_counts(scan.sizes, false) << "\n";
  constexpr size_t kMaxListed = 20;
  size_t listed = 0;
  for (const auto& [uid, study] : scan.studies) {
    if (listed >= kMaxListed) break;
    out << "  study " << (uid.empty() ? "(no UID)" : uid) << "\n";
    for (const auto& [suid, s] : study.series) {
      if (listed++ >= kMaxListed) break;
      out << "    series " << (suid.empty() ? "(no UID)" : suid) << ": " << (s.modality.empty() ? "?" : s.modality)
          << ", " << s.files << " file(s), " << s.frames << " frame(s), " << join_counts(s.sizes, false) << ", "
          << join_counts(s.transfer_syntaxes, true) << "\n";
    }
  }
  if (series_count > kMaxListed) out << "  ... " << series_count - kMaxListed << " more series (see --json)\n";
  if (scan.has_labels) {
    out << "  labels.csv: " << scan.labels.files.size() << " labelled file(s)";
    for (const auto& [label, n] : scan.labels.label_counts) out << ", " << label << " " << n;
    out << "; " << scan.labels.unlabelled.size() << " unlabelled, " << scan.labels.missing.size() << " missing, "
        << scan.labels.bad_rows.size() << " bad row(s)\n";
  }
  out << "  unreadable: " << scan.unreadable.size() << "\n";
  for (const auto& p : scan.unreadable) out << "    " << p.path << ": " << p.reason << "\n";
  if (scan.has_labels) {
    for (const auto& p : scan.labels.missing) out << "    missing " << p.path << ": " << p.reason << "\n";
    for (const auto& p : scan.labels.bad_rows) out << "    bad row " << p.path << ": " << p.reason << "\n";
  }
  return out.str();
}

}  // namespace fedrad::imaging
