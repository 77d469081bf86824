// A JPEG 2000 codestream whose SIZ segment disagrees with the DICOM header is refused before
// OpenJPEG sees it (the fuzzer found one declaring a huge image: 6.7 s and 1.5 GB to fail).
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <vector>

#include "imaging/dicom.h"
#include "tests/test_data.h"

namespace fedrad::imaging {
namespace {

TEST(Jpeg2000Guard, CodestreamDeclaringAnotherSizeIsRefusedQuickly) {
  const std::string src = testing::shared_data() + "/dicom/wg04/J2KR/CT1_J2KR";
  std::ifstream in(src, std::ios::binary);
  ASSERT_TRUE(in) << src;
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(read_dicom(src).ok());
  // Find SOC + SIZ and set Xsiz (big-endian u32 at SIZ + 8) to 0x7fff0000.
  size_t at = 0;
  for (size_t i = 0; i + 4 < bytes.size(); ++i)
    if ((uint8_t)bytes[i] == 0xFF && (uint8_t)bytes[i + 1] == 0x4F && (uint8_t)bytes[i + 2] == 0xFF &&
        (uint8_t)bytes[i + 3] == 0x51) {
      at = i;
      break;
    }
  ASSERT_GT(at, 0u);
  const unsigned char huge[4] = {0x7f, 0xff, 0x00, 0x00};
  for (int k = 0; k < 4; ++k) bytes[at + 8 + k] = static_cast<char>(huge[k]);
  const std::string dir = testing::temp_dir("j2k-guard");
  std::ofstream(dir + "/bad.dcm", std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));

  const auto t0 = std::chrono::steady_clock::now();
  auto r = read_dicom(dir + "/bad.dcm");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(r.status().message().find("bad.dcm"), std::string::npos);
  EXPECT_NE(r.status().message().find("JPEG 2000 codestream declares"), std::string::npos) << r.status().message();
  RecordProperty("seconds", std::to_string(seconds));
}

}  // namespace
}  // namespace fedrad::imaging
