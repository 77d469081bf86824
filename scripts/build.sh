#!/usr/bin/env bash
# Installs what is missing (scripts/setup.sh) and builds fedrad into build/.
# FEDRAD_BUILD_DIR and FEDRAD_CMAKE_ARGS override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${FEDRAD_BUILD_DIR:-build}
# shellcheck disable=SC2086
cmake -S . -B "$BUILD_DIR" -G Ninja ${FEDRAD_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j"$(nproc)"
