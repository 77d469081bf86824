// Reading DICOM files into pixels (DCMTK; JPEG 2000 through GDCM, which DCMTK's free codecs lack)
// and writing simple greyscale files (the synthetic demo data goes through the same DICOM path).
//
// What the reader hands onward is pixel data and geometry only: no tag that could identify a
// patient (names, IDs, dates, institution, descriptions) is copied out of the file.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedrad::imaging {

// What to do with colour images (SamplesPerPixel 3 or PALETTE COLOR).
enum class ColourPolicy {
  kReject,  // refuse with kUnsupported naming the photometric interpretation (the default)
  // Convert to one grey value per pixel, ITU-R BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B:
  //   RGB                         -> luma of (R, G, B)
  //   YBR_FULL, YBR_FULL_422      -> the Y sample itself (by definition the BT.601 luma of RGB;
  //                                  422 shares Cb/Cr between two pixels but each has its own Y)
  //   YBR_RCT / YBR_ICT (JPEG 2000) -> decoded to RGB by the codec, then luma
  //   PALETTE COLOR               -> each stored index through the red/green/blue LUTs, then luma
  //                                  (segmented palettes are refused)
  // JPEG-compressed YBR data is converted to RGB by the decoder first. The grey value keeps the
  // unit of the samples (0..255 for 8 bits; palette: 0..65535 for 16-bit LUT entries); modality
  // rescale does not apply to colour (PS3.3 C.7.6.3: colour images have no modality LUT).
  kLuma,
};

// Linear window (DICOM PS3.3 C.11.2.1.2): with centre c and width w (w >= 1), a modality value x
//   x <= c - 0.5 - (w-1)/2  -> 0
//   x >  c - 0.5 + (w-1)/2  -> 1
//   otherwise              -> ((x - (c - 0.5)) / (w - 1) + 0.5)
// i.e. the standard's function with output range [ymin, ymax] = [0, 1].
struct Window {
  double centre = 0.0;
  double width = 1.0;
};

