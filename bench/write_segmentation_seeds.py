"""Summarises bench/segmentation_seeds.sh: one row per (rounds, seed) run folder OUT/r<ROUNDS>-s<SEED>
(fed.eval.json; cen-e<EPOCHS>.eval.json with cen-e<EPOCHS>.budget saying "steps" or "passes"; *.time,
load_*.txt), the federated / centralised ratio of mean Dice against each centralised budget and, per
rounds and budget, its mean and range over the seeds. Writes the raw numbers to a JSON file and prints
a markdown table.
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
BUDGETS = ["steps", "passes"]


def load_avg(text):
    return text.split("load average:")[-1].strip() if text else None


def regions(e):
    return statistics.mean(e["dice"][s] for s in ("WT", "TC", "ET"))


def scored(d, name):
    e = json.load(open(os.path.join(d, name + ".eval.json")))
    return {"mean_dice": e["mean_dice"], "dice": e["dice"], "hd95": e["hd95"],
            "wall_seconds": float(read(os.path.join(d, name + ".time"), "nan"))}


runs = []
for name in sorted(os.listdir(out)):
    m = re.fullmatch(r"r(\d+)-s(\d+)", name)
    d = os.path.join(out, name)
    if not m or not os.path.exists(os.path.join(d, "fed.eval.json")):
        continue
    run = {"rounds": int(m.group(1)), "seed": int(m.group(2)), "federated": scored(d, "fed"), "centralised": {},
           "load_before": load_avg(read(os.path.join(d, "load_before.txt"))),
           "load_after": load_avg(read(os.path.join(d, "load_after.txt"))),
           "note": read(os.path.join(d, "NOTE.txt"))}
    for f in sorted(os.listdir(d)):
        c = re.fullmatch(r"cen-e(\d+)\.eval\.json", f)
        if not c:
            continue
        budget = (read(os.path.join(d, f"cen-e{c.group(1)}.budget")) or "").strip()
        cen = scored(d, f"cen-e{c.group(1)}")
        cen["epochs"] = int(c.group(1))
        cen["ratio"] = run["federated"]["mean_dice"] / cen["mean_dice"]
        # the BraTS regions alone (whole tumour, tumour core, enhancing tumour), as BraTS reports them
        cen["ratio_regions"] = regions(run["federated"]) / regions(cen)
        run["centralised"][budget] = cen
    runs.append(run)
runs.sort(key=lambda r: (r["rounds"], r["seed"]))
summary = {}
for r in runs:
    for b, c in r["centralised"].items():
        summary.setdefault(f"{r['rounds']} rounds, equal {b}", []).append(c)
summary = {k: {"seeds": len(v), "mean_ratio": statistics.mean(c["ratio"] for c in v),
               "min_ratio": min(c["ratio"] for c in v), "max_ratio": max(c["ratio"] for c in v),
               "mean_ratio_regions": statistics.mean(c["ratio_regions"] for c in v)}
           for k, v in summary.items()}
os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
with open(dest, "w") as f:
    json.dump({"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), "runs": runs, "summary": summary},
              f, indent=2)

cells = lambda e: " / ".join(f"{e['dice'][s]:.3f}" for s in STRUCTS)
print("| rounds | seed | federated mean Dice | centralised, equal steps: epochs, mean Dice, **ratio** | "
      "centralised, equal sample passes: epochs, mean Dice, **ratio** | federated label 1 / WT / TC / ET | "
      "centralised (equal steps) label 1 / WT / TC / ET | wall fed / cen steps / cen passes (s) |")
print("|---|---|---|---|---|---|---|---|")
for r in runs:
    f, c = r["federated"], r["centralised"]
    col = lambda b: (f"{c[b]['epochs']}, {c[b]['mean_dice']:.3f}, **{c[b]['ratio']:.3f}**" if b in c else "-")
    wall = " / ".join(f"{c[b]['wall_seconds']:.0f}" if b in c else "-" for b in BUDGETS)
    print(f"| {r['rounds']} | {r['seed']} | {f['mean_dice']:.3f} | {col('steps')} | {col('passes')} | {cells(f)} | "
          f"{cells(c['steps']) if 'steps' in c else '-'} | {f['wall_seconds']:.0f} / {wall} |")
for k, s in summary.items():
    print(f"\n{k}: ratio mean {s['mean_ratio']:.3f} over {s['seeds']} seed(s), "
          f"range {s['min_ratio']:.3f}-{s['max_ratio']:.3f}; WT/TC/ET mean ratio {s['mean_ratio_regions']:.3f}")
