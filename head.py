"""Head: YOLOX decoupled head, anchor points and box decoding.

Course section: "Head". Paper: Ge et al., "YOLOX: Exceeding YOLO Series in 2021",
sec. 2.1 "Decoupled head" (Fig. 2) and "Anchor-free"; the (l, t, r, b) box
parametrisation is FCOS's (Tian et al., ICCV 2019, sec. 3.1).

Per FPN level: a 1x1 stem, then two parallel branches of two 3x3 convs, one for
classification (C logits per location) and one for box regression (4 distances
l, t, r, b from the location to the box sides). Each feature-map cell is one
"anchor point" at the pixel centre of its cell; ``decode`` turns distances into
xyxy pixel boxes.

Differences from the paper:

- Confidence-free: YOLOX has a third output, objectness (IoU-aware), multiplied
  into the class score. Here there is none: the class score itself is trained
  against TAL's soft targets (alignment x IoU), so it already ranks boxes by
  localisation quality (as in TOOD, YOLOv6 and YOLOv8).
- Boxes are (l, t, r, b) distances (FCOS / TOOD / YOLOv8), not YOLOX's
  (dx, dy, log w, log h), in units of the level's stride, so each level predicts
  distances of the same range.
- Each distance is a discrete distribution over 0 .. n-1 strides (``box_bins=n``, 16 as
  YOLOv8) and the box is its expectation (GFL, Li et al., NeurIPS 2020, sec. 3.3 "General
  Distribution"), trained with losses.distribution_focal_loss. ``box_bins=0``
  (``train.py --box-bins 0``) predicts one distance per side instead, ``softplus(x) * stride``
  (positive by construction), as FCOS does with exp. The distributions start uniform, as YOLOv8's
  (every first box 15 strides wide); ``box_prior=m`` (``train.py --box-prior``) starts them at m strides
  per side instead. A small, rare class then learns sooner, but in a short schedule large objects lose
  their tight boxes: AdamW barely moves the biases that hold the prior (RESULTS.md section 9). Off by default.
- Width 64, not the paper's 256: on a CPU a 256-channel head at stride 8 costs more
  than the whole backbone. The branch convs are the paper's plain 3x3 convs;
  ``depthwise=True`` (``train.py --head-conv depthwise``, YOLOX-Nano's setting) makes them
  depthwise-separable; RESULTS.md section 1 compares the two.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from neck import ConvBNAct, conv3x3


class DecoupledHead(nn.Module):
    """``forward([P3, P4, P5]) -> cls_logits (B, A, C), ltrb (B, A, 4) pixels, box_logits``, A = Σ h_i·w_i.

    ``box_logits``: with ``box_bins = n > 0``, the (B, A, 4, n) logits of each side's distance distribution
    (for the distribution focal loss); ``None`` otherwise.
    """

    def __init__(self, num_classes: int, in_channels: int = 64, width: int = 64, strides=(8, 16, 32),
                 depthwise: bool = False, prior_prob: float = 0.01, box_bins: int = 16, box_prior: float = 0.0):
        super().__init__()
        self.num_classes, self.strides, self.box_bins = num_classes, tuple(strides), box_bins
        n = len(strides)
        self.stems = nn.ModuleList(ConvBNAct(in_channels, width, 1) for _ in range(n))
        self.cls_branches = nn.ModuleList(
            nn.Sequential(conv3x3(width, width, depthwise), conv3x3(width, width, depthwise)) for _ in range(n))
        self.box_branches = nn.ModuleList(
            nn.Sequential(conv3x3(width, width, depthwise), conv3x3(width, width, depthwise)) for _ in range(n))
        self.cls_preds = nn.ModuleList(nn.Conv2d(width, num_classes, 1) for _ in range(n))
        self.box_preds = nn.ModuleList(nn.Conv2d(width, 4 * (box_bins or 1), 1) for _ in range(n))
        # Prior-probability init (RetinaNet sec. 4.1): almost every location is background, so start
        # every class score at sigmoid(b) = prior_prob (0.01) instead of 0.5. Otherwise the thousands of
        # background locations produce a huge loss in the first steps and destabilise training.
        for conv in self.cls_preds:
            nn.init.constant_(conv.bias, -math.log((1 - prior_prob) / prior_prob))
        # Box-size prior, the boxes' counterpart of the prior probability: every first box is small. Without
        # bins, softplus(0) * stride = 0.69 stride per side. With bins, bin i starts at logit i * log(q),
        # q = m / (1 + m): p_i ~ q^i, a geometric distribution whose expectation is ~m = ``box_prior`` strides
        # (2: a box 4 strides wide, RetinaNet's anchor size at every level). A uniform start (YOLOv8's;
        # box_prior=0) puts every side at (n - 1) / 2 = 7.5 strides: 120 px boxes at stride 8, whose IoU with
        # a 16 px object is ~0.02, and TAL's targets are that IoU (RESULTS.md section 9).
        for conv in self.box_preds:
            if box_bins and box_prior:
                conv.bias.data.copy_(torch.arange(box_bins).mul(math.log(box_prior / (1 + box_prior))).repeat(4))
            else:
                nn.init.zeros_(conv.bias)

    def forward(self, feats: list[torch.Tensor]):
        cls_out, box_out, logit_out = [], [], []
        for i, x in enumerate(feats):
            x = self.stems[i](x)                                       # (B, width, h, w)
            cls = self.cls_preds[i](self.cls_branches[i](x))          # (B, C, h, w)
            # fp32 from here: under autocast a 300 px distance would round to steps of 2 px in bf16 (0.25 px in
            # fp16), and the softmax over bins with it; the assigner and the loss read these boxes.
            box = self.box_preds[i](self.box_branches[i](x)).float()  # (B, 4 or 4n, h, w)
            if self.box_bins:
                logits = box.unflatten(1, (4, self.box_bins)).flatten(3)  # (B, 4, n, h*w): one distribution per side
                logit_out.append(logits)
                box = distribution_to_distance(logits, 2) * self.strides[i]  # (B, 4, h*w) pixels
            else:
                box = F.softplus(box.flatten(2)) * self.strides[i]     # (B, 4, h*w) pixels, > 0
            cls_out.append(cls.flatten(2))                            # (B, C, h*w)
            box_out.append(box)
        # Concatenate the levels P3, P4, P5 in that order, row-major inside a level (as make_anchor_points).
        box_logits = torch.cat(logit_out, 3).permute(0, 3, 1, 2) if self.box_bins else None  # (B, A, 4, n)
        return torch.cat(cls_out, 2).transpose(1, 2), torch.cat(box_out, 2).transpose(1, 2), box_logits


def distribution_to_distance(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """GFL's integral (sec. 3.3): logits over bins 0 .. n-1 along ``dim`` -> the expected bin, Σ_i softmax_i · i.
    The result is in bins (= strides); ``dim`` is removed."""
    bins = torch.arange(logits.shape[dim], dtype=logits.dtype, device=logits.device)
    shape = [1] * logits.dim()
    shape[dim] = -1
    return (logits.softmax(dim) * bins.view(shape)).sum(dim)


def make_anchor_points(feature_shapes, strides, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres of every feature-map cell, level after level.

    feature_shapes: [(h_i, w_i)], strides: [s_i] -> points (A, 2) as (x, y) pixels, strides (A,).
    Cell (row r, col c) of a stride-s map sits at ((c + 0.5) s, (r + 0.5) s) in the input image.
    """
    points, point_strides = [], []
    for (h, w), s in zip(feature_shapes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        points.append(torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5).mul(s))  # (h*w, 2)
        point_strides.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(points), torch.cat(point_strides)


def decode(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """points (A, 2) + distances (B, A, 4) -> boxes (B, A, 4) xyxy: (x - l, y - t, x + r, y + b)."""
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], -1)


def encode(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``decode``'s inverse: points (..., 2) and xyxy boxes (..., 4), broadcast against each other ->
    distances (..., 4) to the box sides, (x - x1, y - y1, x2 - x, y2 - y); all > 0 iff the point is inside."""
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], -1)
