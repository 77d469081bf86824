"""PyTorch eager peer of bench/train_throughput.cpp: the same model, batch, input size, optimiser,
augmentation, device, mixed precision and memory format, images/s over S steps after W warm-up
steps, best of R runs. Synthetic inputs. Prints one JSON line with the same fields.

  --model resnet (default): the pneumonia classifier (models/python/fedrad_models.py Classifier,
    configs/pneumonia.yaml), one epoch as training::fit runs it (bench/peers/pneumonia_torch.py's
    fit_epoch, on any device: the set already on the device, the augmentation's draws on the host
    from one CPU generator, the running loss kept on the GPU).
  --model unet2d | unet3d: the segmentation U-Net (fedrad_models.UNet, the port of models/unet.h;
    configs/segmentation.yaml's model section), timed on training::fit_seg's step (forward, Dice +
    cross-entropy, backward, AdamW step) on random patches already on the device.

--amp 1: torch.autocast("cuda", float16) and a GradScaler, on CUDA only (as the C++ side); on the
CPU the run is float32 and amp_active is false. --channels-last: model.to(memory_format=
channels_last) (4-D weights), and for the classifier its inputs (as training::fit); the 2D U-Net's
weights only (as fit_seg); ignored for the 3D U-Net.
params / param_signature: the parameter count and a 64-bit FNV-1a hash of "name:d0xd1x...;" over
named_parameters(), computed exactly as the C++ binary does: equal values mean the same layers,
names and shapes.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "models", "python"))
import pneumonia_torch as pt  # noqa: E402
from fedrad_models import UNet  # noqa: E402


def param_summary(model):
    h, count = 1469598103934665603, 0
    for name, p in model.named_parameters():
        count += p.numel()
        for b in (name + ":" + "x".join(str(d) for d in p.shape) + ";").encode():
            h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return count, "%016x" % h


def resolve_device(spec):
    if spec == "cpu":
        return torch.device("cpu")
    if spec != "cuda" and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        sys.exit(f"torch_throughput: --device {spec!r} is not cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        print(f"torch_throughput: --device {spec} asked for, but this torch ({torch.__version__}) cannot use CUDA",
              file=sys.stderr)
        sys.exit(2)
    index = int(spec[5:]) if spec.startswith("cuda:") else 0
    if index >= torch.cuda.device_count():
        print(f"torch_throughput: --device {spec} asked for, but there are {torch.cuda.device_count()} CUDA devices",
              file=sys.stderr)
        sys.exit(2)
    return torch.device("cuda", index)


def describe_device(device):
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return f"cuda:{device.index} ({torch.cuda.get_device_name(device.index)})"


def dice_ce_loss(logits, target):
    """training::dice_ce_loss: batch soft Dice over the foreground classes plus cross-entropy."""
    k = logits.size(1)
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(target, k).movedim(-1, 1).to(probs.dtype)
    dims = [0] + list(range(2, logits.dim()))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    eps = 1e-5
    dice = (2 * inter + eps) / (denom + eps)
    return ce + (1 - dice[1:].mean())


def seg_forward(net, x):
    """training::seg_forward: [N, C, Z, Y, X] in, logits [N, K, Z, Y, X] out (2D nets: Z = 1)."""
    if net.dims == 3:
        return net(x)
    return net(x.squeeze(2)).unsqueeze(2)


def seg_run(net, xs, ys, steps, amp, device):
    """One call of training::fit_seg's inner loop over `steps` batches (fresh optimiser and scaler)."""
    opt = torch.optim.AdamW(net.parameters(), lr=0.003, weight_decay=1e-5)  # configs/segmentation.yaml
    scaler = pt.make_scaler(amp)
    loss_sum, loss_acc = 0.0, None
    for s in range(steps):
        x, y = xs[s % len(xs)], ys[s % len(ys)]
        opt.zero_grad()
        with pt.autocast(amp):
            loss = dice_ce_loss(seg_forward(net, x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cpu":
            loss_sum += loss.item()
        else:
            loss_acc = loss.detach() if loss_acc is None else loss_acc + loss.detach()
    if loss_acc is not None:
        loss_sum = loss_acc.item()
    return loss_sum / steps


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet", choices=["resnet", "unet2d", "unet3d"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", type=int, default=0)
    p.add_argument("--channels-last", type=int, default=0)
    p.add_argument("--cudnn-benchmark", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=-1)
    p.add_argument("--size", type=int, default=-1)
    p.add_argument("--augment", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--norm", default="instance")
    a = p.parse_args()
    unet = a.model != "resnet"
    if a.steps < 1 or a.repeat < 1 or a.warmup < 0:
        sys.exit("torch_throughput: --steps and --repeat must be >= 1, --warmup >= 0")
    batch = a.batch if a.batch > 0 else (2 if unet else 64)
    size = a.size if a.size > 0 else (32 if unet else 28)
    device = resolve_device(a.device)
    torch.set_num_threads(a.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = bool(a.cudnn_benchmark)
    amp = bool(a.amp) and device.type == "cuda"
    if a.amp and not amp:
        print(f"torch_throughput: --amp 1 is CUDA-only (as the C++ side); this run on {a.device} is float32",
              file=sys.stderr)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.manual_seed(0)
    best, best_cpu = 1e30, 1e30  # wall time, and CPU time of the process (all threads)
    if not unet:
        model = pt.make_model(0)
        params, signature = param_summary(model)
        model.to(device)
        cl = bool(a.channels_last)
        if cl:
            model.to(memory_format=torch.channels_last)

        def make_set(n):
            x, y = torch.rand(n, 1, size, size) * 2 - 1, (torch.rand(n) < 0.7).float()
            return x.to(device), y.to(device)

        wx, wy = make_set(batch * max(1, a.warmup))
        pt.fit_epoch(model, wx, wy, pt.LR, 1, batch, bool(a.augment), amp, cl)
        x, y = make_set(batch * a.steps)
        for _ in range(a.repeat):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            pt.fit_epoch(model, x, y, pt.LR, 1, batch, bool(a.augment), amp, cl)
            sync()
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        shape = [1, size, size]
    else:
        dims = 2 if a.model == "unet2d" else 3
        net = UNet(dims=dims, in_channels=a.channels, out_channels=a.classes, width=a.width, depth=a.stages,
                   norm=a.norm)
        params, signature = param_summary(net)
        net.to(device)
        cl = bool(a.channels_last) and dims == 2
        if cl:
            net.to(memory_format=torch.channels_last)
        net.train()
        pz = 1 if dims == 2 else size
        pool = max(1, min(a.steps, 4))
        xs = [torch.randn(batch, a.channels, pz, size, size).to(device) for _ in range(pool)]
        ys = [torch.randint(0, a.classes, (batch, pz, size, size)).to(device) for _ in range(pool)]
        seg_run(net, xs, ys, max(1, a.warmup), amp, device)
        for _ in range(a.repeat):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            seg_run(net, xs, ys, a.steps, amp, device)
            sync()
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        shape = [a.channels, pz, size, size]
    images = batch * a.steps
    print(json.dumps({"tool": "pytorch", "model": a.model, "device": str(device), "device_name": describe_device(device),
                      "amp": bool(a.amp), "amp_active": amp, "channels_last": cl, "threads": a.threads,
                      "batch": batch, "size": size, "sample_shape": shape, "augment": bool(a.augment) and not unet,
                      "steps": a.steps, "repeat": a.repeat, "params": params, "param_signature": signature,
                      "seconds": round(best, 4), "images_per_s": round(images / best, 1),
                      "cpu_seconds": round(best_cpu, 4), "images_per_cpu_s": round(images / best_cpu, 1),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
