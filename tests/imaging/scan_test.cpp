// Folder scans for `fedrad index`, and the PHI rule: no patient tag value leaves the reader.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "imaging/dicom.h"
#include "imaging/scan.h"
#include "imaging/volume.h"
#include "tests/test_data.h"

namespace fedrad::imaging {
namespace {

namespace fs = std::filesystem;

const char* const kCanaries[] = {"CANARY", "PHI-", "Doe^"};

void expect_no_canary(const std::string& text, const std::string& where) {
  for (const char* c : kCanaries) EXPECT_EQ(text.find(c), std::string::npos) << where << " holds " << c;
}

TEST(Scan, PneumoniaSiteReport) {
  auto scan = scan_folder(fedrad::testing::pneumonia_site("site-b", "val"));
  ASSERT_TRUE(scan.ok()) << scan.status().to_string();
  EXPECT_EQ(scan->files.size(), 129u);
  EXPECT_TRUE(scan->unreadable.empty());
  EXPECT_EQ(scan->modalities.at("DX"), 129);
  EXPECT_EQ(scan->transfer_syntaxes.at("1.2.840.10008.1.2.4.70"), 129);
  EXPECT_EQ(scan->sizes.at("28x28"), 129);
  ASSERT_TRUE(scan->has_labels);
  EXPECT_EQ(scan->labels.files.size(), 129u);
  size_t series = 0;
  for (const auto& [uid, study] : scan->studies) series += study.series.size();
  EXPECT_GE(series, 1u);
  const std::string json = to_json(*scan);
  const std::string text = describe(*scan);
  EXPECT_NE(json.find("\"labels\""), std::string::npos);
  EXPECT_NE(text.find("JPEG Lossless SV1 129"), std::string::npos) << text;
  // The site's files carry CANARY^SITE-B^n names and PHI- IDs: none may show.
  expect_no_canary(json, "json");
  expect_no_canary(text, "text");
}

TEST(Scan, UnreadableFilesAreListedWithReasons) {
  const std::string dir = fedrad::testing::temp_dir("scan");
  WriteSpec spec;
  spec.rows = spec.columns = 8;
  spec.patient_name = "CANARY^SCAN^1";
  ASSERT_TRUE(write_dicom(dir + "/a.dcm", std::vector<uint16_t>(64, 3), spec).ok());
  std::ofstream(dir + "/notes.txt") << "not dicom";
  fs::create_directories(dir + "/.hidden");
  std::ofstream(dir + "/.hidden/x") << "skipped";
  // A truncated copy: header fine, pixel data cut short; caught when pixels are decoded.
  {
    std::ifstream in(dir + "/a.dcm", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(dir + "/cut.dcm", std::ios::binary) << bytes.substr(0, bytes.size() - 40);
  }
  auto header_only = scan_folder(dir);
  ASSERT_TRUE(header_only.ok());
  EXPECT_EQ(header_only->files_seen, 3);
  EXPECT_FALSE(header_only->has_labels);
  ScanOptions decode;
  decode.decode_pixels = true;
  auto scan = scan_folder(dir, decode);
  ASSERT_TRUE(scan.ok());
  EXPECT_EQ(scan->files.size(), 1u);
  ASSERT_EQ(scan->unreadable.size(), 2u);
  EXPECT_EQ(scan->unreadable[0].path, "cut.dcm");
  EXPECT_EQ(scan->unreadable[1].path, "notes.txt");
  EXPECT_NE(scan->unreadable[1].reason.find("not readable as DICOM"), std::string::npos);
  expect_no_canary(to_json(*scan) + describe(*scan), "report");
  EXPECT_FALSE(scan_folder(dir + "/nope").ok());
}

// Every string that the reader, the header scan and the volume builder hand onward, for a file
// full of canaries in every patient field.
TEST(Phi, CanariesNeverReachReturnedStructs) {
  const std::string dir = fedrad::testing::temp_dir("phi");
  WriteSpec spec;
  spec.rows = spec.columns = 4;
  spec.patient_name = "CANARY^PHI^1";
  spec.patient_id = "PHI-0042";
  spec.referring_physician = "CANARY^REFERRER^x";
  spec.has_geometry = true;
  ASSERT_TRUE(write_dicom(dir + "/p.dcm", std::vector<uint16_t>(16, 9), spec).ok());
  {
    std::ifstream in(dir + "/p.dcm", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_NE(bytes.find("CANARY^PHI^1"), std::string::npos) << "the canary is in the file";
  }
  auto px = read_dicom(dir + "/p.dcm");
  ASSERT_TRUE(px.ok());
  for (const std::string& s : {px->photometric, px->transfer_syntax, px->modality}) expect_no_canary(s, "DicomPixels");
  auto h = read_header(dir + "/p.dcm");
  ASSERT_TRUE(h.ok());
  for (const std::string& s : {h->path, h->relative, h->study_uid, h->series_uid, h->modality, h->transfer_syntax,
                               h->photometric})
    expect_no_canary(s, "FileHeader");
  auto vols = load_series(dir);
  ASSERT_TRUE(vols.ok());
  for (const auto& v : *vols) {
    expect_no_canary(v.series_uid, "SeriesVolume");
    for (const auto& p : v.problems) expect_no_canary(p.detail, "problem");
  }
  auto scan = scan_folder(dir);
  ASSERT_TRUE(scan.ok());
  expect_no_canary(to_json(*scan) + describe(*scan), "scan report");
}

}  // namespace
}  // namespace fedrad::imaging
