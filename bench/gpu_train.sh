#!/usr/bin/env bash
# Training throughput on a GPU, fedrad vs PyTorch eager in Python (issue 4, item 2): the same model,
# step, batch, input size, mixed precision and memory format, on the same device in the same run.
#   fedrad:  bench/train_throughput (training::fit for the classifier; fit_seg's step for the U-Nets)
#   PyTorch: bench/peers/torch_throughput.py (the same loops; fedrad_models.py's Classifier and UNet)
# Configurations (CONFS, one per line: model size batch amp channels_last steps warmup):
#   resnet (the pneumonia classifier) at 224x224, batch 64, channels-last, AMP off and on;
#   unet2d and unet3d (configs/segmentation.yaml: width 8, 3 stages, instance norm, 4 channels,
#   4 classes) at the config's 32-voxel patch edge and batch 2 (UNET_BATCH), AMP off and on.
# The two tools alternate (which goes first alternates too), REPEAT times over all configurations;
# the table quotes each one's median images/s (each sample being the best of 3 timed runs inside
# the process). Both print their parameter count and a hash of the parameters' names and shapes:
# a mismatch is reported and makes the script fail.
#
#   bench/gpu_train.sh                              # DEVICE=cuda, REPEAT=3, builds $BUILD (build-gpu)
#   DEVICE=cuda:1 NO_BUILD=1 BUILD=build bench/gpu_train.sh
#   DEVICE=cpu SMOKE=1 NO_BUILD=1 BUILD=build-seg bench/gpu_train.sh   # tiny sizes: proves it runs
#   SUMMARY_ONLY=1 bench/gpu_train.sh               # redo the table and JSON from $OUT's samples
#   AUGMENT=0 bench/gpu_train.sh                    # the classifier without augmentation (fedrad fuses it on a GPU)
#
# Python: $PY, else the first of `python3`, /usr/bin/python3 whose torch imports (and, for CUDA,
# sees a GPU): on a GPU node the python3 with PyTorch 2.11, on a CPU machine Debian's python3-torch.
# Building for CUDA configures $BUILD against the LibTorch bundled with that Python's torch
# (torch.utils.cmake_prefix_path), so that both sides run the same LibTorch; FEDRAD_CMAKE_ARGS adds
# arguments (e.g. -DFEDRAD_TESTS=OFF).
# Writes $OUT/train_throughput.jsonl (raw lines) and $RESULTS_JSON: bench/results/gpu/
# train_throughput.json on CUDA; on the CPU (a smoke run) $OUT/train_throughput.json unless
# RESULTS_JSON says otherwise. Prints a markdown table. Does not touch bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
REPEAT=${REPEAT:-3}
THREADS=${THREADS:-1}
OUT=${OUT:-/tmp/fedrad-gpu-train}
UNET_BATCH=${UNET_BATCH:-2}   # configs/segmentation.yaml train.batch_size
AUGMENT=${AUGMENT:-1}         # the classifier's augmentation in the timed loop (training::fit), 0 = none
on_cuda=0
[[ $DEVICE == cuda* ]] && on_cuda=1
if [ $on_cuda = 1 ]; then
  BUILD=${BUILD:-build-gpu}
  RESULTS_JSON=${RESULTS_JSON:-bench/results/gpu/train_throughput.json}
else
  BUILD=${BUILD:-build-bench}
  RESULTS_JSON=${RESULTS_JSON:-$OUT/train_throughput.json}
fi
if [ -n "${SMOKE:-}" ]; then
  DEFAULT_CONFS="resnet 32 8 0 1 3 1
resnet 32 8 1 1 3 1
unet2d 32 2 0 0 3 1
unet2d 32 2 1 0 3 1
unet3d 16 1 0 0 2 1
unet3d 16 1 1 0 2 1"
else
  DEFAULT_CONFS="resnet 224 64 0 1 40 5
resnet 224 64 1 1 40 5
unet2d 32 $UNET_BATCH 0 0 200 20
unet2d 32 $UNET_BATCH 1 0 200 20
unet3d 32 $UNET_BATCH 0 0 200 20
unet3d 32 $UNET_BATCH 1 0 200 20"
fi
CONFS=${CONFS:-$DEFAULT_CONFS}

