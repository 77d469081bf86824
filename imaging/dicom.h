// Reading DICOM files into pixels (DCMTK; JPEG 2000 through GDCM, which DCMTK's free codecs lack)
// and writing simple greyscale files (the synthetic demo data goes through the same DICOM path).
//
// What the reader hands onward is pixel data and geometry only: no tag that could identify a
// patient (names, IDs, dates, institution, descriptions) is copied out of the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedrad::imaging {

struct ReadOptions {
  bool apply_rescale = true;       // modality rescale: value * slope + intercept
  bool invert_monochrome1 = true;  // MONOCHROME1 stored values are inverted so higher = brighter
  int frame = -1;                  // -1: all frames; otherwise only this 0-based frame
};

// Pixels plus the few geometry and encoding tags that training needs.
struct DicomPixels {
  int rows = 0;
  int columns = 0;
  int frames = 1;                  // frames held in `pixels`
  double row_spacing = 1.0;        // mm between rows (PixelSpacing, else ImagerPixelSpacing, else 1)
  double column_spacing = 1.0;
  bool has_spacing = false;
  std::string photometric;         // as stored: MONOCHROME1, MONOCHROME2, ...
  std::string transfer_syntax;     // UID of the file's transfer syntax as stored
  std::string modality;            // CR, DX, CT, MR, ...
  int bits_allocated = 0;
  int bits_stored = 0;
  bool is_signed = false;
  double rescale_slope = 1.0;
  double rescale_intercept = 0.0;
  // frames * rows * columns values, row-major, frame after frame: stored values masked to
  // BitsStored and sign-extended, then rescaled and MONOCHROME1-inverted as the options say.
  // Inversion maps v to (min + max - v) over the stored range, before rescale.
  std::vector<float> pixels;
};

// Reads one file. A file that is not DICOM, truncated, lacks pixel data, or uses an encoding we
// cannot decode returns an error naming the file and the reason; it never crashes or hangs.
StatusOr<DicomPixels> read_dicom(const std::string& path, const ReadOptions& options = {});

// Cheap check used when scanning folders: does the file start like DICOM (preamble + "DICM")?
bool looks_like_dicom(const std::string& path);

enum class Encoding {
  kExplicitLittle,  // 1.2.840.10008.1.2.1
  kImplicitLittle,  // 1.2.840.10008.1.2
  kRle,             // 1.2.840.10008.1.2.5
  kJpegLossless,    // 1.2.840.10008.1.2.4.70 (process 14, selection value 1)
  kJpegLsLossless,  // 1.2.840.10008.1.2.4.80
};

// What to write. Patient fields exist so tests and the demo can plant PHI canaries.
struct WriteSpec {
  int rows = 0;
  int columns = 0;
  int bits_stored = 8;          // 8 (BitsAllocated 8) or 9..16 (BitsAllocated 16)
  bool monochrome1 = false;     // store inverted, tagged MONOCHROME1
  std::string modality = "CR";
  double pixel_spacing = 0.0;   // mm; 0 = not written
  Encoding encoding = Encoding::kExplicitLittle;
  std::string patient_name;     // e.g. "CANARY^SITE^1"
  std::string patient_id;
  std::string referring_physician;
};

// Writes a single-frame greyscale file. `pixels` holds rows*columns displayed values (higher =
// brighter) in [0, 2^bits_stored); with monochrome1 they are inverted on the way out.
Status write_dicom(const std::string& path, const std::vector<uint16_t>& pixels, const WriteSpec& spec);

}  // namespace fedrad::imaging
