#!/usr/bin/env bash
# The README's test command: installs what is missing, builds everything, runs every test.
# Tests read real images from ../shared/data (beside the project). GPU tests (label `gpu`)
# skip with the reason where there is no device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BUILD_DIR=${FEDRAD_BUILD_DIR:-build}
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$(nproc)" --timeout 900 "$@"