pick_python() {
  local c
  if [ -n "${PY:-}" ]; then echo "$PY"; return 0; fi
  for c in python3 /usr/bin/python3; do
    command -v "$c" >/dev/null 2>&1 || continue
    "$c" -c 'import torch' 2>/dev/null || continue
    if [ $on_cuda = 1 ] && ! "$c" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      continue
    fi
    echo "$c"; return 0
  done
  return 1
}
PY=$(pick_python) || {
  if [ $on_cuda = 1 ]; then echo "no python3 with a CUDA-enabled torch found (set PY)" >&2
  else echo "no python3 with torch found (apt-get install python3-torch, or set PY)" >&2; fi
  exit 1
}
echo "== python: $PY (torch $("$PY" -c 'import torch; print(torch.__version__)')), build: $BUILD, device: $DEVICE" >&2

if [ -z "${NO_BUILD:-}" ] && [ -z "${SUMMARY_ONLY:-}" ]; then
  cmake_args=()
  if [ $on_cuda = 1 ]; then
    cmake_args+=("-DCMAKE_PREFIX_PATH=$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')")
  fi
  # shellcheck disable=SC2086
  cmake -S . -B "$BUILD" -G Ninja "${cmake_args[@]}" ${FEDRAD_CMAKE_ARGS:-} >/dev/null
  cmake --build "$BUILD" --target train_throughput -j"${JOBS:-$(nproc)}" >/dev/null
fi
BIN=$BUILD/bench/train_throughput
[ -n "${SUMMARY_ONLY:-}" ] || [ -x "$BIN" ] || { echo "$BIN is missing (build it, or unset NO_BUILD)" >&2; exit 1; }

mkdir -p "$OUT"
RAW=$OUT/train_throughput.jsonl
if [ -z "${SUMMARY_ONLY:-}" ]; then
  : > "$RAW"
  date -u +%Y-%m-%dT%H:%M:%SZ > "$OUT/started"
  n_confs=$(printf '%s\n' "$CONFS" | grep -c .)
  for rep in $(seq "$REPEAT"); do
    i=0
    while read -r model size batch amp cl steps warmup; do
      [ -n "$model" ] || continue
      i=$((i + 1))
      conf="$model-$size-b$batch-amp$amp-cl$cl"
      args=(--model "$model" --device "$DEVICE" --size "$size" --batch "$batch" --amp "$amp" --channels-last "$cl"
            --steps "$steps" --warmup "$warmup" --repeat 3 --threads "$THREADS" --augment "$AUGMENT")
      # Alternate which tool goes first, so that neither always runs on a GPU the other just warmed.
      if [ $(((rep + i) % 2)) = 0 ]; then tools="fedrad pytorch"; else tools="pytorch fedrad"; fi
      for tool in $tools; do
        echo "== repeat $rep/$REPEAT, $i/$n_confs: $conf, $tool" >&2
        load=$(cut -d' ' -f1 /proc/loadavg)
        if [ $tool = fedrad ]; then
          line=$("$BIN" "${args[@]}" </dev/null)
        else
          line=$("$PY" bench/peers/torch_throughput.py "${args[@]}" </dev/null)
        fi
        echo "${line%\}}, \"conf\": \"$conf\", \"rep\": $rep, \"load_before\": $load, \"load_after\": $(cut -d' ' -f1 /proc/loadavg)}" \
          | tee -a "$RAW" >&2
      done
    done <<< "$CONFS"
  done
  date -u +%Y-%m-%dT%H:%M:%SZ > "$OUT/finished"
fi

mkdir -p "$(dirname "$RESULTS_JSON")"
"$PY" - "$RAW" "$RESULTS_JSON" "$DEVICE" "$PY" "$BUILD" "$OUT" <<'EOF'
import json, os, statistics, sys
raw, dest, device, py, build, out = sys.argv[1:7]
lines = [json.loads(l) for l in open(raw) if l.strip()]
confs = []
for l in lines:
    if l["conf"] not in confs:
        confs.append(l["conf"])
rows, mismatch = [], False
def read(name):
    p = os.path.join(out, name)
    return open(p).read().strip() if os.path.exists(p) else None
