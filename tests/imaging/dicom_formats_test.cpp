// Transfer syntaxes, bit layouts, pixel padding, colour, modality LUT and VOI (issue 3): on
// pydicom's and WG04's files where they hold the case, on files written here where they do not.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "imaging/dicom.h"
#include "tests/test_data.h"

namespace fedrad::imaging {
namespace {

namespace fs = std::filesystem;

std::string pydicom(const std::string& name) { return fedrad::testing::shared_data() + "/dicom/pydicom/" + name; }
std::string wg04(const std::string& name) { return fedrad::testing::shared_data() + "/dicom/wg04/" + name; }

ReadOptions stored_values() {
  ReadOptions o;
  o.apply_rescale = false;
  o.invert_monochrome1 = false;
  return o;
}

ReadOptions luma() {
  ReadOptions o = stored_values();
  o.colour = ColourPolicy::kLuma;
  return o;
}

std::vector<uint16_t> pattern(int rows, int cols, int bits) {
  const uint32_t max_value = (1u << bits) - 1;
  std::vector<uint16_t> p(static_cast<size_t>(rows * cols));
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)  // smooth, so lossy codecs have something fair to compress
      p[r * cols + c] = static_cast<uint16_t>(max_value * (0.5 + 0.45 * std::sin(r * 0.3) * std::cos(c * 0.2)));
  p.front() = 0;
  p.back() = static_cast<uint16_t>(max_value);
  return p;
}

struct Err {
  double max_abs = 0, rmse = 0;
};
Err error(const std::vector<float>& a, const std::vector<float>& b) {
  Err e;
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(double(a[i]) - double(b[i]));
    e.max_abs = std::max(e.max_abs, d);
    sum += d * d;
  }
  e.rmse = std::sqrt(sum / std::max<size_t>(1, a.size()));
  return e;
}

// ---- transfer syntaxes written here: every common one, signed and unsigned, 8..16 bits ----

struct SyntaxCase {
  Encoding encoding;
  const char* uid;
  int bits;
  bool is_signed;
  double max_abs;  // 0: lossless
  double max_rmse;
};

class WrittenSyntax : public ::testing::TestWithParam<SyntaxCase> {};

TEST_P(WrittenSyntax, ReadsBackWithinCodecBound) {
  const SyntaxCase& c = GetParam();
  const std::string path = fedrad::testing::temp_dir("syntax") + "/x.dcm";
  WriteSpec spec;
  spec.rows = 32;
  spec.columns = 40;
  spec.bits_stored = c.bits;
  spec.is_signed = c.is_signed;
  spec.encoding = c.encoding;
  spec.jpeg_ls_near = 3;
  const auto px = pattern(spec.rows, spec.columns, c.bits);
  ASSERT_TRUE(write_dicom(path, px, spec).ok());
  auto r = read_dicom(path, stored_values());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->transfer_syntax, c.uid);
  EXPECT_EQ(r->is_signed, c.is_signed);
  EXPECT_EQ(r->bits_stored, c.bits);
  std::vector<float> expected(px.size());
  for (size_t i = 0; i < px.size(); ++i) {
    int64_t v = px[i];
    if (c.is_signed && v >= (int64_t{1} << (c.bits - 1))) v -= int64_t{1} << c.bits;  // two's complement
    expected[i] = static_cast<float>(v);
  }
  const Err e = error(r->pixels, expected);
  EXPECT_LE(e.max_abs, c.max_abs);
  EXPECT_LE(e.rmse, c.max_rmse);
  if (c.max_abs == 0) EXPECT_EQ(r->pixels, expected);
}

