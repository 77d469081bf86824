#!/usr/bin/env bash
# Side by side with the frameworks people use today (issue 10):
#  1. fedrad vs Flower on the 4-site pneumonia study: the same model, data (Flower's sites read the
#     DICOM files with pydicom), preprocessing, optimiser, lr schedule, rounds and sites, each as a
#     coordinator/server process plus one process per site on this machine, over TCP through the
#     same counting relay (bench/peers/relay.py). The two alternate, REPEAT times each, so that both
#     see the same load. Per round: wall time, federation overhead (wall time minus the slowest
#     site's local training), bytes on the wire; peak memory (max RSS) of the coordinator and of
#     each site; final pooled val AUC.
#  2. Local training throughput, fedrad's training loop (bench/train_throughput) vs PyTorch eager
#     (bench/peers/torch_throughput.py), same model, batch, input size, threads.
# Writes bench/results/peers/ (raw JSON/CSV) and the "Side by side" section of bench/RESULTS.md.
#
#   bench/peers.sh                          # ROUNDS=5 REPEAT=3
#   ROUNDS=3 REPEAT=1 BUILD=build NO_BUILD=1 PARTS=study bench/peers.sh    (PARTS: fake study throughput)
#   KEEP_OUT=1 PARTS=throughput bench/peers.sh     (redo one part, keep the others' raw results)
#
# Flower (flwr, from PyPI) and pydicom go into bench/.venv-flower, a virtual environment over
# Debian's python3-torch (--system-site-packages); fedrad itself never needs Python.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-${FEDRAD_BUILD_DIR:-build}}
DATA=${DATA:-${FEDRAD_DATA:-../shared/data}/pneumonia}
ROUNDS=${ROUNDS:-5}
REPEAT=${REPEAT:-3}
OUT=${OUT:-/tmp/fedrad-peers}
STEPS=${STEPS:-20}
SITES=(site-a site-b site-c site-d)
FEDRAD=$BUILD/apps/fedrad

if [ -z "${NO_BUILD:-}" ]; then
  cmake -S . -B "$BUILD" -G Ninja >/dev/null
  cmake --build "$BUILD" --target fedrad train_throughput coordinator_scaling -j"${JOBS:-2}" >/dev/null
fi
bash bench/peers/venv.sh
PY=bench/.venv-flower/bin/python

# KEEP_OUT=1: keep an earlier run's $OUT and redo only the PARTS given (the section is written from all of it)
if [ -z "${KEEP_OUT:-}" ]; then rm -rf "$OUT"; fi
mkdir -p "$OUT"
[ -f "$OUT/started" ] || date -u +%Y-%m-%dT%H:%M:%SZ > "$OUT/started"
export OMP_NUM_THREADS=1  # the sites share the cores as `fedrad simulate` runs them: one thread each

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {  # wait_port PORT: until something listens there (30 s at most)
  for _ in $(seq 300); do
    "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2).close()" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; return 1
}
now() { date +%s.%N; }

# Each repeat runs with its own seed (42, 43, ...) in both frameworks: the initial model, the batches
# and the augmentation differ from repeat to repeat, so the spread of the final AUC is the noise.
# run_fedrad DIR SEED: `fedrad coordinator` + 4 x `fedrad site` (1 thread each), sites through the relay.
run_fedrad() {
  local d=$1 seed=$2 p r relay coord pids=() s
  mkdir -p "$d"
  p=$(free_port); r=$(free_port)
  sed -e "s/^rounds: .*/rounds: $ROUNDS/" -e "s/^seed: .*/seed: $seed/" -e "s#^  address: .*#  address: tcp://127.0.0.1:$p#" \
    -e "/^federation:/a\\  keys_dir: $d/keys" configs/pneumonia.yaml > "$d/config.yaml"
  # CurveZMQ on every socket, as in a real deployment (Flower's gRPC runs without TLS here).
  "$FEDRAD" -q keys --out "$d/keys" $(printf -- '--site %s ' "${SITES[@]}") > /dev/null
  cut -d' ' -f1-3 /proc/loadavg > "$d/load_before"
  "$PY" bench/peers/relay.py --listen "$r" --target "$p" --out "$d/relay.json" & relay=$!
  wait_port "$r"
  local t0; t0=$(now)
  /usr/bin/time -f "%M %e %U %S" -o "$d/coordinator.time" "$FEDRAD" -q coordinator --config "$d/config.yaml" --out "$d/study" > "$d/coordinator.log" 2>&1 & coord=$!
  for s in "${SITES[@]}"; do
    /usr/bin/time -f "%M %e %U %S" -o "$d/$s.time" "$FEDRAD" site --config "$d/config.yaml" --data "$DATA/$s" --site-id "$s" \
      --address "tcp://127.0.0.1:$r" --threads 1 --audit-log "$d/audit-$s.log" > "$d/$s.log" 2>&1 & pids+=($!)
  done
  local rc=0
  wait "$coord" || rc=$?
  for s in "${pids[@]}"; do wait "$s" || rc=$?; done
  echo "$(now) $t0" | awk '{printf "%.3f\n", $1 - $2}' > "$d/wall_seconds"
  kill -TERM "$relay"; wait "$relay" || true
  cut -d' ' -f1-3 /proc/loadavg > "$d/load_after"
  [ "$rc" = 0 ] || { echo "fedrad run in $d failed (rc $rc); see its logs" >&2; return 1; }
}