for c in confs:
    f = [l for l in lines if l["conf"] == c and l["tool"] == "fedrad"]
    p = [l for l in lines if l["conf"] == c and l["tool"] == "pytorch"]
    if not f or not p:
        continue
    fm = statistics.median(l["images_per_s"] for l in f)
    pm = statistics.median(l["images_per_s"] for l in p)
    fp = sorted({(l["params"], l["param_signature"]) for l in f})
    pp = sorted({(l["params"], l["param_signature"]) for l in p})
    match = fp == pp and len(fp) == 1
    mismatch |= not match
    first = f[0]
    rows.append({
        "conf": c, "model": first["model"], "size": first["size"], "sample_shape": first["sample_shape"],
        "batch": first["batch"], "amp": first["amp"], "amp_active": first["amp_active"],
        "channels_last": first["channels_last"], "augment": first["augment"], "steps": first["steps"],
        "device_name": first["device_name"], "pytorch_device_name": p[0]["device_name"],
        "fedrad_images_per_s": fm, "pytorch_images_per_s": pm, "ratio": round(fm / pm, 3),
        "fedrad_samples": [l["images_per_s"] for l in f], "pytorch_samples": [l["images_per_s"] for l in p],
        "fedrad_params": fp[0][0], "pytorch_params": pp[0][0], "params_match": match,
        "fedrad_param_signature": fp[0][1], "pytorch_param_signature": pp[0][1],
        "fedrad_skipped_steps": [l.get("skipped_steps", 0) for l in f],
    })
torch_f = sorted({l["torch"] for l in lines if l["tool"] == "fedrad"})
torch_p = sorted({l["torch"] for l in lines if l["tool"] == "pytorch"})
result = {"what": "training images/s, fedrad (bench/train_throughput) vs PyTorch eager in Python "
                  "(bench/peers/torch_throughput.py), same device, same run, interleaved; median of the repeats",
          "device": device, "smoke": not device.startswith("cuda"), "started": read("started"), "finished": read("finished"),
          "repeat": max((l["rep"] for l in lines), default=0), "fedrad_libtorch": torch_f, "pytorch": torch_p,
          "python": py, "build": build, "rows": rows, "raw": lines}
with open(dest, "w") as fh:
    json.dump(result, fh, indent=1)
def yn(v):
    return "on" if v else "off"
aug = sorted({r["augment"] for r in rows if r["model"] == "resnet"})
print(f"Training throughput, device {device}: fedrad (LibTorch {', '.join(torch_f)}) vs PyTorch eager "
      f"({', '.join(torch_p)}), median of {result['repeat']} interleaved repeats"
      + (f"; classifier augmentation {'/'.join(yn(a) for a in aug)}" if aug else "") + "\n")
print("| model | input | batch | AMP | channels-last | fedrad images/s | PyTorch images/s | fedrad / PyTorch | parameters | device |")
print("|---|---|---|---|---|---:|---:|---:|---|---|")
for r in rows:
    amp = yn(r["amp"]) + ("" if r["amp"] == r["amp_active"] else " (inactive: CPU)")
    shape = "x".join(str(d) for d in r["sample_shape"])
    params = f"{r['fedrad_params']:,} (same)" if r["params_match"] else \
        f"MISMATCH: {r['fedrad_params']:,} vs {r['pytorch_params']:,}"
    print(f"| {r['model']} | {shape} | {r['batch']} | {amp} | {yn(r['channels_last'])} | {r['fedrad_images_per_s']:.1f} | "
          f"{r['pytorch_images_per_s']:.1f} | {r['ratio']:.2f}x | {params} | {r['device_name']} |")
print(f"\n(raw samples in {raw}; summary in {dest})")
if torch_f and torch_p and torch_f[0].split(".")[:2] != torch_p[0].split("+")[0].split(".")[:2]:
    print(f"note: fedrad's LibTorch {torch_f} and Python's torch {torch_p} differ in version", file=sys.stderr)
if mismatch:
    print("parameter count or names/shapes differ between fedrad and the PyTorch port", file=sys.stderr)
    sys.exit(1)
EOF
