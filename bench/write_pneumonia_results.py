"""Collects bench/pneumonia_study.sh's outputs (one folder per seed) into JSON and a section of
bench/RESULTS.md: per model the median over the seeds, each seed's figure beside it."""
import glob
import json
import os
import re
import statistics
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def local_epochs(seed_dir):  # train.local_epochs of the seed's config (flow or block YAML), 1 if not given
    m = re.search(r"local_epochs:\s*(\d+)", open(f"{seed_dir}/config.yaml").read())
    return int(m.group(1)) if m else 1


def site_of(folder):
    return os.path.basename(os.path.dirname(folder.rstrip("/")))


def main():
    out, results, md_path, config = sys.argv[1:5]
    sites = sys.argv[5:]
    seed_dirs = sorted(glob.glob(f"{out}/seed-*"), key=lambda d: int(d.rsplit("-", 1)[1]))
    if not seed_dirs:
        sys.exit(f"no seed-* folders in {out}")
    # Single sites also trained at another budget (SITE_EPOCHS): site-a-20ep and so on.
    budgets = sorted({int(m.group(1)) for d in seed_dirs for f in os.listdir(d)
                      for s in sites if (m := re.fullmatch(re.escape(s) + r"-(\d+)ep\.eval\.json", f))})
    singles = sites + [f"{s}-{e}ep" for e in budgets for s in sites]
    names = ["federated", "centralised"] + singles
    # A seed whose runs did not all finish (the script was stopped) is left out, and said so.
    complete = [d for d in seed_dirs if all(os.path.exists(f"{d}/{n}.eval.json") for n in names)]
    for d in sorted(set(seed_dirs) - set(complete)):
        print(f"left out {d}: not every run finished", file=sys.stderr)
    seed_dirs = complete
    if not seed_dirs:
        sys.exit(f"no seed in {out} has every run")
    seeds = [int(d.rsplit("-", 1)[1]) for d in seed_dirs]
    runs = {}  # runs[name][seed] = {eval, wall_seconds, summary}
    for d, seed in zip(seed_dirs, seeds):
        for name in names:
            runs.setdefault(name, {})[seed] = {
                "eval": load(f"{d}/{name}.eval.json"),
                "wall_seconds": float(open(f"{d}/{name}.time").read()),
                "summary": load(f"{d}/{name}/summary.json"),
            }
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import machine  # bench/machine.py: lscpu model, cores, memory, date, commit
    m = machine.describe()
    commit = m["commit"] + (" + uncommitted working tree" if m["dirty"] else "")
    meta = {"date": m["date"], "commit": commit, "machine": m["machine"], "config": config, "seeds": seeds,
            "load_average": open("/proc/loadavg").read().split()[:3]}

    med = statistics.median

    def per_seed(name, key):
        return [runs[name][s]["eval"][key] for s in seeds]

    def per_test_site(name):  # median AUC on each site's val split
        out_ = {}
        for s in seeds:
            for f in runs[name][s]["eval"]["per_folder"]:
                out_.setdefault(site_of(f["data"]), []).append(f["metrics"]["auc"])
        return {k: med(v) for k, v in out_.items()}

    summary = {}
    for name in names:
        summary[name] = {key: med(per_seed(name, key)) for key in ("auc", "accuracy", "sensitivity", "specificity")}
        summary[name]["auc_per_seed"] = per_seed(name, "auc")
        summary[name]["wall_seconds"] = med([runs[name][s]["wall_seconds"] for s in seeds])
        summary[name]["auc_per_test_site"] = per_test_site(name)
    with open(f"{results}/results.json", "w") as f:
        json.dump({"meta": meta, "median": summary, "runs": runs}, f, indent=2)

    fed0 = runs["federated"][seeds[0]]["summary"]
    lines = [
        "## Federated pneumonia study (issue 2)",
        "",
        f"`bench/pneumonia_study.sh` on {meta['date']}, commit `{commit}`, {meta['machine']}, config "
        f"`{config}`, seeds {', '.join(map(str, seeds))} (the seed sets the initial model, the batch order and "
        "the augmentation). Load average at the end: "
        f"{' '.join(meta['load_average'])} (the study's own processes count in it; wall times are upper bounds "
        "where other work shared the cores). Data: ../shared/data/pneumonia, four sites; each site's val split is its test set. Every model "
        "is evaluated on the pooled val splits of all four sites (499 images) at the threshold chosen on "
        "validation data (Youden's J: on the pooled val histograms for the federated model, on its own training "
        "sites' val splits for the others). Figures are medians over the seeds; raw results: "
        "`bench/results/pneumonia/results.json`.",
        "",
        "| model | trained on | rounds x local epochs / epochs | pooled val AUC (median) | AUC per seed | accuracy | sensitivity | specificity | wall time (s) | bytes up / down per round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = summary[name]
        s0 = runs[name][seeds[0]]["summary"]
        if name == "federated":
            trained = f"{len(sites)} sites, FedAvg"
            epochs = f"{s0['rounds']} x {local_epochs(seed_dirs[0])}"
            bytes_ = (f"{s0['bytes_up_per_round'] / 1e3:.0f} KB / {s0['bytes_down_per_round'] / 1e3:.0f} KB "
                      f"(raw fp32 {s0['raw_bytes_up_per_round'] / 1e3:.0f} KB / {s0['raw_bytes_down_per_round'] / 1e3:.0f} KB)")
        else:
            trained = "all sites pooled" if name == "centralised" else f"{re.sub(r'-[0-9]+ep$', '', name)} only"
            epochs = str(s0["epochs"])
            bytes_ = "-"
        lines.append(
            f"| {name} | {trained} | {epochs} | {r['auc']:.4f} | {', '.join(f'{a:.4f}' for a in r['auc_per_seed'])} | "
            f"{r['accuracy']:.4f} | {r['sensitivity']:.4f} | {r['specificity']:.4f} | {r['wall_seconds']:.0f} | {bytes_} |")

    test_sites = sorted(summary["federated"]["auc_per_test_site"])
    lines += ["", "AUC on each site's own val split (median over the seeds), and their mean:", "",
              "| model | " + " | ".join(test_sites) + " | mean |", "|---|" + "---|" * (len(test_sites) + 1)]
    for name in names:
        t = summary[name]["auc_per_test_site"]
        lines.append(f"| {name} | " + " | ".join(f"{t[k]:.4f}" for k in test_sites) +
                     f" | {statistics.mean(t.values()):.4f} |")

    fa, ca = summary["federated"]["auc"], summary["centralised"]["auc"]
    best = max(singles, key=lambda s: summary[s]["auc"])
    wins = {s: sum(runs["federated"][k]["eval"]["auc"] > runs[s][k]["eval"]["auc"] for k in seeds) for s in singles}
    paired = {s: med([runs["federated"][k]["eval"]["auc"] - runs[s][k]["eval"]["auc"] for k in seeds]) for s in singles}
    at = f" at {runs[sites[0]][seeds[0]]['summary']['epochs']} or {' or '.join(map(str, budgets))} epochs" if budgets else ""
    lines += [
        "",
        f"- Federated - centralised AUC (medians): {fa - ca:+.4f} (target: within 0.01) -> "
        f"{'met' if abs(fa - ca) <= 0.01 or fa > ca else 'NOT met'}.",
        f"- Federated - best single-site model ({best}) AUC (medians): {fa - summary[best]['auc']:+.4f} (target: beat "
        f"every single site{at}) -> {'met' if all(fa > summary[s]['auc'] for s in singles) else 'NOT met'}.",
        "- Seeds in which the federated model beats each single-site model on the pooled val AUC (median of the "
        "paired differences, federated - site, seed by seed): " +
        ", ".join(f"{s} {wins[s]}/{len(seeds)} ({paired[s]:+.4f})" for s in singles) + ".",
        "- Wall time is the whole command (simulate: data loading, 4 site processes sharing 2 cores, all rounds "
        "and the final evaluation). Bytes are ZeroMQ message sizes (zstd-compressed fp32 weights).",
        "",
    ]
    section = "\n".join(lines)
    machine.replace_section(md_path, "pneumonia-study", section)
    print(section)


if __name__ == "__main__":
    main()
