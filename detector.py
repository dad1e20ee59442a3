"""The detector: backbone -> neck -> head, plus the anchor points the head's outputs refer to.

This file only composes the parts (backbone.py, neck.py, head.py), rebuilds a model from the
plain config dict that checkpoints store, so ``evaluate.py`` needs nothing but the checkpoint, and
folds BatchNorm into the convolutions for inference (``fuse_conv_bn``).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from backbone import Backbone
from head import DecoupledHead, decode, make_anchor_points
from neck import build_neck


class Detector(nn.Module):
    """``forward(images (B,3,H,W)) -> cls_logits (B,A,C), pred_boxes (B,A,4) xyxy pixels, points (A,2)``.

    H and W must be multiples of the largest stride (32) so every level tiles the image exactly.
    """

    def __init__(self, num_classes: int, backbone: str = "tf_efficientnet_lite0", pretrained: bool = True,
                 weights: str | None = None, unfreeze: int = 2, width: int = 64, neck: str = "fpn",
                 neck_block: str = "conv", depthwise_head: bool = True):
        super().__init__()
        # Everything needed to rebuild this model; saved in checkpoints (weights come from the checkpoint).
        self.config = dict(num_classes=num_classes, backbone=backbone, unfreeze=unfreeze, width=width, neck=neck,
                           neck_block=neck_block, depthwise_head=depthwise_head)
        self.backbone = Backbone(backbone, pretrained=pretrained, unfreeze_last=unfreeze, weights=weights)
        self.neck = build_neck(neck, self.backbone.channels, width, neck_block)
        self.head = DecoupledHead(num_classes, width, width, self.backbone.strides, depthwise=depthwise_head)
        self.strides = self.backbone.strides
        self._points = {}  # (H, W) -> anchor points, computed once per input size

    def anchor_points(self, feats: list[torch.Tensor]) -> torch.Tensor:
        shapes = tuple(tuple(f.shape[-2:]) for f in feats)
        if shapes not in self._points:
            self._points[shapes] = make_anchor_points(shapes, self.strides, feats[0].device)[0]
        return self._points[shapes]

    def forward(self, images: torch.Tensor):
        feats = self.neck(self.backbone(images))     # [P3, P4, P5], (B, width, h_i, w_i)
        cls_logits, ltrb = self.head(feats)          # (B, A, C), (B, A, 4) pixel distances
        points = self.anchor_points(feats)           # (A, 2)
        return cls_logits, decode(points, ltrb), points


def build_detector(config: dict, pretrained: bool = False) -> Detector:
    """Rebuild a Detector from ``Detector.config`` (no download: a checkpoint brings the weights)."""
    return Detector(pretrained=pretrained, **config)


def fuse_conv_bn(model: nn.Module, bf16: bool = False) -> nn.Module:
    """A copy of ``model`` for inference, with every BatchNorm folded into the Conv2d right before it.

    In eval mode BN is a fixed per-channel affine map, ``y = gamma * (x - mean) / sqrt(var + eps) + beta``,
    so ``BN(conv(x; W, b)) == conv(x; W', b')`` with ``W' = W * gamma / sqrt(var + eps)`` (per output
    channel) and ``b' = (b - mean) * gamma / sqrt(var + eps) + beta`` (torch's ``fuse_conv_bn_eval``).
    One memory pass less per conv: on this CPU about 15% of batch-1 inference (see benchmark.py).

    Pairs are found in module registration order, which in the timm backbone and in neck/head
    (``ConvBNAct``) is also the order of execution; tests/test_model.py checks the outputs are unchanged.
    timm's ``BatchNormAct2d`` also holds the activation (and dropout): those are kept.
    The copy can't be trained any more (no BN statistics); the original is left untouched.

    ``bf16``: also store the weights in bfloat16, for a model that will only run under bf16 autocast.
    Autocast casts every conv's fp32 weight and bias to bf16 on every call; stored in bf16 they are cast
    once, here. The outputs are the same (the convs see the same bf16 numbers), with a little less work
    per call. Without autocast such a model would get fp32 images for bf16 weights: an error.
    """
    model = copy.deepcopy(model).eval()
    last_conv = None  # (parent module, attribute name, conv) of the most recent leaf, if it was a Conv2d

    def walk(module: nn.Module):
        nonlocal last_conv
        for name, child in module.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and last_conv is not None:
                parent, conv_name, conv = last_conv
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, child))
                rest = [m for m in (getattr(child, "drop", None), getattr(child, "act", None))
                        if m is not None and not isinstance(m, nn.Identity)]
                setattr(module, name, nn.Sequential(*rest) if rest else nn.Identity())
                last_conv = None
            elif isinstance(child, nn.Conv2d):
                last_conv = (module, name, child)
            elif isinstance(child, nn.Identity):  # timm's placeholders (no SE, no anti-aliasing) change nothing
                continue
            elif next(child.children(), None) is None:  # any other leaf (activation, pooling ...) breaks the pair
                last_conv = None
            else:
                walk(child)

    walk(model)
    return model.to(torch.bfloat16) if bf16 else model
