"""Neck: Feature Pyramid Network (FPN).

Course section: "FPN". Paper: Lin et al., "Feature Pyramid Networks for Object
Detection", CVPR 2017, sec. 3 ("top-down pathway and lateral connections", Fig. 3).

The backbone gives C3, C4, C5 (strides 8, 16, 32) with different channel counts.
The FPN turns them into P3, P4, P5 with the same ``out_channels`` each, and lets
the coarse, semantically strong C5 information flow down to the fine levels:

    L_i = lateral_i(C_i)                          1x1 conv: match channels
    T_5 = L_5;  T_i = L_i + upsample2x(T_{i+1})   top-down, nearest neighbour + sum
    P_i = smooth_i(T_i)                           3x3 conv: reduce upsampling aliasing

Differences from the paper:

- Convolutions carry BatchNorm (and the smoothing convs a SiLU), as YOLOX /
  YOLOv8 necks do; the paper's FPN uses plain convs with bias.
- Three levels (P3-P5) and no extra P6/P7: the objects here are small to medium.
- 256 channels in the paper; a small width (64) here, because on a CPU every
  channel at stride 8 is expensive.

Options (``build_neck``):

- ``PAN`` (Liu et al., "Path Aggregation Network", CVPR 2018, sec. 3.1): after the
  top-down path, a bottom-up path carries the precise low-level localisation of P3
  back up: N3 = P3, N_{i+1} = fuse(P_{i+1} + down(N_i)) with a stride-2 3x3 conv.
  The paper fuses with a 3x3 conv after the sum; so do we.
- ``block="csp"``: every 3x3 fuse/smoothing conv becomes a CSP block (Wang et al.,
  "CSPNet", CVPRW 2020), in the C3 form of YOLOv5 / YOLOX: split the channels
  with two 1x1 convs, run a few residual bottlenecks on one half only, concat, 1x1
  fuse. More depth for about the same cost as one full 3x3 conv.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias: BN has one) -> BatchNorm -> SiLU (or no activation)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__(
            nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.SiLU(inplace=True) if act else nn.Identity(),
        )


def conv3x3(c_in: int, c_out: int, depthwise: bool = False) -> nn.Module:
    """A 3x3 ConvBNAct, or its depthwise-separable version (3x3 per-channel + 1x1 mixing), as YOLOX-Nano /
    NanoDet use on small devices: 9C + C^2 multiply-adds per pixel instead of 9C^2, ~8x fewer at C = 64."""
    if depthwise:
        return nn.Sequential(ConvBNAct(c_in, c_in, 3, groups=c_in), ConvBNAct(c_in, c_out, 1))
    return ConvBNAct(c_in, c_out, 3)


class Bottleneck(nn.Module):
    """x + conv3x3(conv1x1(x)): the residual unit inside a CSP block."""

    def __init__(self, c: int):
        super().__init__()
        self.convs = nn.Sequential(ConvBNAct(c, c, 1), ConvBNAct(c, c, 3))

    def forward(self, x):
        return x + self.convs(x)


class CSPBlock(nn.Module):
    """Cross Stage Partial block (YOLOv5's C3): half the channels go through ``n`` bottlenecks,
    the other half skips them; both are concatenated and fused by a 1x1 conv.
    Only half the channels pay for the deep path, and the skip half keeps gradients short."""

    def __init__(self, c_in: int, c_out: int, n: int = 1):
        super().__init__()
        hidden = c_out // 2
        self.deep = nn.Sequential(ConvBNAct(c_in, hidden, 1), *(Bottleneck(hidden) for _ in range(n)))
        self.skip = ConvBNAct(c_in, hidden, 1)
        self.fuse = ConvBNAct(2 * hidden, c_out, 1)

    def forward(self, x):
        return self.fuse(torch.cat([self.deep(x), self.skip(x)], 1))  # (B, c_out, h, w)


def fuse_block(c_in: int, c_out: int, block: str = "conv") -> nn.Module:
    """The neck's 3x3 smoothing / fusing unit: a plain 3x3 ConvBNAct ("conv") or a CSP block ("csp")."""
    if block == "csp":
        return CSPBlock(c_in, c_out)
    if block == "conv":
        return ConvBNAct(c_in, c_out, 3)
    raise ValueError(f"neck block must be 'conv' or 'csp', got {block!r}")


class FPN(nn.Module):
    """``forward([C3, C4, C5]) -> [P3, P4, P5]``: same spatial sizes, ``out_channels`` each.

    Features are ordered from the highest resolution to the lowest.
    """

    def __init__(self, in_channels: list[int], out_channels: int = 64, block: str = "conv"):
        super().__init__()
        self.laterals = nn.ModuleList(ConvBNAct(c, out_channels, 1, act=False) for c in in_channels)
        self.smooth = nn.ModuleList(fuse_block(out_channels, out_channels, block) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [l(f) for l, f in zip(self.laterals, feats)]  # L_i: (B, out, h_i, w_i)
        # Top-down: start at the coarsest level and add each upsampled map into the finer one.
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=2, mode="nearest")  # T_i = L_i + up2(T_i+1)
        return [s(t) for s, t in zip(self.smooth, lat)]  # P_i: (B, out, h_i, w_i)


class PAN(FPN):
    """FPN + PANet's bottom-up path. Same contract: ``forward([C3, C4, C5]) -> [N3, N4, N5]``."""

    def __init__(self, in_channels: list[int], out_channels: int = 64, block: str = "conv"):
        super().__init__(in_channels, out_channels, block)
        n = len(in_channels) - 1
        self.downs = nn.ModuleList(ConvBNAct(out_channels, out_channels, 3, stride=2) for _ in range(n))
        self.fuses = nn.ModuleList(fuse_block(out_channels, out_channels, block) for _ in range(n))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = super().forward(feats)  # [P3, P4, P5] from the top-down path
        for i in range(len(outs) - 1):  # bottom-up: N3 = P3, N_{i+1} = fuse(P_{i+1} + down(N_i))
            down = self.downs[i](outs[i])                     # stride-2 3x3 conv: N_i at the coarser level's size
            outs[i + 1] = self.fuses[i](outs[i + 1] + down)
        return outs


NECKS = {"fpn": FPN, "pan": PAN}


def build_neck(kind: str, in_channels: list[int], out_channels: int = 64, block: str = "conv") -> nn.Module:
    """``kind`` in {"fpn", "pan"}, ``block`` in {"conv", "csp"}."""
    if kind not in NECKS:
        raise ValueError(f"neck must be one of {sorted(NECKS)}, got {kind!r}")
    return NECKS[kind](in_channels, out_channels, block)
