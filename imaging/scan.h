// What a folder of DICOM files holds, from headers (pixel data is skipped unless asked for):
// studies, series, modalities, transfer syntaxes, sizes, labels (when a labels.csv is there) and
// the files that cannot be read, with reasons. Used by `fedrad index` and by series_to_volume.
//
// Study and series UIDs are identifiers of the acquisition, not of the patient; no patient tag
// (name, ID, birth date, physician, institution, accession number) is read or reported.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "imaging/site_index.h"

namespace fedrad::imaging {

// The header fields of one file that indexing and volume building need.
struct FileHeader {
  std::string path;
  std::string relative;         // path under the scanned root
  uint64_t bytes = 0;           // file size
  std::string study_uid;
  std::string series_uid;
  std::string modality;
  std::string transfer_syntax;  // UID
  std::string photometric;
  int rows = 0;
  int columns = 0;
  int frames = 1;
  int samples_per_pixel = 1;
  int bits_allocated = 0;
  int bits_stored = 0;
  bool has_pixel_data = false;
  int instance_number = 0;      // 0 when absent
};

// Reads the header only: values longer than a few hundred bytes (pixel data, LUTs) are skipped,
// not loaded. Fails, naming the file and the reason, when the file is not parseable DICOM.
StatusOr<FileHeader> read_header(const std::string& path);

struct SeriesSummary {
  std::string series_uid;
  std::string modality;
  int files = 0;
  int frames = 0;                                // sum over files
  std::map<std::string, int> sizes;              // "rows x columns" -> files
  std::map<std::string, int> transfer_syntaxes;  // UID -> files
};

struct StudySummary {
  std::string study_uid;
  std::map<std::string, SeriesSummary> series;   // by series UID
};

struct ScanOptions {
  bool decode_pixels = false;  // also decode every image (read_dicom), so broken pixel data is reported
};

struct FolderScan {
  std::string root;
  int files_seen = 0;                            // regular, non-hidden files other than labels.csv
  uint64_t bytes = 0;                            // of the DICOM files
  std::vector<FileHeader> files;                 // readable DICOM files, sorted by relative path
  std::vector<FileProblem> unreadable;           // not DICOM, truncated, or (decode_pixels) undecodable
  int without_pixels = 0;                        // readable DICOM without an image (SR, RT plan, ...)
  std::map<std::string, StudySummary> studies;   // by study UID ("" when absent)
  std::map<std::string, int> modalities;         // -> files
  std::map<std::string, int> transfer_syntaxes;  // UID -> files
  std::map<std::string, int> sizes;              // "rows x columns" -> files
  bool has_labels = false;                       // a labels.csv at the root
  SiteIndex labels;                              // when has_labels
};

// Walks `dir` recursively (hidden files and folders are skipped). Fails only when `dir` is not a
// readable folder (or its labels.csv exists but cannot be read).
StatusOr<FolderScan> scan_folder(const std::string& dir, const ScanOptions& options = {});

// Human-readable report (several lines) and the same as a JSON document (pretty-printed).
std::string describe(const FolderScan& scan);
std::string to_json(const FolderScan& scan);

// A readable name for a transfer syntax UID ("JPEG Lossless SV1"); the UID itself when unknown.
std::string transfer_syntax_name(const std::string& uid);

}  // namespace fedrad::imaging
