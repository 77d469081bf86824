#!/usr/bin/env bash
# Issue 2's benchmark: on ../shared/data/pneumonia, with each site's val split as its test,
# federated (4 sites, FedAvg) vs centralised (the union of the sites' data) vs each site alone.
# Every model is evaluated on the pooled val splits of all four sites and on each one.
# Writes bench/results/pneumonia/*.json and the "Federated pneumonia study" section of
# bench/RESULTS.md.
#   bench/pneumonia_study.sh [CONFIG]         (default configs/pneumonia.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/pneumonia.yaml}
DATA=${FEDRAD_DATA:-../shared/data}/pneumonia
OUT=${FEDRAD_BENCH_OUT:-out/bench/pneumonia}
RESULTS=bench/results/pneumonia
SITES=(site-a site-b site-c site-d)
[ -n "${FEDRAD_NO_BUILD:-}" ] || bash scripts/build.sh >/dev/null
FEDRAD=${FEDRAD_BUILD_DIR:-build}/apps/fedrad
rm -rf "$OUT" && mkdir -p "$OUT" "$RESULTS"
VALS=()
for s in "${SITES[@]}"; do VALS+=(--data "$DATA/$s/val"); done

timed() {  # timed NAME CMD...: runs CMD, records its wall time in $OUT/NAME.time
  local name=$1; shift
  local t0; t0=$(date +%s%N)
  "$@"
  local t1; t1=$(date +%s%N)
  printf '%d.%03d\n' $(((t1 - t0) / 1000000000)) $(((t1 - t0) / 1000000 % 1000)) > "$OUT/$name.time"
}

echo "== federated (FedAvg, ${#SITES[@]} sites)"
timed federated "$FEDRAD" -q simulate --config "$CONFIG" --data "$DATA" --out "$OUT/federated"
"$FEDRAD" -q evaluate --model "$OUT/federated/global.pt" "${VALS[@]}" > "$OUT/federated.eval.json"

echo "== centralised (union of the sites' train splits)"
timed centralised "$FEDRAD" -q train --config "$CONFIG" --data "$DATA" --out "$OUT/centralised"
"$FEDRAD" -q evaluate --model "$OUT/centralised/model.pt" "${VALS[@]}" > "$OUT/centralised.eval.json"

for s in "${SITES[@]}"; do
  echo "== $s alone"
  timed "$s" "$FEDRAD" -q train --config "$CONFIG" --data "$DATA" --site "$s" --out "$OUT/$s"
  "$FEDRAD" -q evaluate --model "$OUT/$s/model.pt" "${VALS[@]}" > "$OUT/$s.eval.json"
done

python3 bench/write_pneumonia_results.py "$OUT" "$RESULTS" bench/RESULTS.md "$CONFIG" "${SITES[@]}"
