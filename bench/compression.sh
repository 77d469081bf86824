#!/usr/bin/env bash
# Compressed updates (issue 7): the 4-site pneumonia study under several codec settings, plus the
# codec throughput benchmark, written as the "## Compressed updates (issue 7)" section of
# bench/RESULTS.md (the rest of the file is left alone).
#
#   bench/compression.sh                      # all settings (~2-3 min each on 2 cores)
#   SETTINGS="baseline topk1-q8" bench/compression.sh
#   BUILD=build-codec DATA=../shared/data/pneumonia TARGET_AUC=0.99 bench/compression.sh
#   REUSE=1 ...   keeps a setting's finished run (summary.json present) instead of running it again
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-codec}
DATA=${DATA:-../shared/data/pneumonia}
TARGET_AUC=${TARGET_AUC:-0.99}
JOBS=${JOBS:-2}
OUT=${OUT:-/tmp/fedrad-compression}
RESULTS=bench/RESULTS.md

# name  upstream codec  downstream codec
declare -A UP DOWN
UP[baseline]="zstd";                          DOWN[baseline]="zstd"
UP[q8]="delta|ef|q8|zstd";                    DOWN[q8]="zstd"
UP[topk1-q8]="delta|ef|topk:0.01|q8|zstd";    DOWN[topk1-q8]="zstd"
UP[topk1-q8-down]="delta|ef|topk:0.01|q8|zstd"; DOWN[topk1-q8-down]="delta|topk:0.1|q8|zstd"
UP[topk0.3-q4]="delta|ef|topk:0.003|q4|zstd"; DOWN[topk0.3-q4]="delta|topk:0.1|q8|zstd"
UP[topk0.1-q4]="delta|ef|topk:0.001|q4|zstd"; DOWN[topk0.1-q4]="delta|topk:0.1|q8|zstd"
UP[topk1-q4]="delta|ef|topk:0.01|q4|zstd";    DOWN[topk1-q4]="zstd"
UP[randk1-q8]="delta|ef|randk:0.01|q8|zstd";  DOWN[randk1-q8]="zstd"
# Denser top-k, random-k at about topk1-q4's bytes, and kernel top-k (one index per 3x3 kernel of
# the convolutions, so ~3% of the values for about what 1% costs value by value).
UP[topk2-q4]="delta|ef|topk:0.02|q4|zstd";    DOWN[topk2-q4]="zstd"
UP[topk10-q4]="delta|ef|topk:0.1|q4|zstd";    DOWN[topk10-q4]="zstd"
UP[randk3-q4]="delta|ef|randk:0.03|q4|zstd";  DOWN[randk3-q4]="zstd"
UP[ktopk3-q4]="delta|ef|ktopk:0.03|q4|zstd";  DOWN[ktopk3-q4]="zstd"
# The same upstream codec with server momentum (FedAvgM, momentum 0.7) in place of plain FedAvg.
UP[topk1-q4-m]="delta|ef|topk:0.01|q4|zstd";  DOWN[topk1-q4-m]="zstd"
declare -A STRATEGY=([topk1-q4-m]="fedavgm") EXTRA=([topk1-q4-m]="  server_momentum: 0.7")
SETTINGS=${SETTINGS:-"baseline q8 topk1-q8 topk1-q4 ktopk3-q4 topk2-q4 topk10-q4 randk3-q4 topk1-q8-down topk0.3-q4 topk0.1-q4 randk1-q8"}

cmake -S . -B "$BUILD" -G Ninja >/dev/null
cmake --build "$BUILD" --target fedrad codec_bench -j"$JOBS" >/dev/null
mkdir -p "$OUT"

for s in $SETTINGS; do
  cfg="$OUT/$s.yaml"
  # configs/pneumonia.yaml ends with its federation block: the codec keys are appended to it.
  { sed "s/strategy: fedavg$/strategy: ${STRATEGY[$s]:-fedavg}/" configs/pneumonia.yaml
    echo "  upstream_codec: \"${UP[$s]}\""
    echo "  downstream_codec: \"${DOWN[$s]}\""
    [[ -z "${EXTRA[$s]:-}" ]] || echo "${EXTRA[$s]}"; } > "$cfg"
  if [[ -n "${REUSE:-}" && -f "$OUT/$s/summary.json" ]]; then
    echo "== $s: reusing $OUT/$s (REUSE set)" >&2
    continue
  fi
  echo "== $s: up '${UP[$s]}', down '${DOWN[$s]}'" >&2
  rm -rf "${OUT:?}/$s"
  "$BUILD/apps/fedrad" simulate --config "$cfg" --data "$DATA" --out "$OUT/$s" > "$OUT/$s.log" 2>&1
done

"$BUILD/bench/codec_bench" --benchmark_min_time=0.3 --benchmark_format=json > "$OUT/codec_bench.json" 2>/dev/null

