#!/usr/bin/env bash
# Issue 5's benchmark: federated vs centralised segmentation on synthetic 3-site brain MRI, and
# one real BraTS case split in two (train on one half of the tumour, segment the other), with
# inference time per volume. Writes bench/results/segmentation/*.json and the "Tumour
# segmentation" section of bench/RESULTS.md.
#   bench/segmentation.sh            (FEDRAD_BUILD_DIR=build FEDRAD_NO_BUILD=1 to reuse a build)
# The federated / centralised ratio over several seeds and budgets: bench/segmentation_seeds.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${FEDRAD_BENCH_OUT:-out/bench/segmentation}
RESULTS=bench/results/segmentation
BRATS=${FEDRAD_DATA:-../shared/data}/brats-case
BUILD=${FEDRAD_BUILD_DIR:-build}
[ -n "${FEDRAD_NO_BUILD:-}" ] || { bash scripts/build.sh >/dev/null; cmake --build "$BUILD" --target brats_split_bench >/dev/null; }
FEDRAD=$BUILD/apps/fedrad
[ -n "${SEG_SKIP_FEDERATED:-}" ] || rm -rf "$OUT"
mkdir -p "$OUT" "$RESULTS"
uptime > "$OUT/load_before.txt"

source bench/lib.sh  # timed

# SEG_THREADS=1 pins the baselines to one thread: on a shared, oversubscribed CPU OpenMP's
# multi-threaded kernels lose more than they gain (simulate already gives each site its share).
CONFIG=configs/segmentation.yaml
BRATS_CONFIG=configs/brats-half.yaml
if [ -n "${SEG_THREADS:-}" ]; then
  sed "s/^train: {/train: {threads: $SEG_THREADS, /" configs/segmentation.yaml > "$OUT/segmentation.yaml"
  sed "s/^train: {/train: {threads: $SEG_THREADS, /" configs/brats-half.yaml > "$OUT/brats-half.yaml"
  CONFIG=$OUT/segmentation.yaml
  BRATS_CONFIG=$OUT/brats-half.yaml
fi
SITES=(site-1 site-2 site-3)
VALS=()
for s in "${SITES[@]}"; do VALS+=(--data "$OUT/data/$s/val"); done
FEDERATED=
if [ -z "${SEG_SKIP_FEDERATED:-}" ]; then
echo "== synthetic data: ${#SITES[@]} sites"
"$FEDRAD" -q synth-seg --out "$OUT/data" --train "${SEG_TRAIN:-8}" --val "${SEG_VAL:-3}"
echo "== federated ($(sed -n 's/^ *strategy: *//p' configs/segmentation.yaml)), in the background"
( timed "$OUT/federated.time" "$FEDRAD" -q simulate --config configs/segmentation.yaml --data "$OUT/data" --out "$OUT/federated"
  "$FEDRAD" -q evaluate --model "$OUT/federated/global.pt" "${VALS[@]}" > "$OUT/federated.eval.json" ) &
FEDERATED=$!
fi

# The centralised baseline and the BraTS model train side by side (one thread each with SEG_THREADS=1),
# and beside the federated study unless SEG_SEQUENTIAL is set: the runs are independent, and on a
# small shared machine running them together saves wall time (each one's own time is then longer).
[ -z "${SEG_SEQUENTIAL:-}" ] || [ -z "$FEDERATED" ] || { wait $FEDERATED; FEDERATED=; }
echo "== centralised (union of the sites' train splits) and, beside it, the BraTS half-case model"
"$BUILD/imaging/brats_split_bench" "$BRATS" "$OUT/brats-data" > "$OUT/brats_split.json"
timed "$OUT/centralised.time" "$FEDRAD" -q train --config "$CONFIG" --data "$OUT/data" --out "$OUT/centralised" &
CENTRAL=$!
timed "$OUT/brats_train.time" "$FEDRAD" -q train --config "$BRATS_CONFIG" --data "$OUT/brats-data" --site brats \
  --out "$OUT/brats-half"
wait $CENTRAL
[ -z "$FEDERATED" ] || wait $FEDERATED
"$FEDRAD" -q evaluate --model "$OUT/centralised/model.pt" "${VALS[@]}" > "$OUT/centralised.eval.json"
"$FEDRAD" -q evaluate --model "$OUT/brats-half/model.pt" --data "$OUT/brats-data/brats/val" > "$OUT/brats.eval.json"
echo "== inference on the whole 240x240x155 volume"
timed "$OUT/brats_predict.time" "$FEDRAD" -q predict --model "$OUT/brats-half/model.pt" "$BRATS/t1n.nii.gz" "$BRATS/t1c.nii.gz" \
  "$BRATS/t2w.nii.gz" "$BRATS/t2f.nii.gz" --out "$OUT/brats-predicted.nii.gz"
uptime > "$OUT/load_after.txt"

python3 bench/write_segmentation_results.py "$OUT" "$RESULTS" bench/RESULTS.md
