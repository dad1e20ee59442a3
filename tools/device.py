"""Which device a run uses, and which precision on it. Not a course concept.

One policy, by hardware, for every script (``choose_precision``):

| device                                  | training                          | inference            |
|-----------------------------------------|-----------------------------------|----------------------|
| CUDA, compute capability >= 8.0 (A100, L4, RTX 30xx and later) | bf16 autocast            | fp16 autocast        |
| CUDA below 8.0 (T4 7.5, V100 7.0, P100 6.0) | fp16 autocast + ``GradScaler``  | fp16 autocast        |
| CPU with native bf16 (AVX512-BF16 / AMX) | bf16 autocast                    | fp32                 |
| other CPU, Apple MPS                    | fp32                              | fp32                 |

bf16 has fp32's exponent range, so it needs no loss scaling, but below capability 8.0 it is emulated:
those cards are built for fp16, whose narrow range needs the gradient scaler. On a CPU, batch-1 inference
is faster in fp32 even with native bf16 (RESULTS.md section 6). ``--amp`` / ``--no-amp`` override the
policy for the phase a script runs (training in train.py, inference in evaluate.py).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
from dataclasses import dataclass

import torch


class DeviceError(RuntimeError):
    """A device that was asked for and is not there."""


@dataclass(frozen=True)
class Precision:
    """Autocast dtypes (None: float32) for training and inference, and whether training scales its loss."""
    train: torch.dtype | None
    infer: torch.dtype | None
    why: str

    @property
    def scaler(self) -> bool:
        return self.train == torch.float16  # fp16 gradients underflow without loss scaling; bf16's do not


def available_devices() -> list[str]:
    """What ``--device`` can name on this machine."""
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    return found + (["mps"] if torch.backends.mps.is_available() else [])


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU if there is one, else the CPU. ``cpu``, ``cuda``, ``cuda:N`` (or just ``N``),
    ``mps``: that one; a name that is not a device, or a device this machine lacks, is a DeviceError listing
    the ones it has. A CUDA device becomes the current one, so every synchronise and memory query means it."""
    name = name.strip().lower()
    if name == "auto":
        name = "cuda:0" if torch.cuda.is_available() else "cpu"
    elif name.isdigit():
        name = f"cuda:{name}"
    elif name in ("gpu", "cuda"):
        name = "cuda:0"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name!r} is not a device name; this machine has: "
                          f"{', '.join(available_devices())} (or auto)") from None
    if device.type == "mps":
        device = torch.device("mps")  # one Apple GPU: mps:0 is mps
    if str(device) not in available_devices():
        missing = {"cuda": "no CUDA GPU" if not torch.cuda.is_available() else f"no {device}",
                   "mps": "no Apple GPU"}.get(device.type, f"no {device}")
        raise DeviceError(f"--device {name} asked for, but there is {missing}; this machine has only: "
                          f"{', '.join(available_devices())}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix work in hardware; elsewhere a CPU emulates it, slower than fp32."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def native_half(device: torch.device) -> tuple[torch.dtype | None, str]:
    """The half precision ``device`` computes in hardware (None: none), and why."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) >= (8, 0):
            return torch.bfloat16, f"compute capability {major}.{minor} has native bf16"
        return torch.float16, f"compute capability {major}.{minor} has no native bf16 (8.0+), fp16 instead"
    if device.type == "cpu":
        native = cpu_has_native_bf16()
        return (torch.bfloat16 if native else None), f"this CPU has {'' if native else 'no '}native bf16"
    return None, f"{device.type} runs in fp32"


def choose_precision(device: torch.device, amp: bool | None = None, phase: str = "train") -> Precision:
    """The policy of the table above. ``amp`` (``--amp`` / ``--no-amp``) switches the autocast of ``phase``
    ("train" or "infer") on or off; on MPS it changes nothing (no loss scaler there, so fp32)."""
    half, why = native_half(device)
    train = half
    # Inference: fp16 on every CUDA card, bf16 ones too: fp16's 10-bit mantissa moves box corners ~10x less than
    # bf16's 7 bits (RESULTS.md section 6), and its range is ample for a forward pass. CPU: fp32 is faster.
    infer = torch.float16 if device.type == "cuda" else None
    if amp is not None and device.type != "mps":
        forced = (half or torch.bfloat16) if amp else None  # a CPU without native bf16 emulates it
        train, infer = (forced, infer) if phase == "train" else (train, forced)
        why += f"; --{'' if amp else 'no-'}amp for {'training' if phase == 'train' else 'inference'}"
    return Precision(train, infer, why)


@torch.no_grad()
def autocast_problem(model, images: torch.Tensor, dtype: torch.dtype, max_px: float = 2.0) -> str | None:
    """Why autocast to ``dtype`` must not be used for ``model`` on this device, or None when it is fine: one batch
    forward in fp32 and under the autocast; its outputs must be finite, and its boxes within ``max_px`` pixels of
    fp32's on average (GTX 16xx and other cards give NaN or garbage in fp16). ``model`` returns a DetectorOutput."""
    was_training = model.training
    model.eval()
    try:
        reference = model(images)
        with autocast(images.device, dtype):
            half = model(images)
    finally:
        model.train(was_training)
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    if not (torch.isfinite(half.cls_logits).all() and torch.isfinite(half.boxes).all()):
        return f"a {name} forward pass gave non-finite outputs on this device"
    moved = float((half.boxes.float() - reference.boxes.float()).abs().mean())
    if moved > max_px:
        return f"a {name} forward pass moved the boxes by {moved:.0f} px on average against fp32"
    return None


def describe(device: torch.device, precision: Precision) -> str:
    """The first line a run prints: which device and precision, and why."""
    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get
    where = str(device)
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    scaler = " + GradScaler" if precision.scaler else ""
    return (f"[device] {where}: training {name(precision.train)}{scaler}, inference {name(precision.infer)} "
            f"({precision.why})")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing for float32 (``dtype`` None)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def default_workers(device: torch.device) -> int:
    """Loader worker processes when ``--workers`` is not given: none on CPU, up to 8 beside a GPU.

    Why none on CPU: torch already runs every core in the training step, and oneDNN's parallel convs
    wait for their slowest thread, so a worker that takes a core for augmentation stalls the whole step
    (``python -m tools.benchmark --sizes 416 --workers 2`` against ``--workers 0``; RESULTS.md section 6).
    Beside a GPU the CPU is idle during the step, and workers prepare the next batches meanwhile: one worker
    (one core, mosaic and jitter, uint8 out) prepares ~80 images/s at 416 px, ~50 at 640, and one H200 steps
    at ~450 (RESULTS.md section 6), so as many as 8 (a free Colab has 2 cores: 2). Not on MPS nor where processes
    start by "spawn" (macOS, Windows): there each worker re-imports torch and receives its own copy of the
    decoded-image cache (~0.7 GB for the stand-in); none is measured here.
    """
    if device.type in ("cpu", "mps") or multiprocessing.get_start_method(allow_none=True) == "spawn":
        return 0
    return min(8, os.cpu_count() or 1)
