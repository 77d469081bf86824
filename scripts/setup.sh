#!/usr/bin/env bash
# Installs everything fedrad needs to build, test and run, from Debian's packages.
# Idempotent and non-interactive: safe to run again; it only installs what is missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libtorch-dev                      # LibTorch 1.13 (CPU) for models and training
  libdcmtk-dev                      # DICOM reading and writing, JPEG/JPEG-LS/RLE codecs
  libgdcm-dev libgdcm-tools         # JPEG 2000 through GDCM/OpenJPEG
  libinsighttoolkit5-dev            # series to volume, NIfTI
  libzmq3-dev cppzmq-dev            # federation transport
  libsodium-dev                     # key agreement, hashing
  libzstd-dev                       # entropy stage of update compression
  libyaml-cpp-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev          # scripts/fuzz_reader.sh: libFuzzer, ASan, UBSan
  python3 python3-venv python3-torch python3-numpy   # only to check that PyTorch loads our models
  chromium                          # tests/apps/report_test.cpp renders report.html headless
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${#missing[@]} package(s): ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi
