#!/usr/bin/env bash
# Issue 2's benchmark: on ../shared/data/pneumonia, with each site's val split as its test,
# federated (4 sites, FedAvg) vs centralised (the union of the sites' data) vs each site alone.
# Every model is evaluated on the pooled val splits of all four sites and on each one.
# Writes bench/results/pneumonia/*.json and the "Federated pneumonia study" section of
# bench/RESULTS.md.
# Each model is trained once per seed (SEEDS, default "42 43 44 45 46": the config's seed replaced),
# and the section reports the median over the seeds beside each seed's figure. The centralised and
# single-site baselines train for rounds x local epochs (as many sample passes as the federation);
# each single site is also trained for SITE_EPOCHS (default: the config's rounds, one epoch per
# round), since a small site alone can do better with fewer passes than it does with as many.
#   bench/pneumonia_study.sh [CONFIG]         (default configs/pneumonia-study.yaml; about 9 minutes
#                                             per seed on 2 idle cores)
#   SEEDS="42" bench/pneumonia_study.sh       (one seed)
#   SITE_EPOCHS="" bench/pneumonia_study.sh   (single sites at rounds x local epochs only)
#   RESUME=1 bench/pneumonia_study.sh         (goes on with a stopped run: a model whose evaluation is
#                                             on file under OUT is kept if its seed folder was made
#                                             from the same CONFIG; without RESUME all start afresh)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/pneumonia-study.yaml}
DATA=${FEDRAD_DATA:-../shared/data}/pneumonia
OUT=${FEDRAD_BENCH_OUT:-out/bench/pneumonia}
RESULTS=bench/results/pneumonia
SITES=(site-a site-b site-c site-d)
[ -n "${FEDRAD_NO_BUILD:-}" ] || bash scripts/build.sh >/dev/null
FEDRAD=${FEDRAD_BUILD_DIR:-build}/apps/fedrad
SEEDS=${SEEDS:-42 43 44 45 46}
# The config's rounds and its baselines' budget (train.epochs, else rounds x local epochs); a bad
# config stops the script here, the error naming the key.
SHOWN=$("$FEDRAD" config show --config "$CONFIG")
read -r ROUNDS BASE_EPOCHS < <(awk '/^rounds:/ {r = $2} /^  local_epochs:/ {l = $2} /^  epochs:/ {e = $2}
  END {print r, (e > 0 ? e : r * l)}' <<< "$SHOWN")
SITE_EPOCHS=${SITE_EPOCHS-$ROUNDS}
[ -n "${RESUME:-}" ] || rm -rf "$OUT"
mkdir -p "$OUT" "$RESULTS"
# study SEED: CONFIG with its seed replaced, as each seed folder keeps it in study.yaml
study() { sed -E "s/^seed: .*/seed: $1/" "$CONFIG"; }
for D in "$OUT"/seed-*; do  # folders of another config are not mixed into this one's table
  [ -d "$D" ] || continue
  [ "$(cat "$D/study.yaml" 2>/dev/null)" = "$(study "${D##*-}")" ] || { echo "== $D: made from another config, removed"; rm -rf "$D"; }
done
VALS=()
for s in "${SITES[@]}"; do VALS+=(--data "$DATA/$s/val"); done

source bench/lib.sh  # timed, to_file
# score D NAME MODEL: pooled-val evaluation to D/NAME.eval.json
score() { to_file "$1/$2.eval.json" "$FEDRAD" -q evaluate --model "$3" "${VALS[@]}"; }

for seed in $SEEDS; do
  D="$OUT/seed-$seed"
  mkdir -p "$D"
  study "$seed" > "$D/study.yaml"
  grep -q "^seed: $seed" "$D/study.yaml" || { echo "no top-level 'seed:' line in $CONFIG" >&2; exit 1; }
  # FEDRAD_PORT: another coordinator port, when something else on this machine uses the config's.
  if [ -n "${FEDRAD_PORT:-}" ]; then
    sed -E "s#tcp://127.0.0.1:[0-9]+#tcp://127.0.0.1:$FEDRAD_PORT#" "$D/study.yaml" > "$D/config.yaml"
  else
    cp "$D/study.yaml" "$D/config.yaml"
  fi

  if [ ! -f "$D/federated.eval.json" ]; then
    echo "== seed $seed: federated (FedAvg, ${#SITES[@]} sites)"
    timed "$D/federated.time" "$FEDRAD" -q simulate --config "$D/config.yaml" --data "$DATA" --out "$D/federated"
    score "$D" federated "$D/federated/global.pt"
  fi

  if [ ! -f "$D/centralised.eval.json" ]; then
    echo "== seed $seed: centralised (union of the sites' train splits)"
    timed "$D/centralised.time" "$FEDRAD" -q train --config "$D/config.yaml" --data "$DATA" --out "$D/centralised"
    score "$D" centralised "$D/centralised/model.pt"
  fi

  for s in "${SITES[@]}"; do
    [ ! -f "$D/$s.eval.json" ] || continue
    echo "== seed $seed: $s alone"
    timed "$D/$s.time" "$FEDRAD" -q train --config "$D/config.yaml" --data "$DATA" --site "$s" --out "$D/$s"
    score "$D" "$s" "$D/$s/model.pt"
  done

  for e in $SITE_EPOCHS; do  # the same sites at another budget, as site-a-20ep and so on
    [ "$e" != "$BASE_EPOCHS" ] || continue
    for s in "${SITES[@]}"; do
      [ ! -f "$D/$s-${e}ep.eval.json" ] || continue
      echo "== seed $seed: $s alone, $e epochs"
      timed "$D/$s-${e}ep.time" "$FEDRAD" -q train --config "$D/config.yaml" --data "$DATA" --site "$s" \
        --epochs "$e" --out "$D/$s-${e}ep"
      score "$D" "$s-${e}ep" "$D/$s-${e}ep/model.pt"
    done
  done
done

python3 bench/write_pneumonia_results.py "$OUT" "$RESULTS" bench/RESULTS.md "$CONFIG" "${SITES[@]}"
