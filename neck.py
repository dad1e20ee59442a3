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
    """A 3x3 ConvBNAct, or its depthwise-separable version (3x3 per-channel + 1x1 mixing):
    about 9x fewer multiply-adds at the same width, as YOLOX-Nano / NanoDet use on small devices."""
    if depthwise:
        return nn.Sequential(ConvBNAct(c_in, c_in, 3, groups=c_in), ConvBNAct(c_in, c_out, 1))
    return ConvBNAct(c_in, c_out, 3)


class FPN(nn.Module):
    """``forward([C3, C4, C5]) -> [P3, P4, P5]``: same spatial sizes, ``out_channels`` each.

    Features are ordered from the highest resolution to the lowest.
    """

    def __init__(self, in_channels: list[int], out_channels: int = 64, depthwise: bool = False):
        super().__init__()
        self.laterals = nn.ModuleList(ConvBNAct(c, out_channels, 1, act=False) for c in in_channels)
        self.smooth = nn.ModuleList(conv3x3(out_channels, out_channels, depthwise) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [l(f) for l, f in zip(self.laterals, feats)]  # L_i: (B, out, h_i, w_i)
        # Top-down: start at the coarsest level and add each upsampled map into the finer one.
        for i in range(len(lat) - 1, 0, -1):
            # size= (not scale_factor=2) so odd sizes work: 13x13 -> 26x26 but 7x7 -> 13x13 needs size.
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        return [s(t) for s, t in zip(self.smooth, lat)]  # P_i: (B, out, h_i, w_i)