# run_flower DIR SEED: a Flower server + 4 Flower clients (1 torch thread each), clients through the relay.
run_flower() {
  local d=$1 seed=$2 p r relay server pids=() i=0 s
  mkdir -p "$d"
  p=$(free_port); r=$(free_port)
  cut -d' ' -f1-3 /proc/loadavg > "$d/load_before"
  "$PY" bench/peers/relay.py --listen "$r" --target "$p" --out "$d/relay.json" & relay=$!
  local t0; t0=$(now)
  /usr/bin/time -f "%M %e %U %S" -o "$d/coordinator.time" "$PY" bench/peers/flower_peer.py server --port "$p" --rounds "$ROUNDS" \
    --sites ${#SITES[@]} --seed "$seed" --out "$d" > "$d/coordinator.log" 2>&1 & server=$!
  wait_port "$p"; wait_port "$r"
  for s in "${SITES[@]}"; do
    i=$((i + 1))
    /usr/bin/time -f "%M %e %U %S" -o "$d/$s.time" "$PY" bench/peers/flower_peer.py client --address "127.0.0.1:$r" --site "$DATA/$s" \
      --site-id "$s" --site-index "$i" --rounds "$ROUNDS" --threads 1 --out "$d" > "$d/$s.log" 2>&1 & pids+=($!)
  done
  local rc=0
  wait "$server" || rc=$?
  for s in "${pids[@]}"; do wait "$s" || rc=$?; done
  echo "$(now) $t0" | awk '{printf "%.3f\n", $1 - $2}' > "$d/wall_seconds"
  kill -TERM "$relay"; wait "$relay" || true
  cut -d' ' -f1-3 /proc/loadavg > "$d/load_after"
  [ "$rc" = 0 ] || { echo "Flower run in $d failed (rc $rc); see its logs" >&2; return 1; }
}

# run_fake FRAMEWORK DIR: the same 4-site federation with instant sites (no data, no training, no
# evaluation; fit returns the weights plus an offset), the pneumonia model's size: what a round
# costs the federation itself. fedrad: bench/coordinator_scaling (the real coordinator and site
# runner, fake learners), Flower: flower_peer.py --fake. One process per site, connected straight
# to the coordinator: the counting relay (a Python process copying every byte) would add its own
# milliseconds to rounds that last a few, so the wire bytes are taken from the study runs instead.
FAKE_ROUNDS=${FAKE_ROUNDS:-50}
MODEL_MB=0.3114  # 77,850 float32 values: the pneumonia model's parameters and buffers
run_fake() {
  local fw=$1 d=$2 p coord pids=() i s codec=zstd
  [ "$fw" = fedrad-none ] && codec=none
  mkdir -p "$d"
  p=$(free_port)
  cut -d' ' -f1-3 /proc/loadavg > "$d/load_before"
  if [ "$fw" != flower ]; then
    /usr/bin/time -f "%M %e %U %S" -o "$d/coordinator.time" "$BUILD/bench/coordinator_scaling" coordinator --port "$p" --sites ${#SITES[@]} \
      --mb $MODEL_MB --rounds "$FAKE_ROUNDS" --codec $codec > "$d/coordinator.json" 2> "$d/coordinator.log" & coord=$!
    for i in $(seq 0 $((${#SITES[@]} - 1))); do
      /usr/bin/time -f "%M %e %U %S" -o "$d/site-$i.time" "$BUILD/bench/coordinator_scaling" sites --port "$p" --sites ${#SITES[@]} \
        --first "$i" --count 1 --codec $codec > "$d/site-$i.json" 2> "$d/site-$i.log" & pids+=($!)
    done
  else
    /usr/bin/time -f "%M %e %U %S" -o "$d/coordinator.time" "$PY" bench/peers/flower_peer.py server --port "$p" --rounds "$FAKE_ROUNDS" \
      --sites ${#SITES[@]} --out "$d" > "$d/coordinator.log" 2>&1 & coord=$!
    wait_port "$p"
    for i in $(seq 0 $((${#SITES[@]} - 1))); do
      /usr/bin/time -f "%M %e %U %S" -o "$d/site-$i.time" "$PY" bench/peers/flower_peer.py client --fake --address "127.0.0.1:$p" \
        --site-id "site-$i" --site-index "$((i + 1))" --out "$d" > "$d/site-$i.log" 2>&1 & pids+=($!)
    done
  fi
  local rc=0
  wait "$coord" || rc=$?
  for s in "${pids[@]}"; do wait "$s" || rc=$?; done
  cut -d' ' -f1-3 /proc/loadavg > "$d/load_after"
  : > "$d/done"
  [ "$rc" = 0 ] || { echo "$fw run with fake sites in $d failed (rc $rc); see its logs" >&2; return 1; }
}

PARTS=${PARTS:-"fake study throughput"}
for part in $PARTS; do date -u +%Y-%m-%dT%H:%M:%SZ > "$OUT/started-$part"; done  # when each part was (re)run
[[ " $PARTS " == *" fake "* ]] && for rep in $(seq "$REPEAT"); do
  echo "== repeat $rep/$REPEAT: fedrad and Flower with instant sites ($FAKE_ROUNDS rounds)" >&2
  run_fake fedrad "$OUT/fake-fedrad-$rep"
  run_fake flower "$OUT/fake-flower-$rep"
  run_fake fedrad-none "$OUT/fake-fedrad-none-$rep"  # plain fp32, as Flower sends
done
[[ " $PARTS " == *" study "* ]] && for rep in $(seq "$REPEAT"); do
  echo "== repeat $rep/$REPEAT: fedrad ($ROUNDS rounds, ${#SITES[@]} sites)" >&2
  run_fedrad "$OUT/fedrad-$rep" $((41 + rep))
  echo "== repeat $rep/$REPEAT: Flower" >&2
  run_flower "$OUT/flower-$rep" $((41 + rep))
done

# Local training throughput: (threads, augmentation) pairs, fedrad and PyTorch alternating, the
# whole set TP_REPEAT times (the section quotes the median); TP_APPEND=1 adds to earlier samples.
unset OMP_NUM_THREADS
TP_CONFS=${TP_CONFS:-"1:1 2:1 1:0"}   # threads:augmentation
TP_REPEAT=${TP_REPEAT:-3}
TP_EXTRA=${TP_EXTRA-fedrad-malloc}    # also fedrad with glibc malloc's trim/mmap thresholds raised
[[ " $PARTS " == *" throughput "* ]] && [ -z "${TP_APPEND:-}" ] && : > "$OUT/throughput.jsonl"
[[ " $PARTS " == *" throughput "* ]] && for k in $(seq "$TP_REPEAT"); do
  for conf in $TP_CONFS; do
    th=${conf%:*}; aug=${conf#*:}
    for tool in fedrad pytorch ${TP_EXTRA:-}; do
      load=$(cut -d' ' -f1 /proc/loadavg)
      if [ $tool = fedrad ]; then
        line=$("$BUILD/bench/train_throughput" --threads "$th" --augment "$aug" --steps "$STEPS" --repeat 3)
      elif [ $tool = fedrad-malloc ]; then
        # glibc's malloc keeps freed memory instead of trimming the heap and re-faulting fresh pages
        # every step (perf: fedrad spent ~24% of its time in the kernel, PyTorch-in-Python ~11%).
        line=$(GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=268435456 \
          "$BUILD/bench/train_throughput" --threads "$th" --augment "$aug" --steps "$STEPS" --repeat 3)
        line=${line/\"tool\": \"fedrad\"/\"tool\": \"fedrad-malloc\"}
      else
        line=$("$PY" bench/peers/torch_throughput.py --threads "$th" --augment "$aug" --steps "$STEPS" --repeat 3)
      fi
      echo "${line%\}}, \"load_before\": $load, \"load_after\": $(cut -d' ' -f1 /proc/loadavg)}" | tee -a "$OUT/throughput.jsonl" >&2
    done
  done
done

FAKE_ROUNDS=$FAKE_ROUNDS "$PY" bench/peers/write_peer_results.py "$OUT" bench/results/peers bench/RESULTS.md "$ROUNDS" "$REPEAT" "${SITES[@]}"
