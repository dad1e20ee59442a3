"""A trained checkpoint as a small file to ship: BatchNorm folded into the convs, weights in half precision.

    python -m tools.export runs/exp/best.pt weights/detector.pt
    python evaluate.py --checkpoint weights/detector.pt        # the same numbers as runs/exp/best.pt

Not a course concept. ``best.pt`` carries what ``--resume`` needs (raw and EMA weights, AdamW's two moments
per weight, random states): about 8x the bytes of the model itself. The exported file keeps only what
``evaluate.py`` reads: the EMA (evaluated) weights, BN-folded (``tools.speed.fuse_conv_bn``), stored as float16,
plus the model config, class names and training settings. ``detector.model_from_checkpoint`` reads it back
into a float32 model (``"folded": True`` tells it the BN layers are gone). float16 keeps 11 significant bits
(a relative error of at most 2^-11 per weight); ``tests/test_export.py`` checks the detections stay the same.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from detector import model_from_checkpoint
from tools.checkpoint import CheckpointError, read_checkpoint, save_atomic

FP16_MAX = torch.finfo(torch.float16).max  # 65504: a folded weight beyond it would become inf


def export_weights(ckpt: dict) -> dict:
    """The inference-only, BN-folded, float16 form of a checkpoint written by train.py."""
    model = model_from_checkpoint(ckpt, fuse=True)  # float32, BN folded
    state = model.state_dict()
    largest = max(t.abs().max().item() for t in state.values() if t.is_floating_point())
    if largest > FP16_MAX:
        raise CheckpointError(f"a folded weight reaches {largest:.3g}, beyond float16's range {FP16_MAX}")
    return {"model": {k: t.half() if t.is_floating_point() else t for k, t in state.items()}, "folded": True,
            "model_config": ckpt["model_config"], "class_names": ckpt["class_names"],
            "train_args": ckpt["train_args"], "epoch": ckpt["epoch"], "best_map": ckpt["best_map"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a best.pt or last.pt written by train.py")
    p.add_argument("out", help="where to write the exported file, e.g. weights/detector.pt")
    args = p.parse_args(argv)
    try:
        exported = export_weights(read_checkpoint(args.checkpoint))
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_atomic(exported, Path(args.out))
    mb = lambda path: Path(path).stat().st_size / 2**20  # noqa: E731
    print(f"wrote {args.out}: {mb(args.out):.1f} MB (from {mb(args.checkpoint):.1f} MB), epoch "
          f"{exported['epoch'] + 1}, validation mAP {exported['best_map']:.4f}")


if __name__ == "__main__":
    main()
