"""Collects bench/pneumonia_study.sh's outputs into JSON and a section of bench/RESULTS.md."""
import datetime
import json
import os
import platform
import re
import subprocess
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    out, results, md_path, config = sys.argv[1:5]
    sites = sys.argv[5:]
    names = ["federated", "centralised"] + sites
    rows = {}
    for name in names:
        ev = load(f"{out}/{name}.eval.json")
        wall = float(open(f"{out}/{name}.time").read())
        summary_path = f"{out}/{name}/summary.json"
        summary = load(summary_path)
        rows[name] = {"eval": ev, "wall_seconds": wall, "summary": summary}
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import machine  # bench/machine.py: lscpu model, cores, memory, date, commit
    m = machine.describe()
    commit = m["commit"] + (" + uncommitted working tree" if m["dirty"] else "")
    meta = {
        "date": m["date"],
        "commit": commit,
        "machine": m["machine"],
        "config": config,
    }
    with open(f"{results}/results.json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)

    fed = rows["federated"]["summary"]
    lines = [
        "## Federated pneumonia study (issue 2)",
        "",
        f"`bench/pneumonia_study.sh` on {meta['date']}, commit `{commit}`, {meta['machine']}, config "
        f"`{config}`. Data: ../shared/data/pneumonia, four sites; each site's val split is its test set. Every "
        "model is evaluated on the pooled val splits of all four sites (499 images) at the threshold chosen on "
        "validation data (Youden's J: on the pooled val histograms for the federated model, on its own training "
        "sites' val splits for the others). Raw results: `bench/results/pneumonia/results.json`.",
        "",
        "| model | trained on | rounds x local epochs / epochs | pooled val AUC | accuracy | sensitivity | specificity | wall time (s) | bytes up / down per round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = rows[name]
        ev, s = r["eval"], r["summary"]
        if name == "federated":
            trained = f"{len(sites)} sites, FedAvg"
            epochs = f"{s['rounds']} x 1"
            bytes_ = f"{s['bytes_up_per_round'] / 1e3:.0f} KB / {s['bytes_down_per_round'] / 1e3:.0f} KB (raw fp32 {s['raw_bytes_up_per_round'] / 1e3:.0f} KB / {s['raw_bytes_down_per_round'] / 1e3:.0f} KB)"
        else:
            trained = "all sites pooled" if name == "centralised" else f"{name} only"
            epochs = str(s["epochs"])
            bytes_ = "-"
        lines.append(
            f"| {name} | {trained} | {epochs} | {ev['auc']:.4f} | {ev['accuracy']:.4f} | {ev['sensitivity']:.4f} | "
            f"{ev['specificity']:.4f} | {r['wall_seconds']:.0f} | {bytes_} |")
    fa, ca = rows["federated"]["eval"]["auc"], rows["centralised"]["eval"]["auc"]
    best_single = max(rows[s]["eval"]["auc"] for s in sites)
    lines += [
        "",
        f"- Federated - centralised AUC: {fa - ca:+.4f} (target: within 0.01) -> "
        f"{'met' if abs(fa - ca) <= 0.01 or fa > ca else 'NOT met'}.",
        f"- Federated - best single site AUC: {fa - best_single:+.4f} (target: beat every single site) -> "
        f"{'met' if fa > best_single else 'NOT met'}.",
        "- Per-site AUC of each model on each site's val split: `bench/results/pneumonia/results.json` (`per_folder`).",
        "- Wall time is the whole command (simulate: data loading, 4 site processes sharing 2 cores, all rounds "
        "and the final evaluation). Bytes are ZeroMQ message sizes (zstd-compressed fp32 weights).",
        "",
    ]
    section = "\n".join(lines)
    begin, end = "<!-- pneumonia-study:begin -->", "<!-- pneumonia-study:end -->"
    text = open(md_path).read() if os.path.exists(md_path) else "# Benchmark results\n\n"
    block = f"{begin}\n{section}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    open(md_path, "w").write(text)
    print(section)


if __name__ == "__main__":
    main()
