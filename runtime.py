"""Machinery around a run, not a course concept: checkpoints, devices and precision.

- ``read_checkpoint`` / ``model_from_checkpoint``: a checkpoint written by train.py back into a model, with
  readable errors for a missing, corrupt or foreign file; ``save_atomic`` writes one safely.
- ``resolve_device``, ``amp_supported``, ``inference_amp``, ``default_workers``: which device, which
  precision for training and for inference, how many loader workers. Each choice was measured; the
  numbers are in RESULTS.md (Speed) and ``python benchmark.py`` repeats them.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not one of ours."""


def read_checkpoint(path: str) -> dict:
    """torch.load with readable errors for a missing, corrupt or foreign file."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint written by train.py (no model_config/model)")
    return ckpt


def load_checkpoint(path: str, device="cpu", fuse: bool = True):
    """-> (fp32 model in eval mode, checkpoint dict). Raises CheckpointError with a readable message.
    ``fuse``: see ``model_from_checkpoint``."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, device, fuse), ckpt


def model_from_checkpoint(ckpt: dict, device="cpu", fuse: bool = True, bf16: bool = False):
    """The model of a checkpoint read by ``read_checkpoint``, in eval mode, channels_last.
    ``fuse``: fold BatchNorm into the convs (inference only: same outputs, faster; see ``speed.fuse_conv_bn``);
    ``bf16``: with ``fuse``, weights stored in bfloat16 for bf16-autocast inference (``fuse_conv_bn``)."""
    from detector import build_detector
    from speed import fuse_conv_bn

    model = build_detector(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    if fuse:
        model = fuse_conv_bn(model, bf16)
    return model.to(device, memory_format=torch.channels_last).eval()


def inference_amp(device) -> bool:
    """Whether inference (validation, test, deployment) runs under bf16 autocast: on CUDA only.

    On this CPU, which has native bf16, the model's inference is still *faster in fp32*
    (``python benchmark.py`` vs ``--infer-amp``: 32 vs 38 ms at 416 px, batch 1, BN folded):
    its depthwise convs and small feature maps gain nothing from bf16 arithmetic, while the data still
    has to be converted. Training keeps bf16 autocast, where batch-16 forward + backward is ~7 % faster.
    fp32 is also exact: bf16 moved test mAP by a few thousandths."""
    return torch.device(device).type == "cuda"


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"--device {name} asked for, but no CUDA GPU is available (use --device cpu)")
    return torch.device(name)


def round_to_stride(size: int, stride: int = 32) -> int:
    """Image sides must be multiples of the largest stride; round up (and say so)."""
    if size % stride:
        rounded = (size + stride - 1) // stride * stride
        print(f"[size] {size} is not a multiple of the largest stride {stride}: using {rounded}")
        return rounded
    return size


def amp_supported(device: torch.device) -> bool:
    """bfloat16 autocast pays off on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX);
    elsewhere it is emulated and slower than fp32."""
    if device.type == "cuda":
        return True
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def default_workers(device: torch.device) -> int:
    """Loader worker processes when ``--workers`` is not given: none on CPU, a few on an accelerator.

    Why none on CPU: torch already runs every core in the training step, and oneDNN's parallel convs
    wait for their slowest thread, so a worker that takes a core for augmentation stalls the whole step
    (workers are also forked anew each epoch, and the first steps after a fork are the slowest). Loading
    in this process is cheap: with ``--cache`` the images are decoded already, only augmentation is left.
    On this 2-core machine, ``python benchmark.py --sizes 416 --workers 2`` and ``--workers 0``: training
    loop 9.3 against 10.7 img/s (README, Speed). On CUDA the loader runs beside the GPU and workers hide it.
    """
    return 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temp file then rename: a kill mid-write never leaves a corrupt checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
