#!/usr/bin/env bash
# Issue 4 on a GPU node: builds fedrad against PyTorch's bundled CUDA LibTorch, runs the GPU tests
# (each kernel against its CPU reference on fresh random inputs, relative error reported) and the
# GPU benchmarks, and writes a short table (bench/results/gpu/SUMMARY.md, printed at the end).
#
#   scripts/gpu/run.sh                 on a node with an NVIDIA GPU, nvcc and PyTorch (CUDA)
#
# What it needs and where it comes from:
#   - CUDA toolkit (nvcc, cuDNN, NCCL) and python3 with a CUDA PyTorch: from the node.
#   - LibTorch: PyTorch's bundled one (python3 -c 'import torch; print(torch.utils.cmake_prefix_path)').
#   - fedrad's Debian libraries (DCMTK, GDCM, ITK, ZeroMQ, libsodium, zstd, yaml-cpp, spdlog, fmt,
#     CLI11, cpp-httplib, nlohmann-json, GoogleTest, Google Benchmark): used from the node when
#     installed there; otherwise from a bundle made beforehand on a Debian machine with network by
#     scripts/gpu/bundle.sh (.gpu-deps/, unpacked here into a private prefix, never into /).
# Status: written and checked on a machine WITHOUT a GPU (the build against PyTorch 2.11's CUDA
# LibTorch was checked there; the GPU runs below have not run yet). The README says so.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${FEDRAD_GPU_BUILD:-build-gpu}
OUT=bench/results/gpu
mkdir -p "$OUT"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt" \
  || { echo "gpu: no nvidia-smi: is this a GPU node?" >&2; exit 1; }
TORCH_PREFIX=$(python3 -c 'import torch; assert torch.cuda.is_available(), "PyTorch sees no CUDA device"; print(torch.utils.cmake_prefix_path)')
echo "gpu: LibTorch from $TORCH_PREFIX ($(python3 -c 'import torch; print(torch.__version__)'))"

PREFIXES="$TORCH_PREFIX"
if [ -d .gpu-deps ] && ! pkg-config --exists libzmq 2>/dev/null; then
  DEPS=/tmp/fedrad-gpu-deps
  rm -rf "$DEPS" && mkdir -p "$DEPS"
  for f in .gpu-deps/*.deb; do dpkg -x "$f" "$DEPS"; done
  # Debian's CMake configs and .pc files name /usr; point them at the private prefix.
  grep -rlI --include='*.cmake' --include='*.pc' '/usr/' "$DEPS/usr" 2>/dev/null | xargs -r sed -i "s#\([^a-zA-Z_]\)/usr/#\1$DEPS/usr/#g"
  export PKG_CONFIG_PATH="$DEPS/usr/lib/x86_64-linux-gnu/pkgconfig:$DEPS/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}"
  export LD_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu:$DEPS/usr/lib:${LD_LIBRARY_PATH:-}"
  export CPATH="$DEPS/usr/include:${CPATH:-}"
  PREFIXES="$PREFIXES;$DEPS/usr;$DEPS/usr/lib/x86_64-linux-gnu/cmake"
  echo "gpu: libraries from the bundle in .gpu-deps ($(ls .gpu-deps/*.deb | wc -l) packages)"
fi

cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIXES" \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" -DTORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" -DFEDRAD_CUDA=ON | tee "$OUT/configure.log" | grep -E "^-- fedrad" || true
cmake --build "$BUILD" -j"$(nproc)"

echo "== GPU tests (each kernel against its CPU reference; tests labelled gpu)"
ctest --test-dir "$BUILD" -L gpu --output-on-failure --output-junit "$ROOT/$OUT/gpu_tests.xml" | tee "$OUT/gpu_tests.log"
echo "== CPU tests of the same build (CUDA LibTorch, no GPU needed by them)"
ctest --test-dir "$BUILD" -LE gpu -j"$(nproc)" --timeout 900 > "$OUT/cpu_tests.log" 2>&1 && echo "all passed" || tail -30 "$OUT/cpu_tests.log"

echo "== Preprocessing throughput (GPU vs the CPU path, fraction of the copy bandwidth)"
"$BUILD/bench/gpu_preprocess_bench" --json "$OUT/preprocess.json" | tee "$OUT/preprocess.md"

echo "== Training throughput against PyTorch eager, same GPU, same run"
NO_BUILD=1 BUILD="$BUILD" DEVICE=cuda bash bench/gpu_train.sh | tee "$OUT/train.md"

echo "== A federated study with the sites on the GPU (4 sites share it)"
DATA=${FEDRAD_DATA:-../shared/data}/pneumonia
if [ -d "$DATA" ]; then
  sed -E -e 's/^train: \{/train: {device: cuda, amp: true, /' -e 's#tcp://127.0.0.1:[0-9]+#tcp://127.0.0.1:5599#' \
    configs/pneumonia.yaml > "$OUT/pneumonia-gpu.yaml"
  t0=$SECONDS
  "$BUILD/apps/fedrad" simulate --config "$OUT/pneumonia-gpu.yaml" --data "$DATA" --out "$OUT/pneumonia-gpu" \
    > "$OUT/study.log" 2>&1 || { tail -20 "$OUT/study.log"; exit 1; }
  wall=$((SECONDS - t0))
  "$BUILD/apps/fedrad" -q evaluate --model "$OUT/pneumonia-gpu/global.pt" $(for s in site-a site-b site-c site-d; do echo --data "$DATA/$s/val"; done) \
    > "$OUT/study.eval.json"
  STUDY="$(python3 -c "import json;print(round(json.load(open('$OUT/study.eval.json'))['auc'],4))") AUC (pooled val of the 4 sites), ${wall} s wall, config $OUT/pneumonia-gpu.yaml"
else
  STUDY="not run: no $DATA on this node (set FEDRAD_DATA)"
fi

{
  echo "# GPU run $(date -u +%F' '%H:%M) UTC, fedrad $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "Device: $(cat "$OUT/device.txt"); LibTorch $(python3 -c 'import torch; print(torch.__version__)')"
  echo
  echo "## GPU tests"; grep -E "tests passed|tests failed" "$OUT/gpu_tests.log" || true
  echo; echo "## Preprocessing"; cat "$OUT/preprocess.md"
  echo; echo "## Training throughput"; cat "$OUT/train.md"
  echo; echo "## Federated study on the GPU"; echo "$STUDY"
} > "$OUT/SUMMARY.md"
cat "$OUT/SUMMARY.md"
