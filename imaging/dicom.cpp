#include "imaging/dicom.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <new>

#include <dcmtk/config/osconfig.h>  // must precede every other DCMTK header
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dcrleerg.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpeg/djencode.h>
#include <dcmtk/dcmjpeg/djrplol.h>
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
  int bits_allocated = 0;
  int bits_stored = 0;
  int high_bit = -1;
  bool is_signed = false;
};

long get_int(DcmItem* item, const DcmTagKey& tag, long fallback) {
  Uint16 value = 0;
  return item->findAndGetUint16(tag, value).good() ? value : fallback;
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

// Fills everything but the pixels from the (already loaded) data set. PHI tags are never read.
Status read_attributes(const std::string& path, DcmDataset* ds, DicomPixels* out, PixelLayout* layout) {
  layout->rows = static_cast<int>(get_int(ds, DCM_Rows, 0));
  layout->columns = static_cast<int>(get_int(ds, DCM_Columns, 0));
  FEDRAD_RETURN_IF_ERROR(get_frames(path, ds, &layout->frames));
  layout->samples_per_pixel = static_cast<int>(get_int(ds, DCM_SamplesPerPixel, 1));
  layout->bits_allocated = static_cast<int>(get_int(ds, DCM_BitsAllocated, 0));
  layout->bits_stored = static_cast<int>(get_int(ds, DCM_BitsStored, layout->bits_allocated));
  layout->high_bit = static_cast<int>(get_int(ds, DCM_HighBit, layout->bits_stored - 1));
  layout->is_signed = get_int(ds, DCM_PixelRepresentation, 0) == 1;

  out->photometric = get_string(ds, DCM_PhotometricInterpretation);
  out->modality = get_string(ds, DCM_Modality);
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

  if (!ds->tagExists(DCM_PixelData)) return corrupt(path + ": no pixel data");
  if (layout->rows <= 0 || layout->columns <= 0) {
    return corrupt(path + ": image size " + std::to_string(layout->rows) + "x" +
                   std::to_string(layout->columns) + " is empty");
  }
  const std::string& pi = out->photometric;
  if (layout->samples_per_pixel != 1 || !(pi.empty() || pi == "MONOCHROME1" || pi == "MONOCHROME2")) {
    return unsupported(path + ": photometric interpretation '" + pi + "' with " +
                       std::to_string(layout->samples_per_pixel) +
                       " samples per pixel (only greyscale MONOCHROME1/2 is read)");
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

// Raw bytes (little endian, BitsAllocated per sample) -> values, following the documented order:
// mask to BitsStored, sign-extend, MONOCHROME1-invert, rescale.
Status convert_pixels(const std::string& path, const uint8_t* data, size_t size, const PixelLayout& l,
                      const ReadOptions& options, DicomPixels* out) {
  FEDRAD_RETURN_IF_ERROR(check_bit_layout(path, l));
  const size_t bytes_per_sample = static_cast<size_t>(l.bits_allocated / 8);
  const size_t frame_samples = static_cast<size_t>(l.rows) * static_cast<size_t>(l.columns);
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
  const bool invert = options.invert_monochrome1 && out->photometric == "MONOCHROME1";
  const bool rescale = options.apply_rescale;

  out->rows = l.rows;
  out->columns = l.columns;
  out->frames = count;
  out->bits_allocated = l.bits_allocated;
  out->bits_stored = l.bits_stored;
  out->is_signed = l.is_signed;
  out->pixels.resize(frame_samples * static_cast<size_t>(count));

  const uint8_t* p = data + frame_samples * static_cast<size_t>(first) * bytes_per_sample;
  for (size_t i = 0; i < out->pixels.size(); ++i, p += bytes_per_sample) {
    uint64_t raw = 0;
    for (size_t b = 0; b < bytes_per_sample; ++b) raw |= static_cast<uint64_t>(p[b]) << (8 * b);
    int64_t v = static_cast<int64_t>((raw >> shift) & mask);
    if (l.is_signed && (v & sign_bit)) v -= int64_t{2} * sign_bit;
    if (invert) v = min_plus_max - v;
    double value = static_cast<double>(v);
    if (rescale) value = value * out->rescale_slope + out->rescale_intercept;
    out->pixels[i] = static_cast<float>(value);
  }
  return ok_status();
}

// Pixel bytes via DCMTK, after decompressing in place to explicit VR little endian.
Status decode_with_dcmtk(const std::string& path, DcmDataset* ds, E_TransferSyntax original,
                         const PixelLayout& layout, const ReadOptions& options, DicomPixels* out) {
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
  return convert_pixels(path, bytes, element->getLength(), layout, options, out);
}

// JPEG 2000: DCMTK's free codecs lack it, GDCM (OpenJPEG) decodes it.
Status decode_with_gdcm(const std::string& path, PixelLayout layout, const ReadOptions& options,
                        DicomPixels* out) {
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
  if (pf.GetSamplesPerPixel() != 1) {
    return unsupported(path + ": JPEG 2000 with " + std::to_string(pf.GetSamplesPerPixel()) +
                       " samples per pixel (only greyscale is read)");
  }
  std::vector<char> buffer(image.GetBufferLength());
  if (buffer.empty() || !image.GetBuffer(buffer.data())) {
    return corrupt(path + ": JPEG 2000 pixel data cannot be decoded");
  }
  return convert_pixels(path, reinterpret_cast<const uint8_t*>(buffer.data()), buffer.size(), layout, options,
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
  FEDRAD_RETURN_IF_ERROR(read_attributes(path, ds, &out, &layout));
  if (out.transfer_syntax == kJpeg2000Lossless || out.transfer_syntax == kJpeg2000) {
    FEDRAD_RETURN_IF_ERROR(decode_with_gdcm(path, layout, options, &out));
  } else {
    FEDRAD_RETURN_IF_ERROR(decode_with_dcmtk(path, ds, original, layout, options, &out));
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
  put(DCM_StudyInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_STUDY_UID_ROOT));
  put(DCM_SeriesInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_SERIES_UID_ROOT));
  put(DCM_Modality, spec.modality);
  put(DCM_ConversionType, "WSD");
  put(DCM_PatientName, spec.patient_name);
  put(DCM_PatientID, spec.patient_id);
  put(DCM_ReferringPhysicianName, spec.referring_physician);
  put16(DCM_SamplesPerPixel, 1);
  put(DCM_PhotometricInterpretation, spec.monochrome1 ? "MONOCHROME1" : "MONOCHROME2");
  put16(DCM_Rows, spec.rows);
  put16(DCM_Columns, spec.columns);
  put16(DCM_BitsAllocated, bits_allocated);
  put16(DCM_BitsStored, spec.bits_stored);
  put16(DCM_HighBit, spec.bits_stored - 1);
  put16(DCM_PixelRepresentation, 0);
  if (spec.pixel_spacing > 0) put(DCM_PixelSpacing, format_spacing(spec.pixel_spacing));
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
  const DcmRepresentationParameter* param = nullptr;
  if (spec.encoding == Encoding::kJpegLossless) param = &jpeg_param;
  if (spec.encoding == Encoding::kJpegLsLossless) param = &jpls_param;
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
