#include "imaging/site_index.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <system_error>

namespace fedrad::imaging {
namespace {

namespace fs = std::filesystem;

constexpr const char* kLabelsFile = "labels.csv";

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

// Hospital exports quote fields now and then; quotes with embedded commas are not supported.
std::string unquote(const std::string& s) {
  std::string t = trim(s);
  if (t.size() >= 2 && t.front() == '"' && t.back() == '"') t = trim(t.substr(1, t.size() - 2));
  return t;
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

// -1 when the text is no known label.
int parse_label(const std::string& text) {
  const std::string u = upper(text);
  if (u == kClassNames[0] || u == "0") return 0;
  if (u == kClassNames[1] || u == "1") return 1;
  return -1;
}

// Paths compare in lexically normal form so "./P1/a.dcm" in the csv matches the walk's "P1/a.dcm".
std::string normal_key(const fs::path& p) { return p.lexically_normal().generic_string(); }

bool is_hidden(const fs::path& relative) {
  for (const auto& part : relative) {
    const std::string name = part.string();
    if (!name.empty() && name[0] == '.' && name != "." && name != "..") return true;
  }
  return false;
}

// One data row of labels.csv; problems go into the index.
void add_row(const fs::path& root, const std::string& line, int line_number, SiteIndex* index,
             std::set<std::string>* listed) {
  const std::string where = (root / kLabelsFile).string() + " line " + std::to_string(line_number);
  const auto comma = line.find(',');
  if (comma == std::string::npos || line.find(',', comma + 1) != std::string::npos) {
    index->bad_rows.push_back({where, "expected 2 fields `file,label`, got: " + line});
    return;
  }
  const std::string file = unquote(line.substr(0, comma));
  const std::string label_text = unquote(line.substr(comma + 1));
  if (file.empty()) {
    index->bad_rows.push_back({where, "empty file name"});
    return;
  }
  const fs::path full = root / file;
  listed->insert(normal_key(fs::path(file)));
  const int label = parse_label(label_text);
  if (label < 0) {
    index->bad_rows.push_back({where, "unknown label '" + label_text + "' for " + file});
    return;
  }
  std::error_code ec;
  if (!fs::is_regular_file(full, ec)) {
    index->missing.push_back({full.string(), "listed in labels.csv (line " + std::to_string(line_number) +
                                                 ") but not found"});
    return;
  }
  index->files.push_back({full.string(), file, label});
  ++index->label_counts[kClassNames[label]];
}

Status read_labels(const fs::path& root, SiteIndex* index, std::set<std::string>* listed) {
  std::ifstream in(root / kLabelsFile, std::ios::binary);
  if (!in) return not_found((root / kLabelsFile).string() + ": cannot open");
  std::string line;
  int line_number = 0;
  bool header_seen = false;
  while (std::getline(in, line)) {
    ++line_number;
    if (line_number == 1 && line.size() >= 3 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);
    if (trim(line).empty()) continue;
    if (!header_seen) {
      header_seen = true;
      // Tolerate a csv without header: only skip the first line when it names the columns.
      const auto comma = line.find(',');
      if (comma != std::string::npos && upper(unquote(line.substr(0, comma))) == "FILE") continue;
    }
    add_row(root, line, line_number, index, listed);
  }
  if (in.bad()) return io_error((root / kLabelsFile).string() + ": read failed");
  return ok_status();
}

void find_unlabelled(const fs::path& root, const std::set<std::string>& listed, SiteIndex* index) {
  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec);
  std::vector<std::string> found;
  for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code type_ec;
    if (!it->is_regular_file(type_ec)) continue;
    const fs::path relative = it->path().lexically_relative(root);
    if (is_hidden(relative) || normal_key(relative) == kLabelsFile) continue;
    if (listed.count(normal_key(relative)) == 0) found.push_back(it->path().string());
  }
  std::sort(found.begin(), found.end());  // directory order differs between file systems
  for (auto& path : found) index->unlabelled.push_back({std::move(path), "not listed in labels.csv"});
  if (ec) index->unlabelled.push_back({root.string(), "folder walk stopped: " + ec.message()});
}

}  // namespace

StatusOr<SiteIndex> index_site(const std::string& dir) {
  const fs::path root(dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return not_found(dir + ": not a folder");
  SiteIndex index;
  index.root = dir;
  index.label_counts[kClassNames[0]] = 0;
  index.label_counts[kClassNames[1]] = 0;
  std::set<std::string> listed;
  FEDRAD_RETURN_IF_ERROR(read_labels(root, &index, &listed));
  find_unlabelled(root, listed, &index);
  return index;
}

std::string describe(const SiteIndex& index) {
  std::ostringstream out;
  out << index.root << ": " << index.files.size() << " labelled files";
  for (const auto& [label, count] : index.label_counts) out << ", " << label << " " << count;
  out << "\n";
  auto section = [&out](const char* title, const std::vector<FileProblem>& problems) {
    if (problems.empty()) return;
    out << "  " << title << " (" << problems.size() << "):\n";
    for (const auto& p : problems) out << "    " << p.path << ": " << p.reason << "\n";
  };
  section("missing", index.missing);
  section("bad rows", index.bad_rows);
  section("unlabelled", index.unlabelled);
  if (index.missing.empty() && index.bad_rows.empty() && index.unlabelled.empty()) out << "  no problems\n";
  return out.str();
}

}  // namespace fedrad::imaging
