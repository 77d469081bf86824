"""Summarises bench/segmentation_seeds.sh: one row per (budget, seed) run folder OUT/r<ROUNDS>-s<SEED>
(fed.eval.json, cen.eval.json, *.time, load_*.txt), the federated / centralised ratio of mean Dice per
run and, per budget, its mean and range over the seeds. Writes the raw numbers to a JSON file and
prints a markdown table.
    python3 bench/write_segmentation_seeds.py OUT bench/results/segmentation/seeds.json"""
import datetime
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import read  # noqa: E402

out, dest = sys.argv[1:3]
STRUCTS = ["label 1", "WT", "TC", "ET"]


def load_avg(text):
    return text.split("load average:")[-1].strip() if text else None


def regions(e):
    return statistics.mean(e["dice"][s] for s in ("WT", "TC", "ET"))


runs = []
for name in sorted(os.listdir(out)):
    m = re.fullmatch(r"r(\d+)-s(\d+)", name)
    d = os.path.join(out, name)
    if not m or not os.path.exists(os.path.join(d, "fed.eval.json")) or not os.path.exists(os.path.join(d, "cen.eval.json")):
        continue
    fed, cen = (json.load(open(os.path.join(d, f))) for f in ("fed.eval.json", "cen.eval.json"))
    runs.append({
        "rounds": int(m.group(1)), "seed": int(m.group(2)),
        "federated": {"mean_dice": fed["mean_dice"], "dice": fed["dice"], "hd95": fed["hd95"],
                      "wall_seconds": float(read(os.path.join(d, "fed.time"), "nan"))},
        "centralised": {"mean_dice": cen["mean_dice"], "dice": cen["dice"], "hd95": cen["hd95"],
                        "wall_seconds": float(read(os.path.join(d, "cen.time"), "nan"))},
        "ratio": fed["mean_dice"] / cen["mean_dice"],
        # the BraTS regions alone (whole tumour, tumour core, enhancing tumour), as BraTS reports them
        "ratio_regions": regions(fed) / regions(cen),
        "load_before": load_avg(read(os.path.join(d, "load_before.txt"))),
        "load_after": load_avg(read(os.path.join(d, "load_after.txt"))),
        "note": read(os.path.join(d, "NOTE.txt")),
    })
runs.sort(key=lambda r: (r["rounds"], r["seed"]))
budgets = {}
for r in runs:
    budgets.setdefault(r["rounds"], []).append(r)
summary = {str(k): {"seeds": len(v), "mean_ratio": statistics.mean(r["ratio"] for r in v),
                    "min_ratio": min(r["ratio"] for r in v), "max_ratio": max(r["ratio"] for r in v),
                    "mean_ratio_regions": statistics.mean(r["ratio_regions"] for r in v)}
           for k, v in budgets.items()}
os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
with open(dest, "w") as f:
    json.dump({"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), "runs": runs, "budgets": summary},
              f, indent=2)

cells = lambda e: " / ".join(f"{e['dice'][s]:.3f}" for s in STRUCTS)
print("| rounds = epochs (patches per case) | seed | federated mean Dice | centralised mean Dice | ratio | "
      "ratio of WT/TC/ET mean | "
      "federated label 1 / WT / TC / ET | centralised label 1 / WT / TC / ET | wall fed / cen (s) | load before, after |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in runs:
    f, c = r["federated"], r["centralised"]
    print(f"| {r['rounds']} ({2 * r['rounds']}) | {r['seed']} | {f['mean_dice']:.3f} | {c['mean_dice']:.3f} | "
          f"**{r['ratio']:.3f}** | {r['ratio_regions']:.3f} | {cells(f)} | {cells(c)} | {f['wall_seconds']:.0f} / {c['wall_seconds']:.0f} | "
          f"{r['load_before']}; {r['load_after']} |")
for k, s in summary.items():
    print(f"\n{k} rounds: ratio mean {s['mean_ratio']:.3f} over {s['seeds']} seed(s), "
          f"range {s['min_ratio']:.3f}-{s['max_ratio']:.3f}; WT/TC/ET mean ratio {s['mean_ratio_regions']:.3f}")
