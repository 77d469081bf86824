"""fedrad's pneumonia pipeline in plain PyTorch, for the peers in bench/ (Flower, PyTorch eager).

The same model (models/python/fedrad_models.py, whose logits a test checks against fedrad's), the
same preprocessing (pydicom decode, MONOCHROME1 inversion and rescale, bilinear resize with
half-pixel centres as torch's interpolate(align_corners=False), per-image min-max to [-1, 1]: the
code of bench/dicom_ingest_pydicom.py, whose outputs match fedrad's to 5e-9 per pixel), and the
same local training as training/trainer.cpp: AdamW (weight decay 1e-4), a cosine learning rate
over rounds x local epochs, batches of 64 in a fresh random order each epoch (a last batch of one
is skipped), fedrad's augmentation (random rotation +-10 degrees, scale 0.9-1.1, shift +-8%,
bilinear with border padding, contrast x0.9-1.1, brightness +-0.1), BCE with logits.
"""
import contextlib
import csv
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "..", "models", "python"))

from fedrad_models import Classifier  # noqa: E402

# configs/pneumonia.yaml
MODEL = dict(width=16, stages=3, norm="batch", dropout=0.1)
LR, WEIGHT_DECAY, BATCH = 0.002, 1e-4, 64


def load_split(split_dir):
    """Decodes every file of split_dir/labels.csv with pydicom; returns (images [N,1,28,28], labels [N])."""
    import dicom_ingest_pydicom as ingest  # pydicom + numpy preprocessing (28 px, min-max)

    with open(os.path.join(split_dir, "labels.csv"), newline="") as f:
        rows = [r for r in csv.reader(f)][1:]
    images, labels = [], []
    for r in rows:
        if not r or not r[0].strip():
            continue
        path = os.path.join(split_dir, r[0].strip())
        try:
            images.append(ingest.preprocess(path).astype(np.float32))
        except Exception as e:  # unreadable files are skipped, as fedrad does
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        labels.append(1.0 if r[1].strip().upper() == "PNEUMONIA" else 0.0)
    x = torch.from_numpy(np.stack(images)).unsqueeze(1).contiguous()
    return x, torch.tensor(labels, dtype=torch.float32)


def make_model(seed=42):
    torch.manual_seed(seed)
    return Classifier(**MODEL)


def augment(x, gen):
    """training::augment: the draws on the host from `gen`, applied on x's device."""
    n = x.size(0)

    def uniform(lo, hi):
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    angle = uniform(-10, 10) * (math.pi / 180.0)
    scale = uniform(0.9, 1.1)
    tx = uniform(-0.08, 0.08)
    ty = uniform(-0.08, 0.08)
    flip = torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = uniform(0.9, 1.1).view(n, 1, 1, 1).to(x.device, x.dtype)
    brightness = uniform(-0.1, 0.1).view(n, 1, 1, 1).to(x.device, x.dtype)
    return out * contrast + brightness


def autocast(enabled):
    """torch.autocast on CUDA with float16 when enabled (training::AutocastScope), else nothing."""
    return torch.autocast("cuda", dtype=torch.float16) if enabled else contextlib.nullcontext()


def make_scaler(enabled):
    """A loss scaler (training::GradScaler); disabled it passes the optimiser step straight through."""
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def cosine_lr(epoch_index, total_epochs, lr=LR):
    """fedrad's lr_schedule: cosine (training::fit_options_from): the epoch's learning rate."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, epoch_index / total_epochs)))


def fit_epoch(model, images, labels, lr, seed, batch_size=BATCH, do_augment=True, amp=False, channels_last=False):
    """One epoch as training::fit runs it (fresh optimiser and loss scaler, as FedAvg sites do each
    round) on a set that lives on the model's device: on a GPU the running loss stays there, with
    no host sync per batch; amp (CUDA only) and channels_last as train.amp / train.channels_last."""
    device = images.device
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    scaler = make_scaler(amp)
    gen = torch.Generator().manual_seed(seed)
    n = images.size(0)
    perm = torch.randperm(n, generator=gen).to(device)
    loss_sum, loss_acc, seen = 0.0, None, 0
    for begin in range(0, n, batch_size):
        end = min(n, begin + batch_size)
        if end - begin < 2 and n >= 2:
            continue
        idx = perm[begin:end]
        x = images.index_select(0, idx)
        y = labels.index_select(0, idx)
        if do_augment:
            x = augment(x, gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad()
        with autocast(amp):
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cpu":
            loss_sum += loss.item() * (end - begin)
        else:
            l = loss.detach() * (end - begin)
            loss_acc = l if loss_acc is None else loss_acc + l
        seen += end - begin
    if loss_acc is not None:
        loss_sum = loss_acc.item()
    return loss_sum / max(1, seen)


@torch.no_grad()
def predict(model, images, labels, batch_size=256):
    model.eval()
    scores, loss = [], 0.0
    for begin in range(0, images.size(0), batch_size):
        logits = model(images[begin:begin + batch_size]).squeeze(1)
        y = labels[begin:begin + batch_size]
        loss += F.binary_cross_entropy_with_logits(logits, y, reduction="sum").item()
        scores.append(torch.sigmoid(logits))
    return torch.cat(scores).numpy().astype(np.float32), loss / max(1, images.size(0))


def auc(scores, labels):
    """ROC AUC (Mann-Whitney U, ties count one half)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0.5
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2.0 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    npos, nneg = labels.sum(), (~labels).sum()
    if npos == 0 or nneg == 0:
        return float("nan")
    return float((r[labels].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def get_weights(model):
    """Every parameter and buffer as float32, in state-dict order (fedrad sends the same tensors)."""
    return [v.detach().to(torch.float32).cpu().numpy() for v in model.state_dict().values()]


def set_weights(model, arrays):
    sd = model.state_dict()
    new = {k: torch.from_numpy(np.asarray(a)).to(v.dtype).reshape(v.shape) for (k, v), a in zip(sd.items(), arrays)}
    model.load_state_dict(new)


def vm_hwm_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0
