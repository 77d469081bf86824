// libFuzzer target for the DICOM reader: bytes -> file -> read_header + read_dicom with the
// default options and with every optional stage on (colour, VOI, padding). Built and run by
// scripts/fuzz_reader.sh (clang, ASan + UBSan); not part of the CMake build or of CI.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/oflog/oflog.h>

#include "imaging/dicom.h"
#include "imaging/scan.h"

namespace {

// One file per fuzzing process, in memory-backed /dev/shm when there is one.
const std::string& scratch_path() {
  static const std::string path = [] {
    const char* dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    return std::string(dir) + "/fedrad-fuzz-" + std::to_string(getpid()) + ".dcm";
  }();
  return path;
}

}  // namespace

// DCMTK logs every oddity of a mutated file on stderr, which slows the run and hides findings.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  OFLog::configure(OFLogger::FATAL_LOG_LEVEL);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = scratch_path();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);

  using namespace fedrad::imaging;
  (void)read_header(path);
  auto plain = read_dicom(path);
  ReadOptions all;
  all.colour = ColourPolicy::kLuma;
  all.use_file_window = true;
  all.mask_padding = true;
  auto full = read_dicom(path, all);
  // Cheap invariants: a successful read holds exactly frames x rows x columns values.
  for (const auto* r : {&plain, &full}) {
    if (r->ok() && (*r)->pixels.size() != static_cast<size_t>((*r)->frames) * (*r)->rows * (*r)->columns) {
      __builtin_trap();
    }
  }
  return 0;
}
