"""Speed measures, applied from train.py and evaluate.py, measured by ``python -m tools.benchmark``.

Not course concepts: each one keeps the model's outputs (and its checkpoints) exactly as they are and
only makes the same arithmetic cheaper on this kind of machine.

- ``depthwise_in_fp32``: trainable depthwise convs ignore bf16 autocast (their bf16 backward is slow).
- ``fuse_conv_bn``: BatchNorm folded into the preceding conv, for inference.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


_FP32_CLASSES: dict[type, type] = {}  # conv class -> its subclass that runs in float32


def _fp32_class(cls: type) -> type:
    """A subclass of the conv class ``cls`` whose forward, when autograd records (training), switches
    autocast off and runs in the weight's dtype (float32). Inference (no grad) runs exactly as ``cls``.
    Made once per class, so every swapped conv shares it."""
    if cls not in _FP32_CLASSES:
        def forward(self, x):
            if not torch.is_grad_enabled():  # no backward to come: nothing to gain, behave as cls
                return cls.forward(self, x)
            with torch.autocast(x.device.type, enabled=False):
                return cls.forward(self, x.to(self.weight.dtype))
        _FP32_CLASSES[cls] = type(f"Float32{cls.__name__}", (cls,), {"forward": forward})
    return _FP32_CLASSES[cls]


def depthwise_in_fp32(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Make every *trainable* depthwise conv (groups == in_channels) ignore bf16 autocast on a CPU
    (``enabled=False`` undoes it: ``python -m tools.benchmark --no-fp32-depthwise`` measures the difference).

    Why: on CPU (oneDNN) the backward of a depthwise conv on small maps is several times slower in bf16
    than in fp32; for EfficientNet's last, trainable stage (5x5 depthwise convs on 13x13 maps at 416 px)
    that was a third of the training step (RESULTS.md section 6). That is oneDNN's kernel, not cuDNN's: train.py
    turns it on for the CPU only. The forward of the large frozen early maps stays in bf16, where it is faster,
    and so does inference
    (no backward there), so validation, evaluation and ``fuse_conv_bn`` see no change.
    The class of each such conv is swapped in place for a subclass (``_fp32_class``): parameters,
    state-dict keys and checkpoints are unchanged; only the precision of that one op is.
    """
    for m in model.modules():
        if type(m) in _FP32_CLASSES.values():
            m.__class__ = type(m).__bases__[0]  # back to the original class first: no double swap
        is_depthwise = isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
        if enabled and is_depthwise and m.weight.requires_grad:
            m.__class__ = _fp32_class(type(m))
    return model


def fuse_conv_bn(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` for inference, with every BatchNorm folded into the Conv2d right before it.

    In eval mode BN is a fixed per-channel affine map, ``y = gamma * (x - mean) / sqrt(var + eps) + beta``,
    so ``BN(conv(x; W, b)) == conv(x; W', b')`` with ``W' = W * gamma / sqrt(var + eps)`` (per output
    channel) and ``b' = (b - mean) * gamma / sqrt(var + eps) + beta`` (torch's ``fuse_conv_bn_eval``).
    One memory pass less per conv (``tools.benchmark``'s "fused b1" column against "infer b1").

    Pairs are found in module registration order, which in the timm backbone and in neck/head
    (``ConvBNAct``) is also the order of execution; tests/test_backbone.py checks the outputs are unchanged.
    timm's ``BatchNormAct2d`` also holds the activation (and dropout): those are kept.
    The copy can't be trained any more (no BN statistics); the original is left untouched.

    ``dtype`` (bf16 or fp16): also store the weights in it, for a model that will only run under autocast
    to that dtype. Autocast casts every conv's fp32 weight and bias on every call; stored in ``dtype`` they
    are cast once, here. The outputs are the same (the convs see the same numbers), with a little less work
    per call. Without autocast such a model would get fp32 images for half weights: an error.
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
    return model.to(dtype) if dtype is not None else model
