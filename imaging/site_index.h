// A site's labelled data: a folder of DICOM files (any nesting, with or without .dcm) and a
// labels.csv (`file,label`, paths relative to the csv) as hospitals export them.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedrad::imaging {

// The two classes of the pneumonia study. Labels are matched case-insensitively; 0/1 also work.
inline constexpr const char* kClassNames[2] = {"NORMAL", "PNEUMONIA"};

struct LabelledFile {
  std::string path;      // absolute or as given under the root
  std::string relative;  // as written in labels.csv
  int label = 0;         // 0 NORMAL, 1 PNEUMONIA
};

struct FileProblem {
  std::string path;
  std::string reason;
};

struct SiteIndex {
  std::string root;
  std::vector<LabelledFile> files;           // labelled files that exist, in labels.csv order
  std::map<std::string, int> label_counts;   // "NORMAL" -> count, "PNEUMONIA" -> count
  std::vector<FileProblem> missing;          // labels.csv rows whose file does not exist
  std::vector<FileProblem> bad_rows;         // rows that cannot be parsed or have an unknown label
  std::vector<FileProblem> unlabelled;       // files under the root that labels.csv does not list
};

// Indexes `dir` (which holds labels.csv). Fails only when the folder or labels.csv cannot be
// read at all; every per-file problem is listed in the index instead.
StatusOr<SiteIndex> index_site(const std::string& dir);

// A human-readable summary: counts per label, then each problem.
std::string describe(const SiteIndex& index);

}  // namespace fedrad::imaging