python3 - "$OUT" "$RESULTS" "$TARGET_AUC" "$SETTINGS" <<'EOF'
import csv, datetime, json, os, platform, re, subprocess, sys
out, results, target, settings = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4].split()
ups, downs = {}, {}
rows = []
base_auc = None
for s in settings:
    cfg = open(f"{out}/{s}.yaml").read()
    up = re.search(r'upstream_codec: "(.*)"', cfg).group(1)
    down = re.search(r'downstream_codec: "(.*)"', cfg).group(1)
    strategy = re.search(r'strategy: (\w+)', cfg).group(1)
    label = s
    if strategy != "fedavg":
        momentum = re.search(r'server_momentum: ([0-9.]+)', cfg)
        label += f" ({strategy}" + (f", momentum {momentum.group(1)}" if momentum else "") + ")"
    g = [r for r in csv.DictReader(open(f"{out}/{s}/metrics.csv")) if r["scope"] == "global"]
    fit = [r for r in g if int(r["round"]) <= len(g) - 1]
    final = g[-1]
    bu = sum(int(r["bytes_up"]) for r in fit); ru = sum(int(r["raw_bytes_up"]) for r in fit)
    bd = sum(int(r["bytes_down"]) for r in g); rd = sum(int(r["raw_bytes_down"]) for r in g)
    # rounds to target: aggregations behind the first evaluated model at or above the target
    reach = next((int(r["model_round"]) for r in g if float(r["auc"]) >= target), None)
    auc = float(final["auc"])
    if s == "baseline": base_auc = auc
    rows.append((label, up, down, bu / len(fit), ru / bu, bd / len(g), rd / bd, auc, reach))
lines = []
lines.append("| setting | upstream codec | downstream codec | up bytes/round (4 sites) | up ratio vs fp32 | "
             "down bytes/round (4 sites) | down ratio | final val AUC | ΔAUC vs baseline | rounds to AUC ≥ %.3f |" % target)
lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
for s, up, down, bu, ru, bd, rd, auc, reach in rows:
    d = "" if base_auc is None else "%+.4f" % (auc - base_auc)
    esc = lambda c: c.replace("|", "\\|")  # a pipe inside a table cell must be escaped
    lines.append(f"| {s} | `{esc(up)}` | `{esc(down)}` | {bu:,.0f} | {ru:.1f}x | {bd:,.0f} | {rd:.1f}x | {auc:.4f} | {d} | "
                 f"{reach if reach is not None else 'not reached'} |")
bench = json.load(open(f"{out}/codec_bench.json"))
tl = ["| benchmark | codec | GB/s (of raw fp32) | time (ms) |", "|---|---|---:|---:|"]
for b in bench["benchmarks"]:
    tl.append(f"| {b['name']} | `{b.get('label', '').replace('|', chr(92) + '|')}` | {b['bytes_per_second'] / 1e9:.3f} | {b['real_time']:.2f} |")
sys.path.insert(0, "bench")
import machine
m = machine.describe()
commit = m["commit"]
section = f"""## Compressed updates (issue 7)

Produced by `bench/compression.sh` on {m['date']} at commit {commit}{' (plus the working tree)' if m['dirty'] else ''},
machine: {m['machine']} (CPU codec path). Study: `configs/pneumonia.yaml` (4 sites,
20 rounds, FedAvg) with the codec keys added; val AUC pooled over the 4 sites' validation splits.
Bytes are wire bytes of whole messages (header included); raw = the same messages with the model as
plain fp32. Upstream is averaged over the 20 training rounds, downstream over the 20 rounds and the final
evaluation (round 1 and the final round send a full model the first time a site has none).

{chr(10).join(lines)}

Upstream codecs run with error feedback (`ef`); top-k is per tensor, and tensors of at most 512 values
(biases, BatchNorm parameters and running statistics) are always sent whole:
with error feedback on sparsified running variances the model broke in evaluation mode (AUC 0.5).
`ktopk:F` keeps whole 3x3 kernels of the convolutions (the fraction F of them, by L2 norm) with one
coded index per kernel, and single values elsewhere, as topk.
Downstream `zstd` sends the full fp32 model every round (lossless), hence its 1.1x.

Codec throughput (`bench/codec_bench`, 1 Mi values = 4 MiB of fp32, one thread, encode includes
error feedback). **CPU contention:** other builds and studies were running on this 2-core machine at the
same time, so these figures are lower bounds and noisy.

{chr(10).join(tl)}
"""
text = open(results).read() if os.path.exists(results) else "# Benchmark results\n"
pat = re.compile(r"## Compressed updates \(issue 7\)\n.*?(?=\n## |\n<!-- |\Z)", re.S)
text = pat.sub(lambda m: section.rstrip("\n") + "\n", text) if pat.search(text) else text.rstrip("\n") + "\n\n" + section
open(results, "w").write(text)
print(section)
EOF
