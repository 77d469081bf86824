#!/usr/bin/env bash
# Issue 2's benchmark: on ../shared/data/pneumonia, with each site's val split as its test,
# federated (4 sites, FedAvg) vs centralised (the union of the sites' data) vs each site alone.
# Every model is evaluated on the pooled val splits of all four sites and on each one.
# Writes bench/results/pneumonia/*.json and the "Federated pneumonia study" section of
# bench/RESULTS.md.
# Each model is trained once per seed (SEEDS, default "42 43 44": the config's seed replaced), and
# the section reports the median over the seeds beside each seed's figure.
#   bench/pneumonia_study.sh [CONFIG]         (default configs/pneumonia.yaml)
#   SEEDS="42" bench/pneumonia_study.sh       (one seed: about a third of the time)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/pneumonia.yaml}
DATA=${FEDRAD_DATA:-../shared/data}/pneumonia
OUT=${FEDRAD_BENCH_OUT:-out/bench/pneumonia}
RESULTS=bench/results/pneumonia
SITES=(site-a site-b site-c site-d)
[ -n "${FEDRAD_NO_BUILD:-}" ] || bash scripts/build.sh >/dev/null
FEDRAD=${FEDRAD_BUILD_DIR:-build}/apps/fedrad
SEEDS=${SEEDS:-42 43 44}
rm -rf "$OUT" && mkdir -p "$OUT" "$RESULTS"
VALS=()
for s in "${SITES[@]}"; do VALS+=(--data "$DATA/$s/val"); done

source bench/lib.sh  # timed

for seed in $SEEDS; do
  D="$OUT/seed-$seed"
  mkdir -p "$D"
  # FEDRAD_PORT: another coordinator port, when something else on this machine uses the config's.
  sed -E -e "s/^seed: .*/seed: $seed/" ${FEDRAD_PORT:+-e "s#tcp://127.0.0.1:[0-9]+#tcp://127.0.0.1:$FEDRAD_PORT#"} \
    "$CONFIG" > "$D/config.yaml"
  grep -q "^seed: $seed" "$D/config.yaml" || { echo "no top-level 'seed:' line in $CONFIG" >&2; exit 1; }

  echo "== seed $seed: federated (FedAvg, ${#SITES[@]} sites)"
  timed "$D/federated.time" "$FEDRAD" -q simulate --config "$D/config.yaml" --data "$DATA" --out "$D/federated"
  "$FEDRAD" -q evaluate --model "$D/federated/global.pt" "${VALS[@]}" > "$D/federated.eval.json"

  echo "== seed $seed: centralised (union of the sites' train splits)"
  timed "$D/centralised.time" "$FEDRAD" -q train --config "$D/config.yaml" --data "$DATA" --out "$D/centralised"
  "$FEDRAD" -q evaluate --model "$D/centralised/model.pt" "${VALS[@]}" > "$D/centralised.eval.json"

  for s in "${SITES[@]}"; do
    echo "== seed $seed: $s alone"
    timed "$D/$s.time" "$FEDRAD" -q train --config "$D/config.yaml" --data "$DATA" --site "$s" --out "$D/$s"
    "$FEDRAD" -q evaluate --model "$D/$s/model.pt" "${VALS[@]}" > "$D/$s.eval.json"
  done
done

python3 bench/write_pneumonia_results.py "$OUT" "$RESULTS" bench/RESULTS.md "$CONFIG" "${SITES[@]}"
