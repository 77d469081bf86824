#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs `fedrad demo`, which
# writes synthetic chest X-ray DICOM files for three hospitals and runs a short federated study.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BUILD_DIR=${FEDRAD_BUILD_DIR:-build}
exec "$BUILD_DIR/apps/fedrad" demo --out "${1:-out/demo}"
