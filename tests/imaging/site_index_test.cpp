// index_site on a hand-built folder with every kind of problem, and on a real site.
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "imaging/site_index.h"
#include "tests/test_data.h"

namespace fedrad::imaging {
namespace {

namespace fs = std::filesystem;

void touch(const fs::path& p, const std::string& content = "x") {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << content;
}

bool mentions(const std::vector<FileProblem>& problems, const std::string& text) {
  for (const auto& p : problems) {
    if (p.path.find(text) != std::string::npos || p.reason.find(text) != std::string::npos) return true;
  }
  return false;
}

TEST(SiteIndex, ReportsEveryProblem) {
  const fs::path root = fedrad::testing::temp_dir("site-index");
  touch(root / "P1/a.dcm");
  touch(root / "P1/deep/b");          // nested, no extension
  touch(root / "P2/c.dcm");
  touch(root / "P3/d.dcm");
  touch(root / "stray/unlisted.dcm");  // not in labels.csv
  touch(root / ".hidden");             // hidden: ignored
  touch(root / "labels.csv",
        "file,label\r\n"
        "P1/a.dcm,NORMAL\r\n"
        " \"P1/deep/b\" , pneumonia \r\n"
        "./P2/c.dcm,1\r\n"
        "P3/d.dcm,0\r\n"
        "P9/gone.dcm,PNEUMONIA\r\n"
        "P4/x.dcm,MAYBE\r\n"
        "just-one-field\r\n"
        "\r\n");
  auto index = index_site(root.string());
  ASSERT_TRUE(index.ok()) << index.status().to_string();
  ASSERT_EQ(index->files.size(), 4u);
  EXPECT_EQ(index->files[0].relative, "P1/a.dcm");
  EXPECT_EQ(index->files[0].label, 0);
  EXPECT_EQ(index->files[1].relative, "P1/deep/b");
  EXPECT_EQ(index->files[1].label, 1);
  EXPECT_EQ(index->files[2].label, 1);
  EXPECT_EQ(index->files[3].label, 0);
  EXPECT_TRUE(fs::exists(index->files[1].path));
  EXPECT_EQ(index->label_counts.at("NORMAL"), 2);
  EXPECT_EQ(index->label_counts.at("PNEUMONIA"), 2);

  ASSERT_EQ(index->missing.size(), 1u);
  EXPECT_TRUE(mentions(index->missing, "P9/gone.dcm"));
  ASSERT_EQ(index->bad_rows.size(), 2u);
  EXPECT_TRUE(mentions(index->bad_rows, "line 7"));
  EXPECT_TRUE(mentions(index->bad_rows, "MAYBE"));
  EXPECT_TRUE(mentions(index->bad_rows, "line 8"));
  ASSERT_EQ(index->unlabelled.size(), 1u);
  EXPECT_TRUE(mentions(index->unlabelled, "stray/unlisted.dcm"));

  const std::string text = describe(*index);
  EXPECT_NE(text.find("NORMAL 2"), std::string::npos) << text;
  EXPECT_NE(text.find("gone.dcm"), std::string::npos) << text;
  EXPECT_NE(text.find("unlisted.dcm"), std::string::npos) << text;
  EXPECT_NE(text.find("MAYBE"), std::string::npos) << text;
}

TEST(SiteIndex, FailsOnlyWithoutFolderOrCsv) {
  EXPECT_EQ(index_site("/nonexistent/site").status().code(), StatusCode::kNotFound);
  const fs::path root = fedrad::testing::temp_dir("site-index-empty");
  touch(root / "a.dcm");
  auto r = index_site(root.string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("labels.csv"), std::string::npos);
}

TEST(SiteIndex, RealSiteIsClean) {
  auto index = index_site(fedrad::testing::pneumonia_site("site-a", "train"));
  ASSERT_TRUE(index.ok()) << index.status().to_string();
  EXPECT_EQ(index->files.size(), 1805u);
  EXPECT_EQ(index->label_counts.at("NORMAL") + index->label_counts.at("PNEUMONIA"), 1805);
  // 78% pneumonia per the data README.
  EXPECT_NEAR(index->label_counts.at("PNEUMONIA") / 1805.0, 0.78, 0.02);
  EXPECT_TRUE(index->missing.empty());
  EXPECT_TRUE(index->bad_rows.empty());
  EXPECT_TRUE(index->unlabelled.empty()) << describe(*index);
}

}  // namespace
}  // namespace fedrad::imaging
