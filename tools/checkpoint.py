"""Checkpoints: what train.py saves, and every way back into a model. Not a course concept.

- ``read_checkpoint``: a file written by train.py (or tools/export.py), with readable errors for a missing,
  corrupt or foreign file (``detector.model_from_checkpoint`` builds its model); ``save_atomic`` writes one safely.
- ``training_state`` / ``restore`` / ``resume_args``: what ``train.py --resume`` saves and reads back.
"""
from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

import numpy as np
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


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temp file then rename: a kill mid-write never leaves a corrupt checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def training_state(model, ema, optimizer, scaler, gen, epoch: int, step: int, planned_iters: int, best_map: float,
                   rows: list[dict], run_dir: Path, class_names: list[str], args, trained_on: str) -> dict:
    """Everything ``--resume`` needs to continue exactly, and evaluate.py needs to rebuild the model.
    "model" holds the weights to evaluate (the EMA when --ema), "train_model" the raw ones to go on training;
    "scaler" the fp16 loss scaler's state (unused, and saved anyway, in bf16 and fp32); "trained_on" the
    device and precision line the run printed."""
    eval_model = ema.module if ema is not None else model
    return {"model": eval_model.state_dict(), "train_model": model.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None, "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "step": step, "planned_iters": planned_iters,
            "best_map": best_map, "history": rows, "run_dir": str(run_dir),
            "rng": {"loader": gen.get_state(), "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate()},
            "model_config": model.config, "class_names": class_names, "train_args": vars(args),
            "trained_on": trained_on}


def restore(ckpt: dict, model, ema, optimizer, scaler, gen):
    """``training_state``'s inverse: weights, optimizer, loss scaler and every random generator as they were.
    -> (next epoch, next iteration, planned iterations, best validation mAP so far, metrics rows, run folder)."""
    model.load_state_dict(ckpt["train_model"])
    if ema is not None:
        ema.module.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"]:  # empty when the run was not in fp16; resumed in fp16 elsewhere, the scaler starts anew
        scaler.load_state_dict(ckpt["scaler"])
    gen.set_state(ckpt["rng"]["loader"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    np.random.set_state(ckpt["rng"]["numpy"])
    random.setstate(ckpt["rng"]["python"])
    return (ckpt["epoch"] + 1, ckpt["step"], ckpt["planned_iters"], ckpt["best_map"], ckpt["history"],
            Path(ckpt["run_dir"]))


def resume_args(path: str, defaults: argparse.Namespace) -> tuple[argparse.Namespace, dict]:
    """The settings a run started with, from its last.pt; a checkpoint from another version of train.py
    (state or settings missing against ``defaults``, train.py's flags) is a clear error, not a silent guess."""
    ckpt = read_checkpoint(path)
    needed = {"train_model", "optimizer", "scaler", "rng", "history", "step", "planned_iters", "train_args", "run_dir"}
    args, missing = ckpt.get("train_args", {}), sorted(needed - set(ckpt))
    missing += sorted(set(vars(defaults)) - set(args))
    if missing:
        raise CheckpointError(f"{path} cannot be resumed by this train.py (it lacks {', '.join(missing)}); "
                              "evaluate it with evaluate.py, or start a new run")
    args = argparse.Namespace(**args)
    args.resume = str(Path(ckpt["run_dir"]) / "last.pt")
    return args, ckpt
