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
