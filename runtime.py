"""Machinery around a run, not a course concept: checkpoints, devices and precision.

- ``read_checkpoint`` / ``model_from_checkpoint``: a checkpoint written by train.py back into a model, with
  readable errors for a missing, corrupt or foreign file; ``save_atomic`` writes one safely.
- ``training_state`` / ``restore`` / ``resume_args``: what ``train.py --resume`` saves and reads back;
  ``new_run_dir`` and ``write_csv`` for a run's folder; ``NonFiniteGuard`` stops a diverged run.
- ``resolve_device``, ``amp_supported``, ``inference_amp``, ``default_workers``: which device, which
  precision for training and for inference, how many loader workers. Each choice was measured; the
  numbers are in RESULTS.md section 5 and ``python benchmark.py`` repeats them.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from detector import build_detector
from speed import fuse_conv_bn


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
    ``bf16``: with ``fuse``, weights stored in bfloat16 for bf16-autocast inference (``fuse_conv_bn``).
    A file written by ``export.py`` (``"folded"``) is already folded, in float16: it is loaded into the folded
    structure and computed in float32 (or bfloat16 with ``bf16``); it cannot be unfolded (``fuse=False``)."""
    model = build_detector(ckpt["model_config"])
    if ckpt.get("folded"):
        if not fuse:
            raise CheckpointError("an exported (BN-folded) file can only be evaluated, not trained or benchmarked")
        model = fuse_conv_bn(model)  # the structure of the folded model, to load the folded weights into
        model.load_state_dict({k: t.float() if t.is_floating_point() else t for k, t in ckpt["model"].items()})
        model = model.to(torch.bfloat16) if bf16 else model
    else:
        model.load_state_dict(ckpt["model"])
        if fuse:
            model = fuse_conv_bn(model, bf16)
    return model.to(device, memory_format=torch.channels_last).eval()


def inference_amp(device) -> bool:
    """Whether inference (validation, test, deployment) runs under bf16 autocast: on CUDA only.

    On a CPU, even one with native bf16, batch-1 inference is *faster in fp32* (``python benchmark.py``
    against ``--infer-amp``; RESULTS.md section 5): its depthwise convs and small feature maps gain
    nothing from bf16 arithmetic, while the data still has to be converted. Training keeps bf16 autocast,
    where the batch-16 forward + backward gains. fp32 is also exact: the mAP a user reproduces."""
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
    ``python benchmark.py --sizes 416 --workers 2`` against ``--workers 0`` measures it (RESULTS.md
    section 5). On CUDA the loader runs beside the GPU and workers hide it.
    """
    return 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temp file then rename: a kill mid-write never leaves a corrupt checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def new_run_dir(out: str, name: str, exist_ok: bool = False) -> Path:
    """runs/NAME, or runs/NAME-2, -3 ... so an earlier run is never overwritten (unless ``exist_ok``)."""
    path, k = Path(out) / name, 2
    while path.exists() and not exist_ok:
        path, k = Path(out) / f"{name}-{k}", k + 1
    path.mkdir(parents=True, exist_ok=exist_ok)
    return path


def write_csv(rows: list[dict], path: Path) -> None:
    """Rows as CSV, written to a temp file then renamed: a kill never leaves half a file."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def training_state(model, ema, optimizer, scheduler, gen, epoch, best_map, rows, planned_iters, class_names, args,
                   run_dir) -> dict:
    """Everything ``--resume`` needs to continue exactly, and ``evaluate.py`` needs to rebuild the model.
    "model" holds the weights to evaluate (the EMA when --ema), "train_model" the raw ones to go on training.
    No GradScaler state: bfloat16 has fp32's exponent range, so it needs no loss scaling."""
    eval_model = ema.module if ema is not None else model
    return {"model": eval_model.state_dict(), "train_model": model.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "best_map": best_map, "history": rows,
            "rng": {"loader": gen.get_state(), "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate()},
            "planned_iters": planned_iters, "model_config": model.config, "class_names": class_names,
            "train_args": vars(args), "run_dir": str(run_dir)}


def restore(ckpt: dict, model, ema, optimizer, scheduler, gen):
    """``training_state``'s inverse: weights, optimizer, LR schedule and every random generator as they were.
    -> (next epoch, best validation mAP so far, metrics rows, planned iterations, run folder)."""
    model.load_state_dict(ckpt["train_model"])
    if ema is not None:
        ema.module.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    gen.set_state(ckpt["rng"]["loader"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    np.random.set_state(ckpt["rng"]["numpy"])
    random.setstate(ckpt["rng"]["python"])
    return ckpt["epoch"] + 1, ckpt["best_map"], ckpt["history"], ckpt["planned_iters"], Path(ckpt["run_dir"])


def resume_args(path: str, defaults: argparse.Namespace) -> tuple[argparse.Namespace, dict]:
    """The settings a run started with, from its last.pt; a checkpoint from another version of train.py
    (state or settings missing against ``defaults``, train.py's flags) is a clear error, not a silent guess."""
    ckpt = read_checkpoint(path)
    needed = {"train_model", "optimizer", "scheduler", "rng", "history", "planned_iters", "train_args", "run_dir"}
    args, missing = ckpt.get("train_args", {}), sorted(needed - set(ckpt))
    missing += sorted(set(vars(defaults)) - set(args))
    if missing:
        raise CheckpointError(f"{path} cannot be resumed by this train.py (it lacks {', '.join(missing)}); "
                              "evaluate it with evaluate.py, or start a new run")
    args = argparse.Namespace(**args)
    args.resume = str(Path(ckpt["run_dir"]) / "last.pt")
    return args, ckpt


class NonFiniteLoss(RuntimeError):
    """Too many consecutive steps with a NaN/inf loss: training has diverged."""


class NonFiniteGuard:
    """Says whether a step's loss is finite. A NaN/inf step is skipped (one bad batch must not poison the
    weights) and reported; ``max_in_a_row`` of them in a row mean training has diverged (LR too high,
    broken data), and going on would only waste hours: ``NonFiniteLoss``."""

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row, self.in_a_row, self.skipped = max_in_a_row, 0, 0

    def finite(self, losses: dict, targets: list[dict]) -> bool:
        if torch.isfinite(losses["total"]):
            self.in_a_row = 0
            return True
        self.in_a_row, self.skipped = self.in_a_row + 1, self.skipped + 1
        ids = [t["image_id"] for t in targets]
        tqdm.write(f"warning: non-finite loss {{{', '.join(f'{k}: {v.item():.3g}' for k, v in losses.items())}}}"
                   f", step skipped (image ids {ids})")
        if self.in_a_row >= self.max_in_a_row:
            raise NonFiniteLoss(f"{self.in_a_row} consecutive steps had a non-finite loss (last image ids {ids}); "
                                "training has diverged. Try a lower --lr, or check the data with "
                                "`python datacheck.py`. Resume from the last good last.pt.")
        return False