INSTANTIATE_TEST_SUITE_P(
    Syntaxes, WrittenSyntax,
    ::testing::Values(
        SyntaxCase{Encoding::kExplicitBig, "1.2.840.10008.1.2.2", 8, false, 0, 0},
        SyntaxCase{Encoding::kExplicitBig, "1.2.840.10008.1.2.2", 12, true, 0, 0},
        SyntaxCase{Encoding::kExplicitBig, "1.2.840.10008.1.2.2", 16, true, 0, 0},
        SyntaxCase{Encoding::kDeflated, "1.2.840.10008.1.2.1.99", 8, true, 0, 0},
        SyntaxCase{Encoding::kDeflated, "1.2.840.10008.1.2.1.99", 16, false, 0, 0},
        SyntaxCase{Encoding::kExplicitLittle, "1.2.840.10008.1.2.1", 8, true, 0, 0},
        SyntaxCase{Encoding::kExplicitLittle, "1.2.840.10008.1.2.1", 16, true, 0, 0},
        SyntaxCase{Encoding::kImplicitLittle, "1.2.840.10008.1.2", 10, true, 0, 0},
        SyntaxCase{Encoding::kRle, "1.2.840.10008.1.2.5", 16, true, 0, 0},
        SyntaxCase{Encoding::kJpegLossless, "1.2.840.10008.1.2.4.70", 12, false, 0, 0},
        SyntaxCase{Encoding::kJpegLsLossless, "1.2.840.10008.1.2.4.80", 16, false, 0, 0},
        // Lossy: JPEG gives no per-pixel bound; quality 90 keeps RMSE around 1% of the range.
        SyntaxCase{Encoding::kJpegBaseline, "1.2.840.10008.1.2.4.50", 8, false, 40, 2.5},
        SyntaxCase{Encoding::kJpegExtended, "1.2.840.10008.1.2.4.51", 12, false, 640, 40},
        // JPEG-LS near-lossless promises |error| <= NEAR (3 here).
        SyntaxCase{Encoding::kJpegLsNearLossless, "1.2.840.10008.1.2.4.81", 8, false, 3, 3},
        SyntaxCase{Encoding::kJpegLsNearLossless, "1.2.840.10008.1.2.4.81", 12, false, 3, 3}),
    [](const auto& info) {
      return std::to_string(info.index) + "_" + std::to_string(info.param.bits) +
             (info.param.is_signed ? "s" : "u");
    });

// ---- the same syntaxes in files from elsewhere ----

TEST(PydicomSyntaxes, DeflatedAndJpegExtendedDecode) {
  auto dfl = read_dicom(pydicom("image_dfl.dcm"), stored_values());
  ASSERT_TRUE(dfl.ok()) << dfl.status().to_string();
  EXPECT_EQ(dfl->transfer_syntax, "1.2.840.10008.1.2.1.99");
  EXPECT_EQ(dfl->bits_allocated, 8);
  float lo = 1e9f, hi = -1e9f;
  for (float v : dfl->pixels) lo = std::min(lo, v), hi = std::max(hi, v);
  EXPECT_GT(hi - lo, 100) << "an image, not a constant";

  // JPGExtended is NM1_JPLY with a fixed header: 12-bit lossy, close to the WG04 reference.
  auto ext = read_dicom(pydicom("JPGExtended.dcm"), stored_values());
  auto ref = read_dicom(wg04("REF/NM1_UNC"), stored_values());
  ASSERT_TRUE(ext.ok()) << ext.status().to_string();
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(ext->transfer_syntax, "1.2.840.10008.1.2.4.51");
  ASSERT_EQ(ext->pixels.size(), ref->pixels.size());
  EXPECT_LE(error(ext->pixels, ref->pixels).rmse, 20.0);
}

TEST(PydicomSyntaxes, SignedSixteenBitAgreesAcrossBigAndLittleEndian) {
  auto le = read_dicom(pydicom("MR_small.dcm"), stored_values());
  auto be = read_dicom(pydicom("MR_small_bigendian.dcm"), stored_values());
  ASSERT_TRUE(le.ok() && be.ok());
  EXPECT_TRUE(le->is_signed);
  EXPECT_EQ(be->transfer_syntax, "1.2.840.10008.1.2.2");
  EXPECT_EQ(le->pixels, be->pixels);
}

