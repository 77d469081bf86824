// write_dicom round trips through every encoding, bit depth and photometric interpretation.
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "imaging/dicom.h"
#include "tests/test_data.h"

namespace fedrad::imaging {
namespace {

const char* encoding_name(Encoding e) {
  switch (e) {
    case Encoding::kExplicitLittle: return "ExplicitLittle";
    case Encoding::kImplicitLittle: return "ImplicitLittle";
    case Encoding::kRle: return "Rle";
    case Encoding::kJpegLossless: return "JpegLossless";
    case Encoding::kJpegLsLossless: return "JpegLs";
  }
  return "?";
}

const char* encoding_uid(Encoding e) {
  switch (e) {
    case Encoding::kExplicitLittle: return "1.2.840.10008.1.2.1";
    case Encoding::kImplicitLittle: return "1.2.840.10008.1.2";
    case Encoding::kRle: return "1.2.840.10008.1.2.5";
    case Encoding::kJpegLossless: return "1.2.840.10008.1.2.4.70";
    case Encoding::kJpegLsLossless: return "1.2.840.10008.1.2.4.80";
  }
  return "";
}

// A gradient with both extremes and some texture, odd width so row padding paths are exercised.
std::vector<uint16_t> test_image(int rows, int cols, int bits) {
  const uint32_t max_value = (1u << bits) - 1;
  std::vector<uint16_t> p(static_cast<size_t>(rows * cols));
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      p[r * cols + c] = static_cast<uint16_t>(((r * 37 + c * c * 11) * 2654435761u >> 7) % (max_value + 1));
    }
  }
  p.front() = 0;
  p.back() = static_cast<uint16_t>(max_value);
  return p;
}

using RoundTripCase = std::tuple<Encoding, int, bool>;  // encoding, bits stored, monochrome1

class RoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(RoundTrip, ReadBackEqualsWritten) {
  const auto [encoding, bits, mono1] = GetParam();
  const std::string dir = fedrad::testing::temp_dir("write");
  const std::string path = dir + "/img.dcm";
  WriteSpec spec;
  spec.rows = 17;
  spec.columns = 23;
  spec.bits_stored = bits;
  spec.monochrome1 = mono1;
  spec.encoding = encoding;
  spec.modality = "DX";
  spec.pixel_spacing = 0.25;
  spec.patient_name = "CANARY^WRITE^7";
  spec.patient_id = "PHI-write-7";
  spec.referring_physician = "CANARY^REFERRER^write";
  const auto pixels = test_image(spec.rows, spec.columns, bits);
  ASSERT_TRUE(write_dicom(path, pixels, spec).ok());
  ASSERT_TRUE(looks_like_dicom(path));

  auto r = read_dicom(path);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->rows, 17);
  EXPECT_EQ(r->columns, 23);
  EXPECT_EQ(r->bits_allocated, bits == 8 ? 8 : 16);
  EXPECT_EQ(r->bits_stored, bits);
  EXPECT_EQ(r->photometric, mono1 ? "MONOCHROME1" : "MONOCHROME2");
  EXPECT_EQ(r->transfer_syntax, encoding_uid(encoding));
  EXPECT_EQ(r->modality, "DX");
  EXPECT_TRUE(r->has_spacing);
  EXPECT_DOUBLE_EQ(r->row_spacing, 0.25);
  ASSERT_EQ(r->pixels.size(), pixels.size());
  for (size_t i = 0; i < pixels.size(); ++i) ASSERT_EQ(r->pixels[i], static_cast<float>(pixels[i])) << i;

  // Stored values really are inverted for MONOCHROME1.
  ReadOptions raw;
  raw.invert_monochrome1 = false;
  auto stored = read_dicom(path, raw);
  ASSERT_TRUE(stored.ok());
  const float max_value = static_cast<float>((1u << bits) - 1);
  EXPECT_EQ(stored->pixels.back(), mono1 ? 0.0f : max_value);

  for (const std::string& text : {r->transfer_syntax, r->modality, r->photometric}) {
    EXPECT_EQ(text.find("CANARY"), std::string::npos);
    EXPECT_EQ(text.find("PHI-"), std::string::npos);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllEncodings, RoundTrip,
    ::testing::Combine(::testing::Values(Encoding::kExplicitLittle, Encoding::kImplicitLittle, Encoding::kRle,
                                         Encoding::kJpegLossless, Encoding::kJpegLsLossless),
                       ::testing::Values(8, 12), ::testing::Bool()),
    [](const auto& info) {
      return std::string(encoding_name(std::get<0>(info.param))) + "_" + std::to_string(std::get<1>(info.param)) +
             "bit_" + (std::get<2>(info.param) ? "MONOCHROME1" : "MONOCHROME2");
    });

TEST(WriteDicom, RejectsBadInputNamingThePath) {
  const std::string dir = fedrad::testing::temp_dir("write-bad");
  WriteSpec spec;
  spec.rows = 2;
  spec.columns = 2;
  auto st = write_dicom(dir + "/short.dcm", {1, 2, 3}, spec);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("short.dcm"), std::string::npos);
  st = write_dicom(dir + "/big.dcm", {1, 2, 3, 256}, spec);  // 256 does not fit 8 bits
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  st = write_dicom(dir + "/no/such/folder/x.dcm", {1, 2, 3, 4}, spec);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("x.dcm"), std::string::npos);
}

}  // namespace
}  // namespace fedrad::imaging
