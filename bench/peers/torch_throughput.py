"""PyTorch eager peer of bench/train_throughput.cpp: the same model, batch, input size, optimiser
and augmentation (bench/peers/pneumonia_torch.py), images/s over S steps after W warm-up steps,
best of R runs. Synthetic inputs (uniform in [-1, 1], random labels). Prints one JSON line."""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pneumonia_torch as pt  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--augment", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = pt.make_model(0)

    def make_set(n):
        return torch.rand(n, 1, a.size, a.size) * 2 - 1, (torch.rand(n) < 0.7).float()

    wx, wy = make_set(a.batch * max(1, a.warmup))
    pt.fit_epoch(model, wx, wy, pt.LR, seed=1, batch_size=a.batch, do_augment=bool(a.augment))
    x, y = make_set(a.batch * a.steps)
    best, best_cpu = 1e30, 1e30  # wall time, and CPU time of the process (all threads)
    for _ in range(a.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        pt.fit_epoch(model, x, y, pt.LR, seed=1, batch_size=a.batch, do_augment=bool(a.augment))
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    print(json.dumps({"tool": "pytorch", "threads": a.threads, "batch": a.batch, "size": a.size,
                      "augment": bool(a.augment), "steps": a.steps, "seconds": round(best, 4),
                      "images_per_s": round(a.batch * a.steps / best, 1), "cpu_seconds": round(best_cpu, 4),
                      "images_per_cpu_s": round(a.batch * a.steps / best_cpu, 1), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