// BitsStored < BitsAllocated: bits above HighBit are not pixel data (overlays, garbage) and must be
// masked off; a signed 12-bit value is sign-extended from bit 11.
TEST(BitLayout, HighBitsAreMaskedAndSignExtendedFromBitsStored) {
  const std::string path = fedrad::testing::temp_dir("bits") + "/x.dcm";
  WriteSpec spec;
  spec.rows = 2;
  spec.columns = 2;
  spec.bits_stored = 16;
  // Low 12 bits: 0x001 (1), 0x7ff (2047), 0x800 (-2048 signed), 0xfff (-1); garbage above.
  ASSERT_TRUE(write_dicom(path, {0xa001, 0x57ff, 0xf800, 0x1fff}, spec).ok());
  // Patch BitsStored 16 -> 12 and HighBit 15 -> 11 in place (explicit VR little endian).
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  auto patch = [&](uint16_t element, uint16_t from, uint16_t to) {
    const char tag[8] = {0x28, 0x00, static_cast<char>(element & 0xff), static_cast<char>(element >> 8),
                         'U', 'S', 0x02, 0x00};
    const auto at = bytes.find(std::string(tag, 8));
    ASSERT_NE(at, std::string::npos);
    ASSERT_EQ(static_cast<uint8_t>(bytes[at + 8]), from);
    bytes[at + 8] = static_cast<char>(to);
  };
  patch(0x0101, 16, 12);
  patch(0x0102, 15, 11);
  auto patch_signed = bytes;
  std::ofstream(path, std::ios::binary) << bytes;
  auto u = read_dicom(path, stored_values());
  ASSERT_TRUE(u.ok()) << u.status().to_string();
  EXPECT_EQ(u->bits_stored, 12);
  EXPECT_EQ(u->pixels, (std::vector<float>{1, 2047, 2048, 4095}));
  // PixelRepresentation 0 -> 1.
  const char rep[8] = {0x28, 0x00, 0x03, 0x01, 'U', 'S', 0x02, 0x00};
  const auto at = bytes.find(std::string(rep, 8));
  ASSERT_NE(at, std::string::npos);
  bytes[at + 8] = 1;
  std::ofstream(path, std::ios::binary) << bytes;
  auto s = read_dicom(path, stored_values());
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(s->pixels, (std::vector<float>{1, 2047, -2048, -1}));
}

// ---- pixel padding ----

TEST(Padding, CtSmallPaddingIsCountedAndMaskedOnRequest) {
  // CT_small: signed 16-bit, PixelPaddingValue -2000 (the air outside the scan circle).
  auto plain = read_dicom(pydicom("CT_small.dcm"));
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->has_padding_value);
  EXPECT_EQ(plain->padding_value, -2000);
  EXPECT_TRUE(plain->padding_mask.empty()) << "mask only when asked";
  auto raw = read_dicom(pydicom("CT_small.dcm"), stored_values());
  size_t expected = 0;
  for (float v : raw->pixels) expected += v == -2000.0f;
  EXPECT_EQ(plain->padding_pixels, expected);

  // Written file: value 0 is padding, others 100..; masked pixels take the lowest real value.
  const std::string path = fedrad::testing::temp_dir("pad") + "/x.dcm";
  WriteSpec spec;
  spec.rows = 2;
  spec.columns = 3;
  spec.bits_stored = 12;
  spec.padding_value = 0;
  spec.rescale_intercept = -1000;
  ASSERT_TRUE(write_dicom(path, {0, 100, 300, 0, 200, 0}, spec).ok());
  ReadOptions o;
  o.mask_padding = true;
  auto m = read_dicom(path, o);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(m->padding_pixels, 3u);
  EXPECT_EQ(m->padding_mask, (std::vector<uint8_t>{1, 0, 0, 1, 0, 1}));
  EXPECT_EQ(m->pixels, (std::vector<float>{-900, -900, -700, -900, -800, -900}));
}

// ---- colour ----

// pydicom's SC_rgb*: 100x100, ten horizontal bands, known colours at column 50.
struct Band {
  int row;
  int r, g, b;
};
const Band kBands[] = {{5, 255, 0, 0},      {15, 255, 128, 128}, {25, 0, 255, 0},    {35, 128, 255, 128},
                       {45, 0, 0, 255},     {55, 128, 128, 255}, {65, 0, 0, 0},      {75, 64, 64, 64},
                       {85, 192, 192, 192}, {95, 255, 255, 255}};

double bt601(double r, double g, double b) { return 0.299 * r + 0.587 * g + 0.114 * b; }

TEST(Colour, RejectedByDefaultWithReason) {
  for (const char* name : {"SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm"}) {
    auto r = read_dicom(pydicom(name));
    ASSERT_FALSE(r.ok()) << name;
    EXPECT_EQ(r.status().code(), StatusCode::kUnsupported);
    EXPECT_NE(r.status().message().find("photometric"), std::string::npos);
    EXPECT_NE(r.status().message().find("ReadOptions::colour"), std::string::npos) << r.status().message();
  }
}

