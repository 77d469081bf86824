// The synthetic chest X-rays: deterministic, pneumonia visible in the lungs, sites readable.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "imaging/dicom.h"
#include "imaging/site_index.h"
#include "imaging/synthetic.h"
#include "tests/test_data.h"

namespace fedrad::imaging {
namespace {

// Mean over two fixed boxes well inside where the lung fields are drawn.
double lung_mean(const std::vector<uint16_t>& img, int size) {
  double sum = 0;
  int n = 0;
  for (int r = size * 30 / 100; r < size * 65 / 100; ++r) {
    for (int c = 0; c < size; ++c) {
      const double x = (c + 0.5) / size;
      if ((x > 0.25 && x < 0.40) || (x > 0.60 && x < 0.75)) {
        sum += img[r * size + c];
        ++n;
      }
    }
  }
  return sum / n;
}

TEST(Synthetic, DeterministicPerSeed) {
  const auto a = synthetic_chest_xray(64, true, 12, 1.0, 0.05, 42);
  const auto b = synthetic_chest_xray(64, true, 12, 1.0, 0.05, 42);
  const auto c = synthetic_chest_xray(64, true, 12, 1.0, 0.05, 43);
  ASSERT_EQ(a.size(), 64u * 64u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (uint16_t v : a) ASSERT_LT(v, 4096);
}

TEST(Synthetic, LooksLikeAChestFilm) {
  const int size = 64;
  const auto img = synthetic_chest_xray(size, false, 8, 1.0, 0.02, 7);
  const double corner = img[0] + img[size - 1];
  const double mediastinum = img[(size / 2) * size + size / 2];
  EXPECT_LT(corner / 2, 40.0) << "dark background";
  EXPECT_GT(mediastinum, lung_mean(img, size) + 30) << "bright mediastinum between darker lungs";
}

TEST(Synthetic, PneumoniaBrightensLungs) {
  const int n = 100;
  std::vector<double> normals, pneumonias;
  for (int i = 0; i < n; ++i) {
    normals.push_back(lung_mean(synthetic_chest_xray(64, false, 8, 1.0, 0.05, 1000 + i), 64));
    pneumonias.push_back(lung_mean(synthetic_chest_xray(64, true, 8, 1.0, 0.05, 5000 + i), 64));
  }
  double mean_normal = 0, mean_pneumonia = 0, wins = 0;
  for (int i = 0; i < n; ++i) {
    mean_normal += normals[i] / n;
    mean_pneumonia += pneumonias[i] / n;
    for (int j = 0; j < n; ++j) wins += pneumonias[i] > normals[j] ? 1.0 : pneumonias[i] == normals[j] ? 0.5 : 0.0;
  }
  EXPECT_GT(mean_pneumonia, mean_normal + 3.0);
  // AUC of the crude lung-mean feature: clearly informative, but far from a perfect separator
  // (exposure, anatomy and vessel shadows vary), so a CNN has to look at local opacities.
  const double auc = wins / (n * n);
  EXPECT_GT(auc, 0.6);
  EXPECT_LT(auc, 0.97);
  RecordProperty("lung_mean_auc", std::to_string(auc));
}

TEST(Synthetic, WrittenSiteIsReadableAndLabelled) {
  const std::string root = fedrad::testing::temp_dir("synthetic");
  SyntheticSiteSpec spec = default_demo_sites()[2];  // RLE, MONOCHROME1, no extension
  spec.num_train = 20;
  spec.num_val = 8;
  ASSERT_TRUE(write_synthetic_site(root, spec, 9).ok());
  for (const char* split : {"train", "val"}) {
    auto index = index_site(root + "/" + spec.name + "/" + split);
    ASSERT_TRUE(index.ok()) << index.status().to_string();
    const int expected = std::string(split) == "train" ? 20 : 8;
    ASSERT_EQ(static_cast<int>(index->files.size()), expected);
    EXPECT_EQ(index->label_counts.at("PNEUMONIA"), static_cast<int>(std::lround(expected * spec.pneumonia_share)));
    EXPECT_TRUE(index->missing.empty() && index->bad_rows.empty() && index->unlabelled.empty()) << describe(*index);
    for (const auto& f : index->files) {
      EXPECT_EQ(f.relative.find(".dcm"), std::string::npos);
      auto r = read_dicom(f.path);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      EXPECT_EQ(r->rows, spec.size);
      EXPECT_EQ(r->photometric, "MONOCHROME1");
      EXPECT_EQ(r->transfer_syntax, "1.2.840.10008.1.2.5");
    }
  }
  // Same seed, same files' pixels.
  const std::string again = fedrad::testing::temp_dir("synthetic-again");
  ASSERT_TRUE(write_synthetic_site(again, spec, 9).ok());
  auto a = read_dicom(root + "/site-3/val/P00020/IM00020");
  auto b = read_dicom(again + "/site-3/val/P00020/IM00020");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->pixels, b->pixels);
}

TEST(Synthetic, DemoSitesDiffer) {
  const auto sites = default_demo_sites();
  ASSERT_EQ(sites.size(), 3u);
  EXPECT_NE(sites[0].encoding, sites[1].encoding);
  EXPECT_NE(sites[1].encoding, sites[2].encoding);
  EXPECT_TRUE(sites[2].monochrome1);
  EXPECT_FALSE(sites[2].with_extension);
  EXPECT_EQ(sites[1].bits_stored, 12);
}

}  // namespace
}  // namespace fedrad::imaging
