#!/usr/bin/env bash
# DICOM ingest throughput: fedrad (1 thread and N threads) against pydicom + numpy (1 thread) on
# the four pneumonia sites (train + val), same files, same run; then ingest time against the
# number of files (the list cycled to FILES_LIST; pydicom up to PYDICOM_MAX files). Prints JSON
# lines and Markdown tables, writes bench/results/dicom_ingest/ and the "DICOM ingest against the
# number of files" section of bench/RESULTS.md.
#   bench/dicom_ingest.sh [build-dir=build, or $FEDRAD_BUILD_DIR] [repeat=3]
#   FILES_LIST="100 1000" PYDICOM_MAX=1000 bench/dicom_ingest.sh build 1
# pydicom and its plugins go into bench/.venv (ignored), only for this benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-${FEDRAD_BUILD_DIR:-build}}
REPEAT=${2:-3}
DATA=${FEDRAD_DATA:-../shared/data}
THREADS=${THREADS:-$(nproc)}
FILES_LIST=${FILES_LIST:-"100 300 1000 3000 4976 10000 20000"}
PYDICOM_MAX=${PYDICOM_MAX:-4976}
RES=bench/results/dicom_ingest
OUT=${OUT:-/tmp/fedrad-ingest}

if [ -z "${NO_BUILD:-}" ]; then
  [ -d "$BUILD" ] || cmake -S . -B "$BUILD" -G Ninja >/dev/null
  cmake --build "$BUILD" --target dicom_ingest_bench -j2 >/dev/null
fi

VENV=bench/.venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  # pylibjpeg-libjpeg: JPEG lossless (site-b) and JPEG-LS (site-d); pylibjpeg-rle: RLE (site-c).
  "$VENV/bin/pip" install -q pydicom numpy pylibjpeg pylibjpeg-libjpeg pylibjpeg-rle
fi

SITES=()
for s in site-a site-b site-c site-d; do for split in train val; do SITES+=("$DATA/pneumonia/$s/$split"); done; done
mkdir -p "$RES"
if [ -z "${WRITE_ONLY:-}" ]; then  # WRITE_ONLY=1: only rewrite the results from an earlier run's $OUT
rm -rf "$OUT" && mkdir -p "$OUT"
date -u +%Y-%m-%dT%H:%M:%SZ > "$OUT/started"

# run FILES TOOL THREADS: one JSON line with the load average added, appended to $OUT/ingest.jsonl
run() {
  local n=$1 tool=$2 th=$3 load line
  load=$(cut -d' ' -f1 /proc/loadavg)
  local files=(); [ "$n" = all ] || files=(--files "$n")
  if [ "$tool" = pydicom ]; then
    line=$("$VENV/bin/python" bench/dicom_ingest_pydicom.py --repeat "$REPEAT" "${files[@]}" "${SITES[@]}")
  else
    line=$("$BUILD/imaging/dicom_ingest_bench" --threads "$th" --repeat "$REPEAT" "${files[@]}" "${SITES[@]}")
  fi
  echo "${line%\}}, \"files_arg\": \"$n\", \"load_before\": $load, \"load_after\": $(cut -d' ' -f1 /proc/loadavg)}" | tee -a "$OUT/ingest.jsonl"
}

run all pydicom 1
run all fedrad 1
run all fedrad "$THREADS"
for n in $FILES_LIST; do
  if [ "$n" -le "$PYDICOM_MAX" ]; then run "$n" pydicom 1; fi
  run "$n" fedrad 1
  run "$n" fedrad "$THREADS"
done
fi

python3 - "$OUT" "$RES" bench/RESULTS.md "$REPEAT" <<'PY'
import csv, json, os, sys
sys.path.insert(0, "bench")
import machine
out, res, md, repeat = sys.argv[1:]
rows = [json.loads(l) for l in open(f"{out}/ingest.jsonl") if l.strip()]
meta = machine.describe()
meta["started"] = open(f"{out}/started").read().strip()
json.dump({"meta": meta, "repeat": int(repeat), "runs": rows}, open(f"{res}/ingest.json", "w"), indent=1)
keys = ["tool", "threads", "files_arg", "images", "failures", "bytes", "seconds", "images_per_s", "mb_per_s", "checksum",
        "load_before", "load_after"]
