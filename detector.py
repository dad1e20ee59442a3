"""The detector: backbone -> neck -> head, plus the anchor points the head's outputs refer to.

This file only composes the parts (backbone.py, neck.py, head.py) and rebuilds a model from the
plain config dict that checkpoints store (``model_from_checkpoint``), so ``evaluate.py`` needs nothing
but the checkpoint.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from backbone import Backbone
from head import DecoupledHead, decode, make_anchor_points
from neck import build_neck
from tools.checkpoint import CheckpointError, read_checkpoint
from tools.speed import fuse_conv_bn


class DetectorOutput(NamedTuple):
    """What ``Detector.forward`` returns; unpacks like a tuple (``cls_logits, boxes, *_ = model(x)``)."""
    cls_logits: torch.Tensor         # (B, A, C) class logits
    boxes: torch.Tensor              # (B, A, 4) xyxy pixels
    points: torch.Tensor             # (A, 2) anchor points, (x, y) pixels
    strides: torch.Tensor            # (A,) stride of each anchor point's level
    box_logits: torch.Tensor | None  # (B, A, 4, n) distance distributions with box_bins = n, else None


class Detector(nn.Module):
    """``forward(images (B,3,H,W)) -> DetectorOutput``: class logits, xyxy pixel boxes, anchor points.

    H and W must be multiples of the largest stride (32) so every level tiles the image exactly.
    ``strides``: the levels the head predicts at; (4, 8, 16, 32) adds a stride-4 level on the backbone's C2.
    """

    def __init__(self, num_classes: int, backbone: str = "tf_efficientnet_lite0", pretrained: bool = True,
                 weights: str | None = None, unfreeze: int = 2, width: int = 64, neck: str = "fpn",
                 neck_block: str = "conv", depthwise_head: bool = False, box_bins: int = 16,
                 strides: tuple[int, ...] = (8, 16, 32), box_prior: float = 0.0):
        super().__init__()
        # Everything needed to rebuild this model; saved in checkpoints (weights come from the checkpoint).
        self.config = dict(num_classes=num_classes, backbone=backbone, unfreeze=unfreeze, width=width, neck=neck,
                           neck_block=neck_block, depthwise_head=depthwise_head, box_bins=box_bins,
                           strides=tuple(strides))
        self.backbone = Backbone(backbone, pretrained=pretrained, unfreeze_last=unfreeze, weights=weights,
                                 strides=tuple(strides))
        self.neck = build_neck(neck, self.backbone.channels, width, neck_block)
        self.head = DecoupledHead(num_classes, width, width, self.backbone.strides, depthwise=depthwise_head,
                                  box_bins=box_bins, box_prior=box_prior)
        self.strides = self.backbone.strides
        self._points = {}  # (H, W) -> (anchor points, their strides), computed once per input size

    def anchor_points(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        shapes = tuple(tuple(f.shape[-2:]) for f in feats)
        if shapes not in self._points:
            self._points[shapes] = make_anchor_points(shapes, self.strides, feats[0].device)
        return self._points[shapes]

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        feats = self.neck(self.backbone(images))     # [P3, P4, P5] (by default), (B, width, h_i, w_i)
        cls_logits, ltrb, box_logits = self.head(feats)  # (B, A, C), (B, A, 4) pixel distances, (B, A, 4, n)
        points, strides = self.anchor_points(feats)  # (A, 2), (A,)
        return DetectorOutput(cls_logits, decode(points, ltrb), points, strides, box_logits)


def build_detector(config: dict, pretrained: bool = False) -> Detector:
    """Rebuild a Detector from ``Detector.config`` (no download: a checkpoint brings the weights)."""
    return Detector(pretrained=pretrained, **config)


def load_checkpoint(path: str, device="cpu", fuse: bool = True):
    """-> (fp32 model in eval mode, checkpoint dict). Raises CheckpointError with a readable message.
    ``fuse``: see ``model_from_checkpoint``."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, device, fuse), ckpt


def model_from_checkpoint(ckpt: dict, device="cpu", fuse: bool = True, dtype: torch.dtype | None = None):
    """The model of a checkpoint read by ``read_checkpoint``, in eval mode, channels_last.
    ``fuse``: fold BatchNorm into the convs (inference only: same outputs, faster; ``tools.speed.fuse_conv_bn``);
    ``dtype``: with ``fuse``, weights stored in bf16 / fp16 for inference under autocast to it.
    A file written by ``tools/export.py`` (``"folded"``) is already folded, in float16: it is loaded into the folded
    structure and computed in float32 (or ``dtype``); it cannot be unfolded (``fuse=False``)."""
    model = build_detector(ckpt["model_config"])
    if ckpt.get("folded"):
        if not fuse:
            raise CheckpointError("an exported (BN-folded) file can only be evaluated, not trained or benchmarked")
        model = fuse_conv_bn(model)  # the structure of the folded model, to load the folded weights into
        model.load_state_dict({k: t.float() if t.is_floating_point() else t for k, t in ckpt["model"].items()})
        model = model.to(dtype) if dtype is not None else model
    else:
        model.load_state_dict(ckpt["model"])
        if fuse:
            model = fuse_conv_bn(model, dtype)
    return model.to(device, memory_format=torch.channels_last).eval()
