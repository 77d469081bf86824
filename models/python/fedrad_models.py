"""PyTorch definitions of fedrad's models, for using a fedrad model without fedrad.

The parameter names match the C++ modules in models/, so the state dict that fedrad saves as
`global.pt` loads directly:

    import json, torch
    from fedrad_models import Classifier
    meta = json.load(open("out/global.json"))
    model = Classifier(**meta["model"])
    model.load_state_dict(torch.load("out/global.pt"))
    model.eval()
    prob = torch.sigmoid(model(x))        # x: [N, 1, S, S], normalised as meta["data"] says
    positive = prob >= meta["threshold"]

Segmentation models (task: segmentation) are a U-Net; `meta["model"]` holds its options:

    from fedrad_models import UNet
    model = UNet(**meta["model"])          # dims, in_channels, out_channels, width, depth, norm
    model.load_state_dict(torch.load("out/segmentation/global.pt"))
    classes = model(x).argmax(1)           # x: [N, C, D, H, W] (3D) or [N, C, H, W] (2D), each
                                           # channel z-scored over the non-zero foreground
"""
import torch
from torch import nn


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    raise ValueError(f"unknown normalisation {kind!r}")


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = make_norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = make_norm(norm, out_channels)
        self.has_down = stride != 1 or in_channels != out_channels
        if self.has_down:
            self.down_conv = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
            self.down_norm = make_norm(norm, out_channels)

    def forward(self, x):
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        shortcut = self.down_norm(self.down_conv(x)) if self.has_down else x
        return torch.relu(out + shortcut)


class Classifier(nn.Module):
    def __init__(self, in_channels=1, width=16, stages=3, norm="batch", dropout=0.0, num_outputs=1, **_):
        super().__init__()
        self.stem_conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.stem_norm = make_norm(norm, width)
        blocks, channels = [], width
        for s in range(stages):
            out = width << s
            blocks.append(ResidualBlock(channels, out, 1 if s == 0 else 2, norm))
            channels = out
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_outputs)

    def forward(self, x):
        h = torch.relu(self.stem_norm(self.stem_conv(x)))
        for block in self.blocks:
            h = block(h)
        return self.head(self.dropout(h.mean(dim=(2, 3))))


def make_norm_nd(kind: str, channels: int, dims: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels) if dims == 3 else nn.BatchNorm2d(channels)
    raise ValueError(f"unknown normalisation {kind!r}")


class UNetBlock(nn.Module):
    def __init__(self, dims: int, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.conv1 = conv(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = make_norm_nd(norm, out_channels, dims)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = make_norm_nd(norm, out_channels, dims)

    def forward(self, x):
        x = nn.functional.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        return nn.functional.leaky_relu(self.norm2(self.conv2(x)), 0.01)


class UNet(nn.Module):
    """models/unet.h: `depth` levels of width * 2^l channels, max pooling down, transposed
    convolutions up, skip connections concatenated, a 1x1 head with one logit per class."""

    def __init__(self, dims=3, in_channels=1, out_channels=2, width=8, depth=3, norm="instance", **_):
        super().__init__()
        self.dims, self.depth = dims, depth
        up = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        head = nn.Conv3d if dims == 3 else nn.Conv2d
        chans = [width << level for level in range(depth)]
        self.enc = nn.ModuleList(
            UNetBlock(dims, in_channels if level == 0 else chans[level - 1], chans[level], norm)
            for level in range(depth))
        self.up = nn.ModuleList(up(chans[level + 1], chans[level], 2, stride=2) for level in range(depth - 1))
        self.dec = nn.ModuleList(UNetBlock(dims, 2 * chans[level], chans[level], norm) for level in range(depth - 1))
        self.head = head(width, out_channels, 1)

    def forward(self, x):
        pool = nn.functional.max_pool3d if self.dims == 3 else nn.functional.max_pool2d
        skips, h = [], x
        for level in range(self.depth):
            if level > 0:
                h = pool(h, 2)
            h = self.enc[level](h)
            skips.append(h)
        for level in range(self.depth - 2, -1, -1):
            h = self.dec[level](torch.cat([self.up[level](h), skips[level]], 1))
        return self.head(h)