with open(f"{res}/ingest.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
full = [r for r in rows if r["files_arg"] == "all"]
py = next(r for r in full if r["tool"] == "pydicom")
f1 = next(r for r in full if r["tool"] == "fedrad" and r["threads"] == 1)
lines = ["## DICOM ingest against the number of files (issues 3 and 10)", "",
         f"`bench/dicom_ingest.sh` (best of {repeat} passes, files in the page cache), started {meta['started']}, commit "
         f"`{meta['commit']}`{' + uncommitted working tree' if meta['dirty'] else ''}; {meta['machine']}. **Shared "
         "machine**: other builds ran at the same time (1-minute load average beside each row). Decode + preprocess "
         "(bilinear to 28x28, per-image min-max to [-1, 1]) of the four pneumonia sites' labelled files (explicit VR "
         f"LE / JPEG lossless SV1 / RLE / JPEG-LS); pydicom {py.get('pydicom')} + numpy {py.get('numpy')} with "
         "pylibjpeg, single-threaded, vs fedrad (`read_dicom` + the CPU preprocessing). Raw: `bench/results/dicom_ingest/`.",
         "", "| reader | threads | images | seconds | images/s | MB/s | vs pydicom | load |", "|---|---:|---:|---:|---:|---:|---:|---|"]
for r in full:
    lines.append(f"| {r['tool']} | {r['threads']} | {r['images']} | {r['seconds']:.3f} | {r['images_per_s']:.0f} | "
                 f"{r['mb_per_s']:.2f} | {r['images_per_s'] / py['images_per_s']:.1f}x | {r['load_before']} |")
d = abs(py["checksum"] - f1["checksum"]) / max(1, py["images"] * 28 * 28)
lines += ["", f"Outputs agree: checksum (sum of all outputs) pydicom {py['checksum']:.2f}, fedrad {f1['checksum']:.2f} "
          f"(mean |difference| per pixel {d:.1e}).", "",
          "Ingest time against the number of files (the file list cycled to N; seconds, images/s in brackets):", "",
          "| files | pydicom, 1 thread | fedrad, 1 thread | fedrad, %s threads | fedrad 1 thread vs pydicom | load |" % next(
              (r["threads"] for r in rows if r["tool"] == "fedrad" and r["threads"] != 1), "N"),
          "|---:|---:|---:|---:|---:|---|"]
curve = {}
for r in rows:
    if r["files_arg"] != "all":
        curve.setdefault(int(r["files_arg"]), {})[(r["tool"], r["threads"])] = r
for n in sorted(curve):
    c = curve[n]
    p = c.get(("pydicom", 1))
    a = c.get(("fedrad", 1))
    b = next((v for (t, th), v in c.items() if t == "fedrad" and th != 1), None)
    cell = lambda r: f"{r['seconds']:.3f} ({r['images_per_s']:.0f})" if r else "-"
    ratio = f"{a['images_per_s'] / p['images_per_s']:.1f}x" if a and p else "-"
    loads = ", ".join(str(r["load_before"]) for r in (p, a, b) if r)
    lines.append(f"| {n} | {cell(p)} | {cell(a)} | {cell(b)} | {ratio} | {loads} |")
ns = sorted(n for n in curve if ("fedrad", 1) in curve[n])
if len(ns) >= 2:
    a, b = curve[ns[-2]][("fedrad", 1)], curve[ns[-1]][("fedrad", 1)]
    lines += ["", f"The list is in site order (site-a's uncompressed 8-bit files first, then site-b's JPEG lossless, "
              f"site-c's RLE and site-d's JPEG-LS), so the first ~1800 files are the cheapest to decode and images/s "
              f"falls to the mixed rate once the compressed sites come in; past the 4976 files the list repeats. "
              f"From {ns[-2]} to {ns[-1]} files fedrad's time grows x{b['seconds'] / a['seconds']:.2f} for "
              f"x{ns[-1] / ns[-2]:.2f} the files: linear, a fixed cost per file (opening and parsing it dominates for "
              "images this small). With the machine's 2 cores already busy (load above 2), a second thread gains "
              "little or nothing here."]
machine.replace_section(md, "dicom-ingest", "\n".join(lines) + "\n")
print("\n".join(lines))
PY