TEST(Colour, RgbLosslessGivesExactBt601Luma) {
  for (const char* name : {"SC_rgb_rle.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_gdcm.dcm"}) {
    SCOPED_TRACE(name);
    auto r = read_dicom(pydicom(name), luma());
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_TRUE(r->colour_converted);
    ASSERT_EQ(r->rows, 100);
    ASSERT_EQ(r->columns, 100);
    for (const Band& b : kBands) EXPECT_NEAR(r->pixels[b.row * 100 + 50], bt601(b.r, b.g, b.b), 1e-3) << b.row;
    if (r->frames == 2) {  // second frame: the inverse colours
      for (const Band& b : kBands)
        EXPECT_NEAR(r->pixels[10000 + b.row * 100 + 50], bt601(255 - b.r, 255 - b.g, 255 - b.b), 1e-3);
    }
  }
  auto r16 = read_dicom(pydicom("SC_rgb_rle_16bit.dcm"), luma());
  ASSERT_TRUE(r16.ok()) << r16.status().to_string();
  for (const Band& b : kBands)
    EXPECT_NEAR(r16->pixels[b.row * 100 + 50], bt601(b.r * 257, b.g * 257, b.b * 257), 1e-2);
}

TEST(Colour, YbrAndLossyJpegCloseToRgbLuma) {
  auto ref = read_dicom(pydicom("SC_rgb_rle.dcm"), luma());
  ASSERT_TRUE(ref.ok());
  // YBR_FULL_422 uncompressed (Y sample used directly), YBR_FULL / 422 JPEG (DCMTK converts to
  // RGB), RGB JPEG baseline, JPEG 2000 with the RCT (GDCM).
  for (const char* name : {"SC_ybr_full_422_uncompressed.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm",
                           "SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_gdcm_KY.dcm"}) {
    SCOPED_TRACE(name);
    auto r = read_dicom(pydicom(name), luma());
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    ASSERT_EQ(r->pixels.size(), ref->pixels.size());
    for (const Band& b : kBands) EXPECT_NEAR(r->pixels[b.row * 100 + 50], ref->pixels[b.row * 100 + 50], 4.0) << b.row;
    EXPECT_LE(error(r->pixels, ref->pixels).rmse, 4.0);
  }
}

