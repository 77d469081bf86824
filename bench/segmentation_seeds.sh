#!/usr/bin/env bash
# Issue 5, the federated / centralised Dice ratio over several seeds and budgets: for each budget
# (SEG_ROUNDS: rounds of the federated study = epochs of the centralised one, 2 patches per case each)
# and each seed (SEG_SEEDS: the config's `seed`, i.e. initialisation and patch sampling; the data stay
# the same), the federated study (`fedrad simulate`) and the centralised baseline (`fedrad train`, one
# thread) run side by side from configs/segmentation.yaml with only `seed` and `rounds` changed, and
# both final models are scored on the pooled validation splits as bench/segmentation.sh does. Then
# bench/write_segmentation_seeds.py writes bench/results/segmentation/seeds.json and prints the table.
#   bench/segmentation_seeds.sh                       (FEDRAD=path/to/fedrad to use another binary)
#   SEG_SEEDS="42 43 44" SEG_ROUNDS="40 80" bench/segmentation_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${FEDRAD_BENCH_OUT:-out/bench/segmentation-seeds}
FEDRAD=${FEDRAD:-${FEDRAD_BUILD_DIR:-build}/apps/fedrad}
SEEDS=${SEG_SEEDS:-42 43 44}
BUDGETS=${SEG_ROUNDS:-40}
PORT=${SEG_PORT:-5791}  # not the config's 5555, which other studies on the machine may be using
mkdir -p "$OUT"
[ -d "$OUT/data" ] || "$FEDRAD" -q synth-seg --out "$OUT/data" --train "${SEG_TRAIN:-8}" --val "${SEG_VAL:-3}"
VALS=()
for s in site-1 site-2 site-3; do VALS+=(--data "$OUT/data/$s/val"); done

timed() {  # timed DIR NAME CMD...: runs CMD (its output to DIR/NAME.log), its wall time to DIR/NAME.time
  local dir=$1 name=$2; shift 2
  local t0; t0=$(date +%s%N)
  "$@" > "$dir/$name.log" 2>&1
  local t1; t1=$(date +%s%N)
  printf '%d.%03d\n' $(((t1 - t0) / 1000000000)) $(((t1 - t0) / 1000000 % 1000)) > "$dir/$name.time"
}

for rounds in $BUDGETS; do
  for seed in $SEEDS; do
    run="$OUT/r$rounds-s$seed"
    if [ -f "$run/cen.eval.json" ] && [ -f "$run/fed.eval.json" ]; then echo "== $run: done before, kept"; continue; fi
    echo "== $run: $rounds rounds / epochs x 2 patches per case, seed $seed"
    rm -rf "$run"; mkdir -p "$run"
    sed -e "s/^seed: .*/seed: $seed/" -e "s/^rounds: .*/rounds: $rounds/" \
      -e "s#^\( *address:\).*#\1 tcp://127.0.0.1:$PORT#" configs/segmentation.yaml > "$run/fed.yaml"
    sed "s/^train: {/train: {threads: 1, /" "$run/fed.yaml" > "$run/cen.yaml"
    uptime > "$run/load_before.txt"
    ( timed "$run" fed "$FEDRAD" -q simulate --config "$run/fed.yaml" --data "$OUT/data" --out "$run/fed"
      "$FEDRAD" -q evaluate --model "$run/fed/global.pt" "${VALS[@]}" > "$run/fed.eval.json" ) &
    fed=$!
    timed "$run" cen "$FEDRAD" -q train --config "$run/cen.yaml" --data "$OUT/data" --out "$run/cen"
    "$FEDRAD" -q evaluate --model "$run/cen/model.pt" "${VALS[@]}" > "$run/cen.eval.json"
    wait $fed
    uptime > "$run/load_after.txt"
  done
done
python3 bench/write_segmentation_seeds.py "$OUT" bench/results/segmentation/seeds.json
