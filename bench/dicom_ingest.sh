#!/usr/bin/env bash
# DICOM ingest throughput: fedrad (1 thread and N threads) against pydicom + numpy (1 thread) on
# the four pneumonia sites (train + val), same files, same run. Prints JSON lines and a Markdown
# table for bench/RESULTS.md.
#   bench/dicom_ingest.sh [build-dir=build-img] [repeat=3]
# pydicom and its plugins go into bench/.venv (ignored), only for this benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-img}
REPEAT=${2:-3}
DATA=${FEDRAD_DATA:-../shared/data}
THREADS=${THREADS:-$(nproc)}

[ -d "$BUILD" ] || cmake -S . -B "$BUILD" -G Ninja >/dev/null
cmake --build "$BUILD" --target dicom_ingest_bench -j2 >/dev/null

VENV=bench/.venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  # pylibjpeg-libjpeg: JPEG lossless (site-b) and JPEG-LS (site-d); pylibjpeg-rle: RLE (site-c).
  "$VENV/bin/pip" install -q pydicom numpy pylibjpeg pylibjpeg-libjpeg pylibjpeg-rle
fi

SITES=()
for s in site-a site-b site-c site-d; do for split in train val; do SITES+=("$DATA/pneumonia/$s/$split"); done; done

py=$("$VENV/bin/python" bench/dicom_ingest_pydicom.py --repeat "$REPEAT" "${SITES[@]}")
f1=$("$BUILD/imaging/dicom_ingest_bench" --threads 1 --repeat "$REPEAT" "${SITES[@]}")
fn=$("$BUILD/imaging/dicom_ingest_bench" --threads "$THREADS" --repeat "$REPEAT" "${SITES[@]}")
echo "$py"; echo "$f1"; echo "$fn"

python3 - "$py" "$f1" "$fn" <<'PY'
import json, sys
py, f1, fn = (json.loads(a) for a in sys.argv[1:])
print()
print("| reader | threads | images | seconds | images/s | MB/s | vs pydicom |")
print("|---|---|---|---|---|---|---|")
for r in (py, f1, fn):
    print(f"| {r['tool']} | {r['threads']} | {r['images']} | {r['seconds']:.3f} | {r['images_per_s']:.0f} | "
          f"{r['mb_per_s']:.2f} | {r['images_per_s'] / py['images_per_s']:.1f}x |")
d = abs(py["checksum"] - f1["checksum"]) / max(1, py["images"] * 28 * 28)
print(f"\nchecksum (sum of all outputs): pydicom {py['checksum']:.2f}, fedrad {f1['checksum']:.2f} "
      f"(mean |difference| per pixel {d:.2e}); pydicom {py.get('pydicom')}, numpy {py.get('numpy')}")
PY
