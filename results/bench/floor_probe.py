"""Diagnostic behind RESULTS.md section 5, "The floor": per-call times of benchmark.py's backbone floor and
training step at one size, timed one column after the other and in alternation, and the floor's two ways of
sending gradients back (a scalar loss against gradients in each map's own dtype and layout).

    python results/bench/floor_probe.py --checkpoint runs/NAME/best.pt --size 640 --rounds 8
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root
from benchmark import autocast, floor_and_step  # noqa: E402
from data import DetectionDataset, build_transforms, collate, pad_targets  # noqa: E402
from runtime import load_checkpoint  # noqa: E402
from sources import load_class_names, resolve_data_root  # noqa: E402
from speed import depthwise_in_fp32  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--checkpoint", required=True)
p.add_argument("--size", type=int, default=640)
p.add_argument("--rounds", type=int, default=8)
args = p.parse_args()
root = resolve_data_root(None)
names = load_class_names(root)
model, _ = load_checkpoint(args.checkpoint, fuse=False)
depthwise_in_fp32(model)
tf = build_transforms(args.size, True, model.backbone.mean, model.backbone.std, "basic")
images, targets = collate([DetectionDataset(root, "validation", tf, names)[i] for i in range(16)])
images = images.contiguous(memory_format=torch.channels_last)
gt_boxes, gt_labels, gt_mask = pad_targets(targets)
model.train()
backbone_step, train_step = floor_and_step(model, amp=True)
floor = lambda: backbone_step(images)  # noqa: E731  benchmark.py's floor
step = lambda: train_step(images, gt_boxes, gt_labels, gt_mask)  # noqa: E731


def floor_scalar_loss():  # the floor with a scalar loss instead of gradients in each map's dtype and layout
    model.zero_grad(set_to_none=True)
    with autocast(True):
        feats = model.backbone(images)
    sum(f.float().mean() for f in feats).backward()


def ms(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000 / len(images)


for fn in (floor_scalar_loss, floor, step, floor_scalar_loss, floor, step):  # warm-up
    fn()
n, med = args.rounds, statistics.median
seq_floor, seq_step = [ms(floor) for _ in range(n)], [ms(step) for _ in range(n)]
alt = [(ms(floor), ms(step)) for _ in range(n)]
grads = [(ms(floor_scalar_loss), ms(floor)) for _ in range(n)]
print(f"{args.size} px, ms/img per call")
print(f"one after the other: floor {[round(x) for x in seq_floor]} step {[round(x) for x in seq_step]}"
      f"  step/floor {med(seq_step) / med(seq_floor):.2f}")
print(f"alternating:         floor {[round(a) for a, _ in alt]} step {[round(b) for _, b in alt]}"
      f"  step/floor {med([b for _, b in alt]) / med([a for a, _ in alt]):.2f}")
print(f"floor, alternating:  scalar loss {med([a for a, _ in grads]):.1f}  own dtype and layout {med([b for _, b in grads]):.1f}")