TEST(Colour, Wg04ColourLosslessEqualsReferenceLuma) {
  int compared = 0;
  for (const char* name : {"US1", "VL1", "VL2", "VL3", "VL6"}) {
    auto ref = read_dicom(wg04(std::string("REF/") + name + "_UNC"), luma());
    ASSERT_TRUE(ref.ok()) << ref.status().to_string();
    for (const std::string folder : {"RLE", "J2KR"}) {
      const std::string path = wg04(folder + "/" + name + "_" + folder);
      if (!fs::exists(path)) continue;
      auto got = read_dicom(path, luma());
      ASSERT_TRUE(got.ok()) << got.status().to_string();
      EXPECT_EQ(got->pixels, ref->pixels) << path;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 10);
}

TEST(Colour, PaletteGoesThroughItsLut) {
  const std::string path = fedrad::testing::temp_dir("pal") + "/x.dcm";
  WriteSpec spec;
  spec.rows = 1;
  spec.columns = 4;
  spec.palette = {{65535, 0, 0}, {0, 65535, 0}, {0, 0, 65535}, {1000, 2000, 3000}};
  { auto st = write_dicom(path, {0, 1, 2, 3}, spec); ASSERT_TRUE(st.ok()) << st.to_string(); }
  auto refused = read_dicom(path);
  EXPECT_EQ(refused.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(refused.status().message().find("PALETTE COLOR"), std::string::npos);
  auto r = read_dicom(path, luma());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->photometric, "PALETTE COLOR");
  ASSERT_EQ(r->pixels.size(), 4u);
  EXPECT_NEAR(r->pixels[0], 0.299 * 65535, 0.01);
  EXPECT_NEAR(r->pixels[1], 0.587 * 65535, 0.01);
  EXPECT_NEAR(r->pixels[2], 0.114 * 65535, 0.01);
  EXPECT_NEAR(r->pixels[3], bt601(1000, 2000, 3000), 0.01);
}

// ---- modality LUT and VOI ----

// PS3.3 C.11.2.1.2 with output [0, 1].
double linear_window(double x, double c, double w) {
  if (x <= c - 0.5 - (w - 1) / 2) return 0;
  if (x > c - 0.5 + (w - 1) / 2) return 1;
  return (x - (c - 0.5)) / (w - 1) + 0.5;
}

TEST(Voi, FileWindowAndExplicitWindowFollowTheLinearFunction) {
  // MR_small: WindowCenter 600, WindowWidth 1600, no rescale.
  auto raw = read_dicom(pydicom("MR_small.dcm"), stored_values());
  ReadOptions file_window;
  file_window.use_file_window = true;
  auto w = read_dicom(pydicom("MR_small.dcm"), file_window);
  ASSERT_TRUE(raw.ok() && w.ok());
  EXPECT_TRUE(w->voi_applied);
  ASSERT_TRUE(w->window.has_value());
  EXPECT_EQ(w->window->centre, 600);
  EXPECT_EQ(w->window->width, 1600);
  for (size_t i = 0; i < raw->pixels.size(); ++i)
    ASSERT_NEAR(w->pixels[i], linear_window(raw->pixels[i], 600, 1600), 1e-6) << i;

  ReadOptions narrow;
  narrow.window = Window{100, 51};
  auto n = read_dicom(pydicom("MR_small.dcm"), narrow);
  ASSERT_TRUE(n.ok());
  for (size_t i = 0; i < raw->pixels.size(); ++i)
    ASSERT_NEAR(n->pixels[i], linear_window(raw->pixels[i], 100, 51), 1e-6);
  // Boundary values by hand: c=100, w=51 -> 0 at x <= 74.5, 1 above 124.5.
  EXPECT_EQ(linear_window(74, 100, 51), 0.0);
  EXPECT_EQ(linear_window(125, 100, 51), 1.0);
  EXPECT_NEAR(linear_window(99.5, 100, 51), 0.5, 1e-12);

  // No window in the file: read without VOI, and said so.
  auto none = read_dicom(pydicom("CT_small.dcm"), file_window);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->voi_applied);
  // A width below 1 is refused.
  ReadOptions bad;
  bad.window = Window{0, 0.5};
  EXPECT_EQ(read_dicom(pydicom("MR_small.dcm"), bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(Voi, WindowActsOnModalityValuesAndMonochrome1InvertsItsOutput) {
  const std::string dir = fedrad::testing::temp_dir("voi");
  WriteSpec spec;
  spec.rows = 1;
  spec.columns = 4;
  spec.bits_stored = 12;
  spec.rescale_slope = 2;
  spec.rescale_intercept = -1024;
  spec.window = Window{40, 401};  // a CT soft-tissue window in HU
  const std::vector<uint16_t> px = {0, 400, 532, 4095};  // HU: -1024, -224, 40, 7166
  ASSERT_TRUE(write_dicom(dir + "/m2.dcm", px, spec).ok());
  ReadOptions o;
  o.use_file_window = true;
  auto r = read_dicom(dir + "/m2.dcm", o);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_TRUE(r->voi_applied);
  EXPECT_EQ(r->pixels, (std::vector<float>{0.0f, 0.0f, static_cast<float>(linear_window(40, 40, 401)), 1.0f}));

  spec.monochrome1 = true;  // displayed values as above, stored inverted
  ASSERT_TRUE(write_dicom(dir + "/m1.dcm", px, spec).ok());
  auto inv = read_dicom(dir + "/m1.dcm", o);
  ASSERT_TRUE(inv.ok());
  // Stored 4095-v; the window acts on its modality value, then y -> 1 - y.
  for (size_t i = 0; i < px.size(); ++i) {
    const double hu = (4095 - px[i]) * 2.0 - 1024;
    EXPECT_NEAR(inv->pixels[i], 1.0 - linear_window(hu, 40, 401), 1e-6);
  }
}

TEST(Voi, ModalityAndVoiLutSequences) {
  const std::string path = fedrad::testing::temp_dir("lut") + "/x.dcm";
  WriteSpec spec;
  spec.rows = 1;
  spec.columns = 4;
  spec.bits_stored = 8;
  spec.rescale_slope = 5;  // ignored: the Modality LUT Sequence takes precedence
  spec.modality_lut = {10, 20, 30};  // stored 0,1,2 -> 10,20,30; beyond the table -> 30
  spec.voi_lut.assign(41, 0);
  for (int i = 0; i < 41; ++i) spec.voi_lut[i] = static_cast<uint16_t>(i * 1000);  // 0..40000
  { auto st = write_dicom(path, {0, 1, 2, 200}, spec); ASSERT_TRUE(st.ok()) << st.to_string(); }
  auto m = read_dicom(path);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_TRUE(m->modality_lut_applied);
  EXPECT_EQ(m->pixels, (std::vector<float>{10, 20, 30, 30}));
  ReadOptions o;
  o.use_file_window = true;
  auto v = read_dicom(path, o);
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->voi_applied);
  EXPECT_FALSE(v->window.has_value()) << "a LUT, not a window";
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(v->pixels[i], std::min(40, 10 + 10 * std::min(i, 2)) * 1000 / 65535.0, 1e-6);
}

}  // namespace
}  // namespace fedrad::imaging
