#include "imaging/dicom.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <memory>
#include <new>

#include <dcmtk/config/osconfig.h>  // must precede every other DCMTK header
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcpixseq.h>
#include <dcmtk/dcmdata/dcpxitem.h>
#include <dcmtk/dcmdata/dcvrobow.h>
#include <dcmtk/dcmdata/dcvrus.h>
#include <dcmtk/dcmdata/dcvrss.h>
#include <dcmtk/dcmdata/dcsequen.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dcrleerg.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpeg/djencode.h>
#include <dcmtk/dcmjpeg/djrplol.h>
#include <dcmtk/dcmjpeg/djrploss.h>
#include <dcmtk/dcmjpls/djdecode.h>
#include <dcmtk/dcmjpls/djencode.h>
#include <dcmtk/dcmjpls/djrparam.h>

#include <gdcmImage.h>
#include <gdcmImageReader.h>
#include <gdcmPixelFormat.h>
#include <gdcmTrace.h>

namespace fedrad::imaging {
namespace {

constexpr const char* kJpeg2000Lossless = "1.2.840.10008.1.2.4.90";
constexpr const char* kJpeg2000 = "1.2.840.10008.1.2.4.91";

// DCMTK's codec list is global; registering once (C++11 guarantees the function-local static is
// initialised exactly once, even when sites read in parallel) avoids duplicate registrations.
void ensure_codecs_registered() {
  static const bool registered = [] {
    DJDecoderRegistration::registerCodecs();
    DJLSDecoderRegistration::registerCodecs();
    DcmRLEDecoderRegistration::registerCodecs();
    DJEncoderRegistration::registerCodecs();
    DJLSEncoderRegistration::registerCodecs();
    DcmRLEEncoderRegistration::registerCodecs();
    // GDCM reports problems with broken files on stderr; we return them as Status instead.
    gdcm::Trace::SetDebug(false);
    gdcm::Trace::SetWarning(false);
    gdcm::Trace::SetError(false);
    return true;
  }();
  (void)registered;
}

// The attributes that decide how raw pixel bytes turn into values.
struct PixelLayout {
  int rows = 0;
  int columns = 0;
  int frames = 1;
  int samples_per_pixel = 1;
  int planar = 0;  // PlanarConfiguration: 0 interleaved (RGBRGB), 1 by plane (RR..GG..BB..)
  int bits_allocated = 0;
  int bits_stored = 0;
  int high_bit = -1;
  bool is_signed = false;
};

// A lookup table (Modality LUT, VOI LUT or one palette channel): value = data[x - first],
// with x clamped to the table (PS3.3 C.11.1.1: values outside map to the first / last entry).
struct Lut {
  int64_t first = 0;
  int bits = 16;
  std::vector<uint16_t> data;
  uint16_t operator()(int64_t x) const {
    int64_t i = x - first;
    if (i < 0) i = 0;
    if (i >= static_cast<int64_t>(data.size())) i = static_cast<int64_t>(data.size()) - 1;
    return data[static_cast<size_t>(i)];
  }
};

// Everything besides the layout that decides what a stored value becomes.
struct ValueTransforms {
  std::optional<Lut> modality_lut;
  std::optional<Lut> voi_lut;
  std::vector<Window> file_windows;
  std::string voi_function;  // LINEAR (default), LINEAR_EXACT, SIGMOID
  std::optional<std::array<Lut, 3>> palette;
  bool has_padding = false;
  int64_t padding_lo = 0, padding_hi = 0;
};

long get_int(DcmItem* item, const DcmTagKey& tag, long fallback) {
  Uint16 value = 0;
  return item->findAndGetUint16(tag, value).good() ? value : fallback;
}

// US or SS (the "xs" tags: LUT descriptors, PixelPaddingValue) as a signed or unsigned number.
bool get_xs(DcmItem* item, const DcmTagKey& tag, unsigned long pos, bool as_signed, int64_t* out) {
  Uint16 u = 0;
  Sint16 s = 0;
  if (item->findAndGetUint16(tag, u, pos).good()) {
    *out = as_signed ? static_cast<int64_t>(static_cast<int16_t>(u)) : u;
    return true;
  }
  if (item->findAndGetSint16(tag, s, pos).good()) {
    *out = as_signed ? s : static_cast<int64_t>(static_cast<uint16_t>(s));
    return true;
  }
  return false;
}

// NumberOfFrames is IS (text). A value that is not an integer ("1A" in pydicom's badVR.dcm) means
// the writer was broken and the frame layout unknown, so it is an error rather than a guess.
Status get_frames(const std::string& path, DcmItem* item, int* frames) {
  OFString text;
  *frames = 1;
  if (item->findAndGetOFString(DCM_NumberOfFrames, text).bad()) return ok_status();
  std::string s = text.c_str();
  s.erase(0, s.find_first_not_of(' '));
  s.erase(s.find_last_not_of(' ') + 1);
  if (s.empty()) return ok_status();
  size_t used = 0;
  long n = 0;
  try {
    n = std::stol(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || n < 0 || n > 1000000) {
    return corrupt(path + ": NumberOfFrames '" + s + "' is not a valid frame count");
  }
  *frames = n == 0 ? 1 : static_cast<int>(n);  // "0" appears in the wild for single frames
  return ok_status();
}

std::string get_string(DcmItem* item, const DcmTagKey& tag) {
  OFString value;
  if (item->findAndGetOFString(tag, value).bad()) return "";
  std::string s = value.c_str();
  // DICOM pads strings to even length with spaces; callers compare them to literals.
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

bool get_double(DcmItem* item, const DcmTagKey& tag, unsigned long pos, double* out) {
  Float64 value = 0.0;
  if (item->findAndGetFloat64(tag, value, pos).bad() || !std::isfinite(value)) return false;
  *out = value;
  return true;
}

// A LUT from its descriptor (entries, first mapped value, bits) and data. `first_signed`: the
// first mapped value is SS when the pixels it maps are signed (PS3.3 C.11.1.1.1).
StatusOr<Lut> read_lut(const std::string& path, DcmItem* item, const DcmTagKey& descriptor, const DcmTagKey& data,
                       bool first_signed, const char* what) {
  int64_t entries = 0, first = 0, bits = 0;
  if (!get_xs(item, descriptor, 0, false, &entries) || !get_xs(item, descriptor, 1, first_signed, &first) ||
      !get_xs(item, descriptor, 2, false, &bits)) {
    return corrupt(path + ": " + what + " descriptor incomplete");
  }
  if (entries == 0) entries = 65536;
  if (bits < 1 || bits > 16) return corrupt(path + ": " + what + " has " + std::to_string(bits) + " bits per entry");
  const Uint16* words = nullptr;
  unsigned long count = 0;
  if (item->findAndGetUint16Array(data, words, &count).bad() || words == nullptr || count == 0) {
    return corrupt(path + ": " + what + " has no data");
  }
  Lut lut;
  lut.first = first;
  lut.bits = static_cast<int>(bits);
  if (count >= static_cast<unsigned long>(entries)) {
    lut.data.assign(words, words + entries);
  } else if (bits <= 8 && 2 * count >= static_cast<unsigned long>(entries)) {
    // 8-bit entries packed two to a word (allowed for palettes and seen for VOI LUTs).
    for (int64_t i = 0; i < entries; ++i) {
      const Uint16 w = words[i / 2];
      lut.data.push_back(static_cast<uint16_t>(i % 2 == 0 ? (w & 0xff) : (w >> 8)));
    }
  } else {
    return corrupt(path + ": " + what + " has " + std::to_string(count) + " entries, descriptor says " +
                   std::to_string(entries));
  }
  return lut;
}

// Fills everything but the pixels from the (already loaded) data set. PHI tags are never read.
Status read_attributes(const std::string& path, DcmDataset* ds, const ReadOptions& options, DicomPixels* out,
                       PixelLayout* layout, ValueTransforms* vt) {
  layout->rows = static_cast<int>(get_int(ds, DCM_Rows, 0));
  layout->columns = static_cast<int>(get_int(ds, DCM_Columns, 0));
  FEDRAD_RETURN_IF_ERROR(get_frames(path, ds, &layout->frames));
  layout->samples_per_pixel = static_cast<int>(get_int(ds, DCM_SamplesPerPixel, 1));
  layout->planar = static_cast<int>(get_int(ds, DCM_PlanarConfiguration, 0));
  layout->bits_allocated = static_cast<int>(get_int(ds, DCM_BitsAllocated, 0));
  layout->bits_stored = static_cast<int>(get_int(ds, DCM_BitsStored, layout->bits_allocated));
  layout->high_bit = static_cast<int>(get_int(ds, DCM_HighBit, layout->bits_stored - 1));
  layout->is_signed = get_int(ds, DCM_PixelRepresentation, 0) == 1;

  out->photometric = get_string(ds, DCM_PhotometricInterpretation);
  out->modality = get_string(ds, DCM_Modality);
  out->samples_per_pixel = layout->samples_per_pixel;
  get_double(ds, DCM_RescaleSlope, 0, &out->rescale_slope);
  get_double(ds, DCM_RescaleIntercept, 0, &out->rescale_intercept);
  if (out->rescale_slope == 0.0) out->rescale_slope = 1.0;  // a zero slope would erase the image

  double row = 0, col = 0;
  if ((get_double(ds, DCM_PixelSpacing, 0, &row) && get_double(ds, DCM_PixelSpacing, 1, &col)) ||
      (get_double(ds, DCM_ImagerPixelSpacing, 0, &row) && get_double(ds, DCM_ImagerPixelSpacing, 1, &col))) {
    if (row > 0 && col > 0) {
      out->row_spacing = row;
      out->column_spacing = col;
      out->has_spacing = true;
    }
  }
  std::array<double, 3> pos{};
  if (get_double(ds, DCM_ImagePositionPatient, 0, &pos[0]) && get_double(ds, DCM_ImagePositionPatient, 1, &pos[1]) &&
      get_double(ds, DCM_ImagePositionPatient, 2, &pos[2])) {
    out->position = pos;
    out->has_position = true;
  }
  std::array<double, 6> ori{};
  bool have_ori = true;
  for (unsigned long i = 0; i < 6 && have_ori; ++i) have_ori = get_double(ds, DCM_ImageOrientationPatient, i, &ori[i]);
  if (have_ori) {
    out->orientation = ori;
    out->has_orientation = true;
  }
  get_double(ds, DCM_SliceThickness, 0, &out->slice_thickness);

  if (!ds->tagExists(DCM_PixelData)) return corrupt(path + ": no pixel data");
  if (layout->rows <= 0 || layout->columns <= 0) {
    return corrupt(path + ": image size " + std::to_string(layout->rows) + "x" +
                   std::to_string(layout->columns) + " is empty");
  }
  const std::string& pi = out->photometric;
  const bool grey = layout->samples_per_pixel == 1 && (pi.empty() || pi == "MONOCHROME1" || pi == "MONOCHROME2");
  if (!grey) {
    const bool known_colour =
        (layout->samples_per_pixel == 3 && (pi == "RGB" || pi == "YBR_FULL" || pi == "YBR_FULL_422" ||
                                            pi == "YBR_RCT" || pi == "YBR_ICT")) ||
        (layout->samples_per_pixel == 1 && pi == "PALETTE COLOR");
    if (options.colour == ColourPolicy::kReject || !known_colour) {
      return unsupported(path + ": photometric interpretation '" + pi + "' with " +
                         std::to_string(layout->samples_per_pixel) + " samples per pixel (" +
                         (known_colour ? "colour refused by ReadOptions::colour; kLuma converts it"
                                       : "only greyscale MONOCHROME1/2, RGB, YBR_FULL(_422), YBR_RCT/ICT and "
                                         "PALETTE COLOR are read") +
                         ")");
    }
    if (pi == "PALETTE COLOR") {
      if (ds->tagExists(DCM_SegmentedRedPaletteColorLookupTableData)) {
        return unsupported(path + ": segmented palette colour lookup tables are not supported");
      }
      std::array<Lut, 3> pal;
      const DcmTagKey desc[3] = {DCM_RedPaletteColorLookupTableDescriptor, DCM_GreenPaletteColorLookupTableDescriptor,
                                 DCM_BluePaletteColorLookupTableDescriptor};
      const DcmTagKey data[3] = {DCM_RedPaletteColorLookupTableData, DCM_GreenPaletteColorLookupTableData,
                                 DCM_BluePaletteColorLookupTableData};
      for (int c = 0; c < 3; ++c) {
        FEDRAD_ASSIGN_OR_RETURN(pal[c], read_lut(path, ds, desc[c], data[c], layout->is_signed, "palette LUT"));
      }
      vt->palette = std::move(pal);
    }
  }

  // Pixel padding (PS3.3 C.7.5.1.1.2): compared on stored values.
  int64_t pad = 0;
  if (grey && get_xs(ds, DCM_PixelPaddingValue, 0, layout->is_signed, &pad)) {
    int64_t limit = pad;
    get_xs(ds, DCM_PixelPaddingRangeLimit, 0, layout->is_signed, &limit);
    vt->has_padding = true;
    vt->padding_lo = std::min(pad, limit);
    vt->padding_hi = std::max(pad, limit);
    out->has_padding_value = true;
    out->padding_value = static_cast<double>(pad);
    out->padding_range_limit = static_cast<double>(limit);
  }

  // Modality LUT Sequence replaces slope/intercept when present (PS3.3 C.11.1).
  DcmItem* item = nullptr;
  if (grey && options.apply_rescale && ds->findAndGetSequenceItem(DCM_ModalityLUTSequence, item, 0).good() && item) {
    FEDRAD_ASSIGN_OR_RETURN(auto lut, read_lut(path, item, DCM_LUTDescriptor, DCM_LUTData, layout->is_signed,
                                               "Modality LUT"));
    vt->modality_lut = std::move(lut);
  }
  if (options.use_file_window && !options.window) {
    item = nullptr;
    if (ds->findAndGetSequenceItem(DCM_VOILUTSequence, item, 0).good() && item) {
      // The VOI LUT's input is the modality output; signed when that can be negative.
      const bool signed_input = layout->is_signed || out->rescale_intercept < 0;
      FEDRAD_ASSIGN_OR_RETURN(auto lut, read_lut(path, item, DCM_LUTDescriptor, DCM_LUTData, signed_input, "VOI LUT"));
      vt->voi_lut = std::move(lut);
    }
    for (unsigned long i = 0;; ++i) {
      Window w;
      if (!get_double(ds, DCM_WindowCenter, i, &w.centre) || !get_double(ds, DCM_WindowWidth, i, &w.width)) break;
      if (w.width >= 1.0) vt->file_windows.push_back(w);
    }
    vt->voi_function = get_string(ds, DCM_VOILUTFunction);
  }
  return ok_status();
}

Status check_bit_layout(const std::string& path, const PixelLayout& l) {
  if (l.bits_allocated != 8 && l.bits_allocated != 16 && l.bits_allocated != 32) {
    return unsupported(path + ": BitsAllocated " + std::to_string(l.bits_allocated) + " (only 8, 16, 32)");
  }
  if (l.bits_stored < 1 || l.bits_stored > l.bits_allocated || l.high_bit >= l.bits_allocated ||
      l.high_bit + 1 < l.bits_stored) {
    return corrupt(path + ": inconsistent bits (allocated " + std::to_string(l.bits_allocated) + ", stored " +
                   std::to_string(l.bits_stored) + ", high bit " + std::to_string(l.high_bit) + ")");
  }
  return ok_status();
}

// The VOI stage: modality value -> [0, 1].
struct Voi {
  enum Kind { kNone, kLinear, kLinearExact, kSigmoid, kLut } kind = kNone;
  Window w;
  const Lut* lut = nullptr;
  double operator()(double x) const {
    switch (kind) {
      case kNone: return x;
      case kLinear: {
        const double lo = w.centre - 0.5 - (w.width - 1) / 2, hi = w.centre - 0.5 + (w.width - 1) / 2;
        if (x <= lo) return 0.0;
        if (x > hi) return 1.0;
        return w.width <= 1 ? 1.0 : (x - (w.centre - 0.5)) / (w.width - 1) + 0.5;
      }
      case kLinearExact: {
        if (x <= w.centre - w.width / 2) return 0.0;
        if (x > w.centre + w.width / 2) return 1.0;
        return (x - w.centre) / w.width + 0.5;
      }
      case kSigmoid: return 1.0 / (1.0 + std::exp(-4.0 * (x - w.centre) / w.width));
      case kLut: return (*lut)(static_cast<int64_t>(std::llround(x))) / (std::ldexp(1.0, lut->bits) - 1);
    }
    return x;
  }
};

// Raw bytes (little endian, BitsAllocated per sample) -> values, following the documented order:
// mask to BitsStored, sign-extend, (padding), then greyscale: MONOCHROME1-invert, modality, VOI;
// colour: luma.
Status convert_pixels(const std::string& path, const uint8_t* data, size_t size, const PixelLayout& l,
                      const ValueTransforms& vt, const ReadOptions& options, DicomPixels* out) {
  FEDRAD_RETURN_IF_ERROR(check_bit_layout(path, l));
  const std::string& pi = out->photometric;
  const bool palette = pi == "PALETTE COLOR";
  const bool colour = l.samples_per_pixel != 1 || palette;
  if (colour && options.colour == ColourPolicy::kReject) {  // e.g. a codec reported colour late
    return unsupported(path + ": photometric interpretation '" + pi + "' (colour refused by ReadOptions::colour)");
  }
  if (l.samples_per_pixel != 1 && l.samples_per_pixel != 3) {
    return unsupported(path + ": " + std::to_string(l.samples_per_pixel) + " samples per pixel");
  }
  const bool ybr422 = l.samples_per_pixel == 3 && pi == "YBR_FULL_422";
  if (ybr422 && l.columns % 2 != 0) return corrupt(path + ": YBR_FULL_422 with an odd number of columns");
  const size_t bytes_per_sample = static_cast<size_t>(l.bits_allocated / 8);
  const size_t pixels_per_frame = static_cast<size_t>(l.rows) * static_cast<size_t>(l.columns);
  const size_t frame_samples = ybr422 ? 2 * pixels_per_frame : pixels_per_frame * l.samples_per_pixel;
  const size_t expected = frame_samples * static_cast<size_t>(l.frames) * bytes_per_sample;
  if (data == nullptr || size < expected) {
    return corrupt(path + ": pixel data has " + std::to_string(data ? size : 0) + " bytes, expected " +
                   std::to_string(expected));
  }
  int first = 0, count = l.frames;
  if (options.frame >= 0) {
    if (options.frame >= l.frames) {
      return invalid_argument(path + ": frame " + std::to_string(options.frame) + " requested, file has " +
                              std::to_string(l.frames));
    }
    first = options.frame;
    count = 1;
  }

  const int shift = l.high_bit + 1 - l.bits_stored;
  const uint64_t mask = (uint64_t{1} << l.bits_stored) - 1;
  const int64_t sign_bit = int64_t{1} << (l.bits_stored - 1);
  // Representable range of BitsStored: min + max is 2^n - 1 unsigned and -1 signed.
  const int64_t min_plus_max = l.is_signed ? -1 : static_cast<int64_t>(mask);
  const bool invert = !colour && options.invert_monochrome1 && pi == "MONOCHROME1";
  const bool rescale = !colour && options.apply_rescale;

  Voi voi;
  if (options.window) {
    voi.kind = Voi::kLinear;
    voi.w = *options.window;
    if (!(voi.w.width >= 1.0) || !std::isfinite(voi.w.centre)) {
      return invalid_argument(path + ": window width " + std::to_string(voi.w.width) + " (must be >= 1)");
    }
  } else if (options.use_file_window && vt.voi_lut) {
    voi.kind = Voi::kLut;
    voi.lut = &*vt.voi_lut;
  } else if (options.use_file_window && !vt.file_windows.empty()) {
    voi.w = vt.file_windows.front();
    voi.kind = vt.voi_function == "SIGMOID" ? Voi::kSigmoid
               : vt.voi_function == "LINEAR_EXACT" ? Voi::kLinearExact : Voi::kLinear;
  }
  out->voi_applied = voi.kind != Voi::kNone;
  if (voi.kind != Voi::kNone && voi.kind != Voi::kLut) out->window = voi.w;
  out->modality_lut_applied = rescale && vt.modality_lut.has_value();
  out->has_modality_lut = !colour && vt.modality_lut.has_value();
  out->colour_converted = colour;

  out->rows = l.rows;
  out->columns = l.columns;
  out->frames = count;
  out->bits_allocated = l.bits_allocated;
  out->bits_stored = l.bits_stored;
  out->is_signed = l.is_signed;
  out->pixels.resize(pixels_per_frame * static_cast<size_t>(count));
  const bool mask_padding = options.mask_padding && vt.has_padding;
  if (mask_padding) out->padding_mask.assign(out->pixels.size(), 0);
  out->padding_pixels = 0;

  auto sample = [&](const uint8_t* p) {
    uint64_t raw = 0;
    for (size_t b = 0; b < bytes_per_sample; ++b) raw |= static_cast<uint64_t>(p[b]) << (8 * b);
    int64_t v = static_cast<int64_t>((raw >> shift) & mask);
    if (l.is_signed && (v & sign_bit)) v -= int64_t{2} * sign_bit;
    return v;
  };
  auto modality = [&](int64_t v) {
    if (!rescale) return static_cast<double>(v);
    if (vt.modality_lut) return static_cast<double>((*vt.modality_lut)(v));
    return static_cast<double>(v) * out->rescale_slope + out->rescale_intercept;
  };
  auto luma = [](double r, double g, double b) { return 0.299 * r + 0.587 * g + 0.114 * b; };

  for (int f = 0; f < count; ++f) {
    const uint8_t* frame = data + frame_samples * static_cast<size_t>(first + f) * bytes_per_sample;
    float* dst = out->pixels.data() + pixels_per_frame * static_cast<size_t>(f);
    uint8_t* pad_dst = mask_padding ? out->padding_mask.data() + pixels_per_frame * static_cast<size_t>(f) : nullptr;
    float lowest = std::numeric_limits<float>::infinity();
    for (size_t i = 0; i < pixels_per_frame; ++i) {
      double value = 0;
      if (!colour) {
        int64_t v = sample(frame + i * bytes_per_sample);
        if (vt.has_padding && v >= vt.padding_lo && v <= vt.padding_hi) {
          ++out->padding_pixels;
          if (pad_dst) pad_dst[i] = 1;
        }
        if (voi.kind != Voi::kNone) {
          value = voi(modality(v));
          if (invert) value = 1.0 - value;
        } else {
          if (invert) v = min_plus_max - v;
          value = modality(v);
        }
      } else {
        if (palette) {
          const int64_t index = sample(frame + i * bytes_per_sample);
          value = luma((*vt.palette)[0](index), (*vt.palette)[1](index), (*vt.palette)[2](index));
        } else if (ybr422) {
          // Y0 Y1 Cb Cr per pair of pixels: each pixel has its own Y.
          value = static_cast<double>(sample(frame + ((i / 2) * 4 + i % 2) * bytes_per_sample));
        } else {
          const size_t stride = l.planar == 1 ? pixels_per_frame : 1;
          const size_t base = l.planar == 1 ? i : 3 * i;
          const double c0 = static_cast<double>(sample(frame + base * bytes_per_sample));
          if (pi == "YBR_FULL") {
            value = c0;  // Y of YBR_FULL is the BT.601 luma
          } else {
            const double c1 = static_cast<double>(sample(frame + (base + stride) * bytes_per_sample));
            const double c2 = static_cast<double>(sample(frame + (base + 2 * stride) * bytes_per_sample));
            value = luma(c0, c1, c2);
          }
        }
        if (voi.kind != Voi::kNone) value = voi(value);
      }
      dst[i] = static_cast<float>(value);
      if (pad_dst && !pad_dst[i]) lowest = std::min(lowest, dst[i]);
    }
    if (pad_dst) {
      if (!std::isfinite(lowest)) lowest = 0.0f;  // every pixel is padding
      for (size_t i = 0; i < pixels_per_frame; ++i)
        if (pad_dst[i]) dst[i] = lowest;
    }
  }
  return ok_status();
}

// Pixel bytes via DCMTK, after decompressing in place to explicit VR little endian.
Status decode_with_dcmtk(const std::string& path, DcmDataset* ds, E_TransferSyntax original, PixelLayout layout,
                         const ValueTransforms& vt, const ReadOptions& options, DicomPixels* out) {
  if (layout.bits_allocated == 32 && DcmXfer(original).getByteOrder() == EBO_BigEndian) {
    // DCMTK keeps OW data as 16-bit words, so 32-bit big-endian samples come out half-swapped.
    return unsupported(path + ": 32-bit samples in big endian transfer syntax");
  }
  if (DcmXfer(original).isEncapsulated()) {
    OFCondition cond = ds->chooseRepresentation(EXS_LittleEndianExplicit, nullptr);
    if (cond.bad() || !ds->canWriteXfer(EXS_LittleEndianExplicit)) {
      return unsupported(path + ": cannot decode transfer syntax " + out->transfer_syntax + " (" +
                         (cond.bad() ? cond.text() : "no codec") + ")");
    }
    // Colour decoders convert YBR to RGB and may change the planar configuration; they update
    // the data set to say what the decoded bytes are.
    if (layout.samples_per_pixel == 3) {
      const std::string decoded_pi = get_string(ds, DCM_PhotometricInterpretation);
      if (!decoded_pi.empty()) out->photometric = decoded_pi;
      layout.planar = static_cast<int>(get_int(ds, DCM_PlanarConfiguration, 0));
    }
  }
  DcmElement* element = nullptr;
  if (ds->findAndGetElement(DCM_PixelData, element).bad() || element == nullptr) {
    return corrupt(path + ": no pixel data");
  }
  Uint8* bytes = nullptr;
  // For OW data DCMTK hands out the words in host byte order, which the little-endian assembly
  // in convert_pixels expects on the x86/ARM hosts we build for.
  OFCondition cond = element->getUint8Array(bytes);
  if (cond.bad() || bytes == nullptr) {
    return corrupt(path + ": pixel data unreadable (" + std::string(cond.text()) + ")");
  }
  return convert_pixels(path, bytes, element->getLength(), layout, vt, options, out);
}

// Checks the SIZ segment of the first JPEG 2000 codestream against the header before OpenJPEG
// sees it: a damaged or hostile codestream that declares a huge image makes OpenJPEG allocate
// gigabytes and spend seconds before failing (found by scripts/fuzz_reader.sh).
Status check_jpeg2000_size(const std::string& path, DcmDataset* ds, const PixelLayout& layout) {
  DcmElement* element = nullptr;
  if (ds->findAndGetElement(DCM_PixelData, element).bad() || element == nullptr) return ok_status();
  DcmPixelSequence* seq = nullptr;
  auto* pixel_data = dynamic_cast<DcmPixelData*>(element);
  E_TransferSyntax xfer = ds->getOriginalXfer();
  const DcmRepresentationParameter* param = nullptr;
  if (pixel_data == nullptr || pixel_data->getEncapsulatedRepresentation(xfer, param, seq).bad() || seq == nullptr)
    return corrupt(path + ": JPEG 2000 file without encapsulated pixel data");
  DcmPixelItem* item = nullptr;
  // Item 0 is the basic offset table; the first fragment of the first frame follows.
  if (seq->card() < 2 || seq->getItem(item, 1).bad() || item == nullptr)
    return corrupt(path + ": JPEG 2000 pixel data has no fragment");
  Uint8* bytes = nullptr;
  if (item->getUint8Array(bytes).bad() || bytes == nullptr) return corrupt(path + ": JPEG 2000 fragment unreadable");
  const Uint32 n = item->getLength();
  // A JP2 file wrapper may precede the codestream: look for SOC + SIZ in the first bytes.
  const Uint32 limit = std::min<Uint32>(n, 4096);
  for (Uint32 i = 0; i + 4 + 38 <= n && i < limit; ++i) {
    if (!(bytes[i] == 0xFF && bytes[i + 1] == 0x4F && bytes[i + 2] == 0xFF && bytes[i + 3] == 0x51)) continue;
    auto u32 = [&](Uint32 at) {
      const Uint8* b = bytes + i + 4 + at;
      return (Uint32(b[0]) << 24) | (Uint32(b[1]) << 16) | (Uint32(b[2]) << 8) | Uint32(b[3]);
    };
    const Uint32 xsiz = u32(4), ysiz = u32(8), xosiz = u32(12), yosiz = u32(16);
    const uint16_t csiz = static_cast<uint16_t>((bytes[i + 4 + 36] << 8) | bytes[i + 4 + 37]);
    if (xosiz >= xsiz || yosiz >= ysiz || xsiz - xosiz != static_cast<Uint32>(layout.columns) ||
        ysiz - yosiz != static_cast<Uint32>(layout.rows) || csiz != layout.samples_per_pixel) {
      return corrupt(path + ": JPEG 2000 codestream declares " + std::to_string(xsiz - std::min(xosiz, xsiz)) + "x" +
                     std::to_string(ysiz - std::min(yosiz, ysiz)) + " with " + std::to_string(csiz) +
                     " components, the header says " + std::to_string(layout.columns) + "x" +
                     std::to_string(layout.rows) + " with " + std::to_string(layout.samples_per_pixel));
    }
    return ok_status();
  }
  return corrupt(path + ": JPEG 2000 fragment does not start a codestream (no SOC/SIZ marker)");
}

// JPEG 2000: DCMTK's free codecs lack it, GDCM (OpenJPEG) decodes it.
Status decode_with_gdcm(const std::string& path, PixelLayout layout, const ValueTransforms& vt,
                        const ReadOptions& options, DicomPixels* out) {
  gdcm::ImageReader reader;
  reader.SetFileName(path.c_str());
  if (!reader.Read()) return corrupt(path + ": GDCM cannot read the file");
  const gdcm::Image& image = reader.GetImage();
  // The codestream decides the sample format; GDCM reconciles it with the header (some files
  // disagree on signedness), so its pixel format is the one that matches the buffer.
  const gdcm::PixelFormat& pf = image.GetPixelFormat();
  layout.bits_allocated = pf.GetBitsAllocated();
  layout.bits_stored = pf.GetBitsStored();
  layout.high_bit = pf.GetHighBit();
  layout.is_signed = pf.GetPixelRepresentation() == 1;
  layout.samples_per_pixel = pf.GetSamplesPerPixel();
  if (layout.samples_per_pixel != 1) {
    if (options.colour == ColourPolicy::kReject) {
      return unsupported(path + ": photometric interpretation '" + out->photometric + "' with " +
                         std::to_string(pf.GetSamplesPerPixel()) +
                         " samples per pixel (colour refused by ReadOptions::colour)");
    }
    // OpenJPEG undoes the JPEG 2000 colour transform (YBR_RCT/ICT), so the samples are RGB.
    layout.planar = static_cast<int>(image.GetPlanarConfiguration());
    if (out->photometric == "YBR_RCT" || out->photometric == "YBR_ICT") out->photometric = "RGB";
  }
  std::vector<char> buffer(image.GetBufferLength());
  if (buffer.empty() || !image.GetBuffer(buffer.data())) {
    return corrupt(path + ": JPEG 2000 pixel data cannot be decoded");
  }
  return convert_pixels(path, reinterpret_cast<const uint8_t*>(buffer.data()), buffer.size(), layout, vt, options,
                        out);
}

StatusOr<DicomPixels> read_dicom_unchecked(const std::string& path, const ReadOptions& options) {
  ensure_codecs_registered();
  DcmFileFormat file;
  // ERM_autoDetect also accepts a bare data set without the meta header (e.g. pydicom's
  // no_meta.dcm, a CT_small copy): if DCMTK can parse it and it holds a complete greyscale image,
  // the pixels are as trustworthy as with a header, so we read it. A "no meta" file that parses
  // but has no image (pydicom's ExplVR_*NoMeta, no_meta_group_length) still fails below with
  // "no pixel data", and one DCMTK cannot parse fails here.
  OFCondition cond = file.loadFile(path.c_str(), EXS_Unknown, EGL_noChange, DCM_MaxReadLength, ERM_autoDetect);
  if (cond.bad()) return corrupt(path + ": not readable as DICOM (" + std::string(cond.text()) + ")");
  DcmDataset* ds = file.getDataset();
  // Large values are read lazily; loading them now turns a truncated file into an error here.
  cond = ds->loadAllDataIntoMemory();
  if (cond.bad()) return corrupt(path + ": truncated or unreadable (" + std::string(cond.text()) + ")");

  DicomPixels out;
  const E_TransferSyntax original = ds->getOriginalXfer();
  out.transfer_syntax = get_string(file.getMetaInfo(), DCM_TransferSyntaxUID);
  if (out.transfer_syntax.empty()) out.transfer_syntax = DcmXfer(original).getXferID();

  PixelLayout layout;
  ValueTransforms vt;
  FEDRAD_RETURN_IF_ERROR(read_attributes(path, ds, options, &out, &layout, &vt));
  if (out.transfer_syntax == kJpeg2000Lossless || out.transfer_syntax == kJpeg2000) {
    FEDRAD_RETURN_IF_ERROR(check_jpeg2000_size(path, ds, layout));
    FEDRAD_RETURN_IF_ERROR(decode_with_gdcm(path, layout, vt, options, &out));
  } else {
    FEDRAD_RETURN_IF_ERROR(decode_with_dcmtk(path, ds, original, layout, vt, options, &out));
  }
  return out;
}

// ---- writing ----

E_TransferSyntax transfer_syntax_of(Encoding encoding) {
  switch (encoding) {
    case Encoding::kExplicitLittle: return EXS_LittleEndianExplicit;
    case Encoding::kImplicitLittle: return EXS_LittleEndianImplicit;
    case Encoding::kRle: return EXS_RLELossless;
    case Encoding::kJpegLossless: return EXS_JPEGProcess14SV1;
    case Encoding::kJpegLsLossless: return EXS_JPEGLSLossless;
    case Encoding::kExplicitBig: return EXS_BigEndianExplicit;
    case Encoding::kDeflated: return EXS_DeflatedLittleEndianExplicit;
    case Encoding::kJpegBaseline: return EXS_JPEGProcess1;
    case Encoding::kJpegExtended: return EXS_JPEGProcess2_4;
    case Encoding::kJpegLsNearLossless: return EXS_JPEGLSLossy;
  }
  return EXS_LittleEndianExplicit;
}

Status check_write_spec(const std::string& path, const std::vector<uint16_t>& pixels, const WriteSpec& spec) {
  if (spec.rows <= 0 || spec.columns <= 0 || spec.rows > 65535 || spec.columns > 65535) {
    return invalid_argument(path + ": bad image size " + std::to_string(spec.rows) + "x" +
                            std::to_string(spec.columns));
  }
  if (spec.bits_stored < 8 || spec.bits_stored > 16) {
    return invalid_argument(path + ": bits_stored " + std::to_string(spec.bits_stored) + " not in 8..16");
  }
  const size_t expected = static_cast<size_t>(spec.rows) * static_cast<size_t>(spec.columns);
  if (pixels.size() != expected) {
    return invalid_argument(path + ": " + std::to_string(pixels.size()) + " pixels, expected " +
                            std::to_string(expected));
  }
  if (spec.encoding == Encoding::kJpegBaseline && spec.bits_stored != 8) {
    return invalid_argument(path + ": JPEG baseline holds 8 bits only");
  }
  if (spec.encoding == Encoding::kJpegExtended && spec.bits_stored > 12) {
    return invalid_argument(path + ": JPEG extended holds at most 12 bits");
  }
  if (!spec.palette.empty() && (spec.monochrome1 || spec.is_signed || spec.palette.size() > 65536)) {
    return invalid_argument(path + ": a palette image is unsigned, not MONOCHROME1, at most 65536 entries");
  }
  const uint32_t limit = uint32_t{1} << spec.bits_stored;
  for (uint16_t v : pixels) {
    if (v >= limit) {
      return invalid_argument(path + ": pixel value " + std::to_string(v) + " does not fit in " +
                              std::to_string(spec.bits_stored) + " bits");
    }
  }
  return ok_status();
}

std::string format_spacing(double mm) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", mm);  // DS allows at most 16 characters
  return std::string(buf) + "\\" + buf;
}

// US values for tags whose dictionary VR is "xs" (US or SS), which putAndInsertUint16 refuses.
OFCondition put_us_values(DcmItem* item, const DcmTagKey& tag, std::vector<Uint16> values) {
  auto* element = new DcmUnsignedShort(DcmTag(tag, EVR_US));
  OFCondition c = element->putUint16Array(values.data(), static_cast<unsigned long>(values.size()));
  if (c.good()) return item->insert(element, OFTrue);
  delete element;
  return c;
}

Status put_header(DcmDataset* ds, const WriteSpec& spec) {
  char uid[100];
  const int bits_allocated = spec.bits_stored == 8 ? 8 : 16;
  OFCondition c;
  auto put = [&](const DcmTagKey& tag, const std::string& value) {
    if (c.good()) c = ds->putAndInsertString(tag, value.c_str());
  };
  auto put16 = [&](const DcmTagKey& tag, int value) {
    if (c.good()) c = ds->putAndInsertUint16(tag, static_cast<Uint16>(value));
  };
  put(DCM_SOPClassUID, UID_SecondaryCaptureImageStorage);
  put(DCM_SOPInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT));
  put(DCM_StudyInstanceUID,
      spec.study_uid.empty() ? std::string(dcmGenerateUniqueIdentifier(uid, SITE_STUDY_UID_ROOT)) : spec.study_uid);
  put(DCM_SeriesInstanceUID,
      spec.series_uid.empty() ? std::string(dcmGenerateUniqueIdentifier(uid, SITE_SERIES_UID_ROOT)) : spec.series_uid);
  if (spec.instance_number > 0) put(DCM_InstanceNumber, std::to_string(spec.instance_number));
  put(DCM_Modality, spec.modality);
  put(DCM_ConversionType, "WSD");
  put(DCM_PatientName, spec.patient_name);
  put(DCM_PatientID, spec.patient_id);
  put(DCM_ReferringPhysicianName, spec.referring_physician);
  put16(DCM_SamplesPerPixel, 1);
  put(DCM_PhotometricInterpretation,
      !spec.palette.empty() ? "PALETTE COLOR" : spec.monochrome1 ? "MONOCHROME1" : "MONOCHROME2");
  put16(DCM_Rows, spec.rows);
  put16(DCM_Columns, spec.columns);
  put16(DCM_BitsAllocated, bits_allocated);
  put16(DCM_BitsStored, spec.bits_stored);
  put16(DCM_HighBit, spec.bits_stored - 1);
  put16(DCM_PixelRepresentation, spec.is_signed ? 1 : 0);
  if (spec.pixel_spacing > 0) put(DCM_PixelSpacing, format_spacing(spec.pixel_spacing));
  auto ds_list = [](const double* v, int n) {
    std::string out;
    char buf[32];
    for (int i = 0; i < n; ++i) {
      std::snprintf(buf, sizeof(buf), "%.8g", v[i]);
      out += (i ? "\\" : "") + std::string(buf);
    }
    return out;
  };
  if (spec.has_geometry) {
    put(DCM_ImagePositionPatient, ds_list(spec.position.data(), 3));
    put(DCM_ImageOrientationPatient, ds_list(spec.orientation.data(), 6));
    if (spec.slice_thickness > 0) put(DCM_SliceThickness, ds_list(&spec.slice_thickness, 1));
  }
  if (spec.rescale_slope != 1.0 || spec.rescale_intercept != 0.0) {
    put(DCM_RescaleSlope, ds_list(&spec.rescale_slope, 1));
    put(DCM_RescaleIntercept, ds_list(&spec.rescale_intercept, 1));
  }
  if (spec.window) {
    put(DCM_WindowCenter, ds_list(&spec.window->centre, 1));
    put(DCM_WindowWidth, ds_list(&spec.window->width, 1));
  }
  if (spec.padding_value) {
    if (spec.is_signed) {
      auto* element = new DcmSignedShort(DcmTag(DCM_PixelPaddingValue, EVR_SS));
      const Sint16 v = static_cast<Sint16>(*spec.padding_value);
      c = element->putSint16Array(&v, 1);
      if (c.good()) c = ds->insert(element, OFTrue);
      else delete element;
    } else {
      if (c.good()) c = put_us_values(ds, DCM_PixelPaddingValue, {static_cast<Uint16>(*spec.padding_value)});
    }
  }
  auto put_lut = [&](const DcmTagKey& sequence, const std::vector<uint16_t>& lut) {
    if (lut.empty() || c.bad()) return;
    DcmItem* item = nullptr;
    c = ds->findOrCreateSequenceItem(sequence, item, -2);
    if (c.bad() || item == nullptr) return;
    const Uint16 entries = static_cast<Uint16>(lut.size() >= 65536 ? 0 : lut.size());
    c = put_us_values(item, DCM_LUTDescriptor, {entries, 0, 16});
    if (c.good()) {
      auto* data = new DcmOtherByteOtherWord(DcmTag(DCM_LUTData, EVR_OW));
      c = data->putUint16Array(lut.data(), static_cast<unsigned long>(lut.size()));
      if (c.good()) c = item->insert(data, OFTrue);
      else delete data;
    }
    if (c.good() && sequence == DCM_ModalityLUTSequence) c = item->putAndInsertString(DCM_ModalityLUTType, "US");
  };
  put_lut(DCM_ModalityLUTSequence, spec.modality_lut);
  put_lut(DCM_VOILUTSequence, spec.voi_lut);
  if (!spec.palette.empty()) {
    const DcmTagKey desc[3] = {DCM_RedPaletteColorLookupTableDescriptor, DCM_GreenPaletteColorLookupTableDescriptor,
                               DCM_BluePaletteColorLookupTableDescriptor};
    const DcmTagKey data[3] = {DCM_RedPaletteColorLookupTableData, DCM_GreenPaletteColorLookupTableData,
                               DCM_BluePaletteColorLookupTableData};
    for (int ch = 0; ch < 3; ++ch) {
      const int entries = static_cast<int>(spec.palette.size());
      if (c.good()) c = put_us_values(ds, desc[ch], {static_cast<Uint16>(entries == 65536 ? 0 : entries), 0, 16});
      std::vector<Uint16> lut(spec.palette.size());
      for (size_t i = 0; i < lut.size(); ++i) lut[i] = spec.palette[i][ch];
      if (c.good()) c = ds->putAndInsertUint16Array(data[ch], lut.data(), static_cast<unsigned long>(lut.size()));
    }
  }
  if (c.bad()) return internal_error(std::string("cannot set header: ") + c.text());
  return ok_status();
}

Status put_pixels(DcmDataset* ds, const std::vector<uint16_t>& pixels, const WriteSpec& spec) {
  const uint16_t max_value = static_cast<uint16_t>((uint32_t{1} << spec.bits_stored) - 1);
  OFCondition c;
  if (spec.bits_stored == 8) {
    std::vector<Uint8> stored(pixels.size());
    for (size_t i = 0; i < pixels.size(); ++i) {
      stored[i] = static_cast<Uint8>(spec.monochrome1 ? max_value - pixels[i] : pixels[i]);
    }
    c = ds->putAndInsertUint8Array(DCM_PixelData, stored.data(), static_cast<unsigned long>(stored.size()));
  } else {
    std::vector<Uint16> stored(pixels.size());
    for (size_t i = 0; i < pixels.size(); ++i) {
      stored[i] = static_cast<Uint16>(spec.monochrome1 ? max_value - pixels[i] : pixels[i]);
    }
    c = ds->putAndInsertUint16Array(DCM_PixelData, stored.data(), static_cast<unsigned long>(stored.size()));
  }
  if (c.bad()) return internal_error(std::string("cannot set pixel data: ") + c.text());
  return ok_status();
}

Status write_dicom_unchecked(const std::string& path, const std::vector<uint16_t>& pixels, const WriteSpec& spec) {
  FEDRAD_RETURN_IF_ERROR(check_write_spec(path, pixels, spec));
  ensure_codecs_registered();
  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  FEDRAD_RETURN_IF_ERROR(put_header(ds, spec).with_context(path + ": "));
  FEDRAD_RETURN_IF_ERROR(put_pixels(ds, pixels, spec).with_context(path + ": "));

  const E_TransferSyntax xfer = transfer_syntax_of(spec.encoding);
  // Parameters are only consulted by the codec of their own syntax; both are lossless.
  DJ_RPLossless jpeg_param;  // process 14, selection value 1, no point transform
  DJLSRepresentationParameter jpls_param(0, OFTrue);
  DJ_RPLossy jpeg_lossy(spec.jpeg_quality);
  DJLSRepresentationParameter jpls_near(static_cast<Uint16>(spec.jpeg_ls_near), OFFalse);
  const DcmRepresentationParameter* param = nullptr;
  if (spec.encoding == Encoding::kJpegLossless) param = &jpeg_param;
  if (spec.encoding == Encoding::kJpegLsLossless) param = &jpls_param;
  if (spec.encoding == Encoding::kJpegBaseline || spec.encoding == Encoding::kJpegExtended) param = &jpeg_lossy;
  if (spec.encoding == Encoding::kJpegLsNearLossless) param = &jpls_near;
  OFCondition c = ds->chooseRepresentation(xfer, param);
  if (c.bad() || !ds->canWriteXfer(xfer)) {
    return internal_error(path + ": cannot encode as " + DcmXfer(xfer).getXferName() + " (" +
                          (c.bad() ? c.text() : "no codec") + ")");
  }
  c = file.saveFile(path.c_str(), xfer);
  if (c.bad()) return io_error(path + ": cannot write (" + std::string(c.text()) + ")");
  return ok_status();
}

}  // namespace

StatusOr<DicomPixels> read_dicom(const std::string& path, const ReadOptions& options) {
  // DCMTK rarely throws, GDCM may, and a broken length can make either ask for huge buffers.
  try {
    return read_dicom_unchecked(path, options);
  } catch (const std::bad_alloc&) {
    return corrupt(path + ": implausible sizes (out of memory while decoding)");
  } catch (const std::exception& e) {
    return corrupt(path + ": decoder failed (" + e.what() + ")");
  } catch (...) {
    return corrupt(path + ": decoder failed (unknown exception)");
  }
}

bool looks_like_dicom(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char header[132];
  if (!in.read(header, sizeof(header))) return false;
  return std::memcmp(header + 128, "DICM", 4) == 0;
}

Status write_dicom(const std::string& path, const std::vector<uint16_t>& pixels, const WriteSpec& spec) {
  try {
    return write_dicom_unchecked(path, pixels, spec);
  } catch (const std::exception& e) {
    return internal_error(path + ": encoder failed (" + e.what() + ")");
  } catch (...) {
    return internal_error(path + ": encoder failed (unknown exception)");
  }
}

}  // namespace fedrad::imaging
