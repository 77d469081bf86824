#!/usr/bin/env bash
# Issue 5, the federated / centralised Dice ratio over several seeds and budgets. For each budget
# (SEG_ROUNDS: rounds of the federated study) and each seed (SEG_SEEDS: the config's `seed`, i.e.
# initialisation and patch sampling; the data stay the same) it runs, from configs/segmentation.yaml
# with only `seed` and `rounds` changed:
#   - the federated study (`fedrad simulate`);
#   - the centralised baseline (`fedrad train`, one thread) at two budgets:
#       equal optimiser steps: as many steps as one site takes, i.e. what the sites' parallel training
#         costs in wall time (epochs = rounds x local_epochs / sites, the sites being of equal size);
#       equal sample passes: as many patches per training case as the federation draws in all
#         (epochs = rounds x local_epochs, `fedrad train`'s default).
# Every final model is scored on the pooled validation splits as bench/segmentation.sh does, and
# bench/write_segmentation_seeds.py writes bench/results/segmentation/seeds.json and prints the table.
#   bench/segmentation_seeds.sh                       (FEDRAD=path/to/fedrad to use another binary)
#   SEG_SEEDS="42 43" SEG_ROUNDS="40" SEG_BUDGETS="steps" bench/segmentation_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${FEDRAD_BENCH_OUT:-out/bench/segmentation-seeds}
FEDRAD=${FEDRAD:-${FEDRAD_BUILD_DIR:-build}/apps/fedrad}
CONFIG=configs/segmentation.yaml
SEEDS=${SEG_SEEDS:-42 43 44 45}
ROUNDS=${SEG_ROUNDS:-40}
CEN_BUDGETS=${SEG_BUDGETS:-steps passes}
PORT=${SEG_PORT:-5791}  # not the config's 5555, which other studies on the machine may be using
LOCAL_EPOCHS=$(sed -n 's/.*local_epochs: *\([0-9]*\).*/\1/p' "$CONFIG" | head -1)
NSITES=$(sed -n 's/^sites: *\[\(.*\)\]/\1/p' "$CONFIG" | tr ',' '\n' | grep -c .)
[ -n "$LOCAL_EPOCHS" ] && [ "$NSITES" -gt 0 ] || { echo "cannot read train.local_epochs and sites from $CONFIG" >&2; exit 1; }
mkdir -p "$OUT"
[ -d "$OUT/data" ] || "$FEDRAD" -q synth-seg --out "$OUT/data" --train "${SEG_TRAIN:-8}" --val "${SEG_VAL:-3}"
VALS=()
for s in site-1 site-2 site-3; do VALS+=(--data "$OUT/data/$s/val"); done

source bench/lib.sh  # timed, to_file

for rounds in $ROUNDS; do
  for seed in $SEEDS; do
    run="$OUT/r$rounds-s$seed"
    mkdir -p "$run"
    sed -e "s/^seed: .*/seed: $seed/" -e "s/^rounds: .*/rounds: $rounds/" \
      -e "s#^\( *address:\).*#\1 tcp://127.0.0.1:$PORT#" "$CONFIG" > "$run/fed.yaml"
    uptime > "$run/load_before.txt"
    if [ ! -f "$run/fed.eval.json" ]; then
      echo "== $run: federated, $rounds rounds x $LOCAL_EPOCHS local epochs, seed $seed"
      ( timed "$run/fed.time" "$FEDRAD" -q simulate --config "$run/fed.yaml" --data "$OUT/data" --out "$run/fed" > "$run/fed.log" 2>&1
        to_file "$run/fed.eval.json" "$FEDRAD" -q evaluate --model "$run/fed/global.pt" "${VALS[@]}" ) &
    fi
    for budget in $CEN_BUDGETS; do
      case $budget in
        steps) epochs=$((rounds * LOCAL_EPOCHS / NSITES)) ;;
        passes) epochs=$((rounds * LOCAL_EPOCHS)) ;;
        *) echo "SEG_BUDGETS: '$budget' is neither steps nor passes" >&2; exit 1 ;;
      esac
      [ ! -f "$run/cen-e$epochs.eval.json" ] || continue
      echo "== $run: centralised, $epochs epochs (equal $budget), seed $seed"
      sed -e "s/^train: {/train: {threads: 1, epochs: $epochs, /" "$run/fed.yaml" > "$run/cen-e$epochs.yaml"
      echo "$budget" > "$run/cen-e$epochs.budget"
      timed "$run/cen-e$epochs.time" "$FEDRAD" -q train --config "$run/cen-e$epochs.yaml" --data "$OUT/data" \
        --out "$run/cen-e$epochs" > "$run/cen-e$epochs.log" 2>&1
      to_file "$run/cen-e$epochs.eval.json" "$FEDRAD" -q evaluate --model "$run/cen-e$epochs/model.pt" "${VALS[@]}"
    done
    wait
    uptime > "$run/load_after.txt"
  done
done
python3 bench/write_segmentation_seeds.py "$OUT" bench/results/segmentation/seeds.json
