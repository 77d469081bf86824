#!/usr/bin/env bash
# Every benchmark, one command: builds what they need (one build folder), runs each bench/*.sh and
# regenerates bench/RESULTS.md (each benchmark rewrites its own section; the machine, date and
# commit are in each section and in the header written here). Raw results: bench/results/<name>/.
#
#   bench/run_all.sh                       # everything (about 1.5 h on 2 idle cores)
#   ONLY="peers scaling ingest" bench/run_all.sh
#   BUILD=build-bench JOBS=4 bench/run_all.sh
#   NO_BUILD=1 BUILD=build ONLY=privacy bench/run_all.sh    (use an existing build as it is)
#
# Benchmarks (names for ONLY): peers (fedrad vs Flower vs PyTorch), scaling (coordinator against
# sites and model size), ingest (DICOM decoding against pydicom, and against the number of files),
# pneumonia (federated vs centralised vs single sites), compression (update codecs), privacy
# (secure aggregation, client DP), segmentation (bench/segmentation.sh, when present).
# Needs: Debian's build dependencies (scripts/setup.sh), python3-torch for the peers, and network
# access to PyPI the first time (Flower and pydicom go into virtual environments under bench/).
set -uo pipefail
cd "$(dirname "$0")/.."
export BUILD=${BUILD:-build-bench}
JOBS=${JOBS:-2}
ONLY=${ONLY:-"peers scaling ingest pneumonia compression privacy segmentation"}
LOGS=${LOGS:-out/bench-logs}
mkdir -p "$LOGS" bench/results

want() { [[ " $ONLY " == *" $1 "* ]]; }

if [ -z "${NO_BUILD:-}" ]; then  # NO_BUILD=1: use what $BUILD already holds
  echo "== build ($BUILD)" >&2
  cmake -S . -B "$BUILD" -G Ninja >/dev/null || exit 1
  targets=(fedrad secagg_bench coordinator_scaling train_throughput dicom_ingest_bench)
  # Targets that exist only in some trees: Google Benchmark's codec_bench, segmentation's brats_split_bench.
  all_targets=$(ninja -C "$BUILD" -t targets all 2>/dev/null | sed 's/: .*//')
  for t in codec_bench brats_split_bench; do grep -qx "$t" <<< "$all_targets" && targets+=("$t"); done
  cmake --build "$BUILD" -j"$JOBS" --target "${targets[@]}" || exit 1
fi

touch "$LOGS/status.tsv"  # one line per benchmark run: name, status, seconds, date (the header shows the latest)
FAILED=0
run() {  # run NAME CMD...: logs to $LOGS/NAME.log, records the status and the time taken
  local name=$1; shift
  want "$name" || return 0
  echo "== $name: $*  (log: $LOGS/$name.log)" >&2
  local t0=$SECONDS st=ok
  "$@" > "$LOGS/$name.log" 2>&1 || { st="FAILED (exit $?)"; FAILED=1; }
  printf '%s\t%s\t%s\t%s\n' "$name" "$st" $((SECONDS - t0)) "$(date -u '+%Y-%m-%d %H:%M UTC')" >> "$LOGS/status.tsv"
  echo "   $name: $st in $((SECONDS - t0)) s" >&2
}

run peers env BUILD="$BUILD" NO_BUILD=1 bench/peers.sh
run scaling env BUILD="$BUILD" NO_BUILD=1 bench/scaling.sh
run ingest env NO_BUILD=1 bench/dicom_ingest.sh "$BUILD" 3
run pneumonia env FEDRAD_NO_BUILD=1 FEDRAD_BUILD_DIR="$BUILD" bench/pneumonia_study.sh
run compression env BUILD="$BUILD" JOBS="$JOBS" bench/compression.sh
run privacy env BUILD="$BUILD" JOBS="$JOBS" bench/privacy.sh
if [ -x bench/segmentation.sh ] || [ -f bench/segmentation.sh ]; then
  run segmentation env FEDRAD_BUILD_DIR="$BUILD" FEDRAD_NO_BUILD=1 bash bench/segmentation.sh
fi

# The header of RESULTS.md: where every section comes from and how this run went.
python3 - "$LOGS" <<'PY'
import re, sys
sys.path.insert(0, "bench")
import machine
logs = sys.argv[1]
only = "peers scaling ingest pneumonia compression privacy segmentation"
status, taken, when = {}, {}, {}
for line in open(f"{logs}/status.tsv"):
    f = line.rstrip("\n").split("\t")
    if len(f) == 4:
        status[f[0]], taken[f[0]], when[f[0]] = f[1], f[2], f[3]
m = machine.describe()
lines = ["# Benchmark results", "",
         f"Produced by `bench/run_all.sh` (last run {m['date']}, commit `{m['commit']}`"
         f"{' + uncommitted working tree' if m['dirty'] else ''}) on {m['machine']}. Each section below names the "
         "script that wrote it, its own date, commit and machine, and where its raw results are "
         "(`bench/results/<name>/`). The machine is shared with other engineers' builds: absolute timings are "
         "noisy, and side-by-side comparisons run their contenders alternately in the same run.", "",
         "| benchmark | status of its latest run here | when | seconds | log |", "|---|---|---|---:|---|"]
for name in only.split():
    if name in status:
        lines.append(f"| {name} | {status[name]} | {when[name]} | {taken[name]} | `{logs}/{name}.log` |")
    else:
        lines.append(f"| {name} | not run by run_all.sh yet (or its script is absent): its section, if any, is from an earlier run of its own script | - | - | - |")
header = "\n".join(lines) + "\n"
path = "bench/RESULTS.md"
text = open(path).read()
begin, end = "<!-- run-all:begin -->", "<!-- run-all:end -->"
block = f"{begin}\n{header.rstrip()}\n{end}"
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text = block + "\n\n" + text
open(path, "w").write(text)
print(header)
PY
exit $FAILED