struct ReadOptions {
  bool apply_rescale = true;       // modality rescale: value * slope + intercept
  bool invert_monochrome1 = true;  // MONOCHROME1 stored values are inverted so higher = brighter
  int frame = -1;                  // -1: all frames; otherwise only this 0-based frame
  // ---- added in issue 3; the defaults keep the behaviour above ----
  ColourPolicy colour = ColourPolicy::kReject;
  // VOI: when `window` is set, or `use_file_window` and the file has a window or a VOI LUT, the
  // output is the VOI result in [0, 1] (see Window). Precedence: `window`, then the file's first
  // VOI LUT Sequence item, then its first WindowCenter/WindowWidth pair (VOILUTFunction LINEAR,
  // LINEAR_EXACT and SIGMOID are honoured). VOI acts on modality values (after rescale or the
  // Modality LUT Sequence, whatever apply_rescale says); MONOCHROME1 inversion then acts on the
  // VOI output as y -> 1 - y instead of on the stored values. A file without any window when
  // use_file_window is set is read without VOI (DicomPixels::voi_applied says which happened).
  std::optional<Window> window;
  bool use_file_window = false;
  // Pixel padding (PixelPaddingValue, with PixelPaddingRangeLimit an inclusive range): stored
  // values (after masking to BitsStored and sign extension, before anything else) that are
  // padding are always counted in DicomPixels::padding_pixels. With mask_padding they are also
  // replaced in the output by the lowest output value of the non-padding pixels of the same
  // frame (so padding neither stretches min-max normalisation nor shows as tissue), and
  // DicomPixels::padding_mask marks them (1 = padding).
  bool mask_padding = false;
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
  // ---- added in issue 3 ----
  int samples_per_pixel = 1;       // as stored; pixels always hold one value per pixel
  bool colour_converted = false;   // colour turned into luma (ColourPolicy::kLuma)
  bool modality_lut_applied = false;  // Modality LUT Sequence used instead of slope/intercept
  bool has_modality_lut = false;      // the file has one (applied or not, as apply_rescale says)
  bool voi_applied = false;        // pixels are VOI output in [0, 1]
  std::optional<Window> window;    // the window used, when one was (explicit or from the file)
  bool has_padding_value = false;  // file has PixelPaddingValue
  double padding_value = 0;        // stored value (PixelPaddingValue)
  double padding_range_limit = 0;  // PixelPaddingRangeLimit, or padding_value when absent
  size_t padding_pixels = 0;       // number of stored values that are padding
  std::vector<uint8_t> padding_mask;  // with mask_padding and padding present: 1 = padding
  // Slice geometry when the file has it (ImagePositionPatient / ImageOrientationPatient), for
  // series-to-volume. Not patient-identifying.
  bool has_position = false;
  std::array<double, 3> position{0, 0, 0};
  bool has_orientation = false;
  std::array<double, 6> orientation{1, 0, 0, 0, 1, 0};
  double slice_thickness = 0;      // SliceThickness, 0 when absent
  // frames * rows * columns values, row-major, frame after frame: stored values masked to
  // BitsStored and sign-extended, then rescaled and MONOCHROME1-inverted as the options say.
  // Inversion maps v to (min + max - v) over the stored range, before rescale.
  // With VOI (ReadOptions::window / use_file_window) values are in [0, 1] instead; with
  // ColourPolicy::kLuma colour pixels are their luma (see ColourPolicy); padding as in
  // ReadOptions::mask_padding.
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
  // ---- added in issue 3 (mainly so tests can produce every common syntax) ----
  kExplicitBig,         // 1.2.840.10008.1.2.2 (retired, still exported by old archives)
  kDeflated,            // 1.2.840.10008.1.2.1.99
  kJpegBaseline,        // 1.2.840.10008.1.2.4.50 (lossy, 8 bits only)
  kJpegExtended,        // 1.2.840.10008.1.2.4.51 (lossy, up to 12 bits)
  kJpegLsNearLossless,  // 1.2.840.10008.1.2.4.81 with NEAR = WriteSpec::jpeg_ls_near
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
  // ---- added in issue 3; defaults write what was written before ----
  bool is_signed = false;        // PixelRepresentation 1: pixels hold two's complement bit patterns
  std::string study_uid;         // empty: a fresh UID
  std::string series_uid;        // empty: a fresh UID
  int instance_number = 0;       // 0: not written
  bool has_geometry = false;     // write the three fields below (and SliceThickness)
  std::array<double, 3> position{0, 0, 0};                 // ImagePositionPatient
  std::array<double, 6> orientation{1, 0, 0, 0, 1, 0};     // ImageOrientationPatient
  double slice_thickness = 0;
  double rescale_slope = 1.0;    // written when not 1/0
  double rescale_intercept = 0.0;
  std::optional<Window> window;  // WindowCenter/WindowWidth
  std::optional<int> padding_value;  // PixelPaddingValue (stored-value units)
  // PALETTE COLOR: when non-empty, pixels are indices into this table (R, G, B 16-bit entries,
  // first mapped index 0), written with bits_stored 8 (or 16) and SamplesPerPixel 1.
  std::vector<std::array<uint16_t, 3>> palette;
  // Modality LUT Sequence / VOI LUT Sequence with first mapped value 0 and 16-bit entries.
  std::vector<uint16_t> modality_lut;
  std::vector<uint16_t> voi_lut;
  int jpeg_quality = 90;         // kJpegBaseline / kJpegExtended
  int jpeg_ls_near = 2;          // kJpegLsNearLossless
};

// Writes a single-frame greyscale file. `pixels` holds rows*columns displayed values (higher =
// brighter) in [0, 2^bits_stored); with monochrome1 they are inverted on the way out.
Status write_dicom(const std::string& path, const std::vector<uint16_t>& pixels, const WriteSpec& spec);

}  // namespace fedrad::imaging
