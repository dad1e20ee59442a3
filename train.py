"""Training: a plain PyTorch loop, no framework.

Course section: "Training". The step, in ``train_one_epoch``, is one block:
forward -> assign -> loss -> backward -> step -> EMA. ``main`` reads top to bottom around it: data and
model, optimizer, then per epoch train, validate, save ``last.pt`` (and ``best.pt`` on the best validation
mAP); at the end ``best.pt`` is evaluated on the test split. ``parse_args``, at the end of this file, is the
recipe: every default the run uses, each paper's own value named beside it.

    python train.py --epochs 80                      # the default recipe: TAL + GIoU + DFL, mosaic, EMA
    python train.py --time 10                        # 10 minutes of training; the LR schedule fits the budget
    python train.py --resume runs/exp/last.pt        # continue exactly where a run stopped

It picks the device and precision itself (tools/device.py): the GPU when there is one, training in bf16 where
the hardware has it natively, in fp16 with a gradient scaler on older GPUs (a T4), validating in fp16; the CPU
otherwise.

Differences from the papers' recipes (TOOD / YOLOX use SGD, 300 epochs, 8 GPUs):

- AdamW with a linear warm-up then a cosine decay, set every iteration (``lr_at``): it trains a small
  head on a mostly frozen backbone well with a batch of 16 on a CPU.
- No weight decay on BatchNorm weights and biases (they only scale and shift).
- Optional warm-up with the prediction-free assigner for the first N epochs, as TOOD does with ATSS
  (TOOD sec. 4, "Implementation details").
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from timm.utils import ModelEmaV3
from tqdm import tqdm

from assign import SimpleAssigner, TaskAlignedAssigner
from data import (AUG_LEVELS, DataError, DetectionDataset, EpochSampler, build_transforms, collate,
                  dataset_image_size, pad_targets)
from detector import Detector
from evaluate import evaluate
from losses import BOX_LOSSES, CLS_LOSSES, DetectionLoss
from neck import NECKS
from tools.augment import multi_scale
from tools.checkpoint import CheckpointError, restore, resume_args, save_atomic, training_state
from tools.checks import round_to_stride
from tools.device import (DeviceError, Precision, autocast, autocast_problem, choose_precision, default_workers,
                          describe, resolve_device)
from tools.metrics import format_results, metrics_summary, per_class_ap
from tools.plots import plot_history, plot_pr_curves, save
from tools.run import NonFiniteGuard, NonFiniteLoss, new_run_dir, write_csv
from tools.sources import load_class_names, resolve_data_root
from tools.speed import depthwise_in_fp32, fuse_conv_bn


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, backbone_lr: float = 1.0):
    """AdamW over trainable parameters; 1-D ones (BN weights, biases) get no weight decay; the backbone's trainable
    stages peak at ``backbone_lr`` x ``lr`` (``initial_lr``, which ``lr_at`` scales every iteration)."""
    groups = {}  # (LR factor, weight decay) -> parameters
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (backbone_lr if name.startswith("backbone.") else 1.0, weight_decay if p.ndim > 1 else 0.0)
            groups.setdefault(key, []).append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": wd, "initial_lr": lr * f, "lr": lr * f}
                              for (f, wd), ps in groups.items()], lr=lr)


def lr_at(it: int, total: int, warmup: int, final_ratio: float = 0.05) -> float:
    """The LR factor of iteration ``it`` (0-based): linear 0 -> 1 over ``warmup`` iterations, then a cosine
    from 1 down to ``final_ratio`` at iteration ``total``. A plain function, as nanoGPT's ``get_lr``: a
    ``--time`` run re-plans its schedule by changing ``total``, nothing else."""
    if it < warmup:
        return (it + 1) / warmup
    progress = min(1.0, (it - warmup) / max(1, total - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def iters_that_fit(seconds: float, done_iters: int, budget_s: float, max_iters: int) -> int:
    """``--time``: how many training iterations in total fit the budget, from the mean time per iteration
    so far (``seconds`` of training for ``done_iters``; validation excluded). Never fewer than already done,
    never more than ``--epochs`` worth. Counted in iterations, not epochs, so the budget is used to the end."""
    return max(done_iters, min(max_iters, int(budget_s * done_iters / seconds)))


@dataclass
class Plan:
    """Where a run stands, in optimizer iterations: ``done`` of the ``total`` planned (``--epochs`` worth, or
    with ``--time`` what fits, re-planned after every epoch), the first ``warmup`` of them warming the LR up."""
    done: int
    total: int
    warmup: int
    per_epoch: int  # iterations in one epoch (batches of the training loader)

    @property
    def epochs(self) -> int:
        """Planned epochs, the last one possibly partial."""
        return math.ceil(self.total / self.per_epoch)


class Update(NamedTuple):
    """What the end of a step updates: AdamW, the fp16 loss scaler (a no-op in bf16 and fp32), the EMA (or None)."""
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None


def assigner_for_epoch(epoch: int, args):
    """The simple assigner for the first ``warmup_assigner_epochs`` epochs (0-based), then ``--assigner``."""
    if epoch < args.warmup_assigner_epochs or args.assigner == "simple":
        return SimpleAssigner()
    return TaskAlignedAssigner(topk=args.tal_topk, alpha=args.tal_alpha, beta=args.tal_beta)


def aug_for_epoch(epoch: int, total_epochs: int, args) -> tuple[str, int]:
    """(augmentation level, copy-paste donors) for this epoch: ``--aug`` and ``--copy-paste``, except that
    with strong aug the last ``close_mosaic`` epochs (default: the last eighth) drop to basic aug without
    copy-paste: mosaic and pasted images are unlike test images, so the model finishes on realistic ones
    (YOLOX sec. 2.3; RESULTS.md section 4 measures the length)."""
    close = math.ceil(total_epochs / 8) if args.close_mosaic is None else args.close_mosaic
    if args.aug == "strong" and epoch >= total_epochs - close:
        return "basic", 0
    return args.aug, args.copy_paste


def batch_to(device, images, targets, scale_frac: float):
    """A loader batch on ``device``: uint8 images (B, 3, S, S) copied as they are (a quarter of float's bytes),
    then float 0..255 pixels there, in channels_last (NHWC, the layout oneDNN's and cuDNN's fast conv kernels
    want), and the padded GT (B, M, ...); with ``--multi-scale`` resized to a random side (tools/augment.py).
    ``non_blocking`` only on CUDA, whose loader pins its memory: the copy then overlaps the work still running
    there. From unpinned memory (MPS) an asynchronous copy may read a tensor already freed."""
    pinned = device.type == "cuda"
    images = images.to(device, memory_format=torch.channels_last, non_blocking=pinned).float()  # (B,3,S,S) pixels
    gt_boxes, gt_labels, gt_mask = (t.to(device, non_blocking=pinned) for t in pad_targets(targets))
    images, gt_boxes = multi_scale(images, gt_boxes, scale_frac)
    return images, gt_boxes, gt_labels, gt_mask


def train_one_epoch(model, loader, assigner, criterion, update: Update, plan: Plan, args, dtype) -> dict:
    """One pass over ``loader`` from iteration ``plan.done``, stopping at ``plan.total`` (the last, partial
    epoch of a ``--time`` run); ``plan.done`` counts every batch. Returns the epoch's mean losses and its steps."""
    model.train()
    optimizer, scaler, ema = update
    device = next(model.parameters()).device
    guard, sums = NonFiniteGuard(args.max_bad_steps), {"loss": 0.0, "loss_cls": 0.0, "loss_box": 0.0}
    finite = overflows = 0  # steps with a finite loss; of those, steps the fp16 scaler skipped
    scale = scaler.get_scale()  # the fp16 loss scale (1.0 when the scaler is off); read once per step below
    # islice stops the loader at the plan's end without fetching one more batch
    batches = min(len(loader), plan.total - plan.done)
    epoch = plan.done // plan.per_epoch
    bar = tqdm(itertools.islice(loader, batches), desc=f"epoch {epoch + 1}", total=batches, leave=False)
    t0 = time.time()
    for images, targets in bar:
        images, gt_boxes, gt_labels, gt_mask = batch_to(device, images, targets, args.multi_scale)
        for group in optimizer.param_groups:  # this iteration's LR
            group["lr"] = group["initial_lr"] * lr_at(plan.done, plan.total, plan.warmup)
        plan.done += 1
        # ---------------- the step: forward -> assign -> loss -> backward -> step -> EMA
        with autocast(device, dtype):               # bf16 / fp16 where the hardware has it (tools/device.py)
            out = model(images)                     # (B, A, C) logits, (B, A, 4) xyxy boxes, (A, 2) points ...
        # The assigner sees detached predictions: assignment is a choice, not something to backprop through.
        assignment = assigner(out.cls_logits.detach().float().sigmoid(), out.boxes.detach(), out.points,
                              out.strides, gt_labels, gt_boxes, gt_mask)
        losses = criterion(out.cls_logits, out.boxes, assignment, out.box_logits, out.points, out.strides)
        if not guard.finite(losses, targets):       # NaN/inf: no update (and too many in a row stop the run)
            continue
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()    # fp16 only: the loss scaled up so small gradients survive
        scaler.unscale_(optimizer)                  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        scaler.step(optimizer)                      # AdamW, unless a fp16 gradient overflowed
        scaler.update()                             # an overflow halves the scale: the step was skipped
        previous, scale = scale, scaler.get_scale()
        stepped = scale >= previous
        if ema is not None and stepped:             # a skipped step changed no weight: nothing to average
            ema.update(model, step=plan.done)
        # ---------------- end of the step; the rest is bookkeeping
        finite, overflows = finite + 1, overflows + (not stepped)
        for name, value in losses.items():  # total, cls, box (and dfl with --box-bins)
            key = "loss" if name == "total" else f"loss_{name}"
            sums[key] = sums.get(key, 0.0) + value.item()
        bar.set_postfix(loss=f"{sums['loss'] / finite:.3f}", cls=f"{sums['loss_cls'] / finite:.3f}",
                        box=f"{sums['loss_box'] / finite:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}",
                        img_s=f"{finite * loader.batch_size / (time.time() - t0):.1f}", refresh=False,
                        **({"scale": f"{scale:.0f}"} if scaler.is_enabled() else {}))
    # skipped: steps without an update, for a non-finite loss or (fp16) an overflowing gradient
    return {k: v / max(finite, 1) for k, v in sums.items()} | {"skipped": guard.skipped + overflows,
                                                               "steps": finite + guard.skipped}


# --------------------------------------------------------------------------- the run around the loop
def make_split(root, name: str, class_names: list[str], args) -> DetectionDataset:
    """One split of the dataset: the training split augmented (``--aug``, ``--jitter``, ``--copy-paste``),
    validation and test only letterboxed."""
    train = name == "train"
    transform = build_transforms(args.img_size, train, args.aug if train else "none", args.jitter)
    return DetectionDataset(root, name, transform, class_names, seed=args.seed, strict=args.strict,
                            cache=args.cache, copy_paste=args.copy_paste if train else 0)


def make_loader(ds: DetectionDataset, args, device, workers: int, shuffle_with=None):
    """A DataLoader over ``ds``. The training one (``shuffle_with`` its seeded generator) shuffles, hands the
    dataset ``(epoch, index)`` pairs (``data.EpochSampler``: call ``loader.sampler.set_epoch``) and drops the
    last partial batch, so every step sees a full batch. Workers persist from epoch to epoch: starting them
    re-imports torch and albumentations in each, seconds that a GPU would wait at every epoch's start."""
    train = shuffle_with is not None
    sampler = EpochSampler(len(ds), shuffle_with) if train else None
    return torch.utils.data.DataLoader(ds, args.batch_size, sampler=sampler, drop_last=train, collate_fn=collate,
                                       num_workers=workers, persistent_workers=workers > 0,
                                       pin_memory=device.type == "cuda")


def validate(model, loader, dtype, class_names: list[str]) -> dict:
    """Validation mAP of ``model``, and AP@[.5:.95] per class (``val_ap_NAME``; -1 for a class with no box in
    the split): the row's columns."""
    res, _ = evaluate(model, loader, desc="val", dtype=dtype)
    per_class = {f"val_ap_{name}": round(ap, 5) for name, ap in per_class_ap(res, class_names).items()}
    return {"val_map": round(float(res["map"]), 5), "val_map50": round(float(res["map_50"]), 5),
            "val_map75": round(float(res["map_75"]), 5), **per_class}


def classes_not_learning(row: dict, after_epochs: int = 3) -> list[str]:
    """The classes whose validation AP is still exactly 0 at the end of epoch ``after_epochs`` or later: nothing
    of theirs is found yet. A rare or small class can stall for epochs while the others learn (RESULTS.md section 9)."""
    if row["epoch"] < after_epochs:
        return []
    return [key[len("val_ap_"):] for key, ap in row.items() if key.startswith("val_ap_") and ap == 0]


MACHINE_FLAGS = ("device", "workers", "amp")  # what --resume takes from the command line, not the checkpoint


def resume_on_this_machine(given: argparse.Namespace) -> tuple[argparse.Namespace, dict, str]:
    """``--resume``: the settings the run started with, from its last.pt, except ``MACHINE_FLAGS`` given on this
    command line (a Colab GPU run continued at home: ``--resume last.pt --device cpu``). -> (settings,
    checkpoint, what changed or was ignored, for the run's first line)."""
    defaults = parse_args([])
    args, ckpt = resume_args(given.resume, defaults)
    said = {k for k, v in vars(given).items() if v != getattr(defaults, k) and k != "resume"}
    changed = [f"--{k} {getattr(given, k)} (was {getattr(args, k)})" for k in MACHINE_FLAGS
               if k in said and getattr(given, k) != getattr(args, k)]
    for k in MACHINE_FLAGS:
        if k in said:
            setattr(args, k, getattr(given, k))
    ignored = sorted(f"--{k.replace('_', '-')}" for k in said - set(MACHINE_FLAGS))
    return args, ckpt, (f"; resumed with {', '.join(changed)}" if changed else "") + (
        f"; ignored {', '.join(ignored)} (a resumed run keeps its recipe)" if ignored else "")


def test_best(model, run_dir: Path, rows: list[dict], test_loader, dtype, batch_size: int,
              per_epoch: int) -> dict:
    """Evaluate best.pt (selected on validation) on the test split; print the numbers, write pr.png and
    test_results.json. BN folded, in inference precision, as evaluate.py loads a checkpoint: the test numbers
    are the deployed model's. ``model`` is the training model, into which best.pt's weights are loaded."""
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(best["model"])  # the EMA weights when --ema
    res, _ = evaluate(fuse_conv_bn(model, dtype), test_loader, desc="test", dtype=dtype)
    print(f"best checkpoint: epoch {best['epoch'] + 1} (val mAP {best['best_map']:.4f}), "
          f"{run_dir / 'best.pt'}")
    metrics = metrics_summary(res, best["class_names"])
    print(format_results(metrics))
    save(plot_pr_curves(res, best["class_names"]), run_dir / "pr.png")
    train_s, steps = sum(r["train_s"] for r in rows), sum(r["steps"] for r in rows)
    summary = {**metrics, "best_epoch": best["epoch"] + 1, "epochs": round(steps / per_epoch, 1),
               "train_minutes": round(train_s / 60, 1),
               "train_img_per_s": round(steps * batch_size / train_s, 2)}
    (run_dir / "test_results.json").write_text(json.dumps(summary, indent=1))
    print(f"TEST mAP@[.5:.95] {res['map']:.4f}  mAP50 {res['map_50']:.4f}  mAP75 {res['map_75']:.4f}")
    return res


# --------------------------------------------------------------------------- main
def main(argv=None):
    args, ckpt, changes = parse_args(argv), None, ""
    try:
        if args.resume:  # exactly the settings it started with, but for the machine it now runs on
            args, ckpt, changes = resume_on_this_machine(args)
        device = resolve_device(args.device)
    except (CheckpointError, DeviceError) as e:
        sys.exit(f"error: {e}")
    precision = choose_precision(device, args.amp, "train")
    print(describe(device, precision) + changes)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # ---- data and model
    try:
        root = resolve_data_root(args.data)
        class_names = load_class_names(root)
        args.img_size = round_to_stride(args.img_size or dataset_image_size(root))
        model = Detector(len(class_names), backbone=args.backbone, pretrained=ckpt is None,
                         weights=args.weights, unfreeze=args.unfreeze, width=args.width, neck=args.neck,
                         neck_block=args.neck_block, depthwise_head=args.head_conv == "depthwise",
                         box_bins=args.box_bins, strides=args.strides, box_prior=args.box_prior)
        model = model.to(device, memory_format=torch.channels_last)
        depthwise_in_fp32(model, enabled=device.type == "cpu")  # oneDNN's bf16 depthwise backward is slow
        train_ds = make_split(root, "train", class_names, args)
        val_ds = make_split(root, "validation", class_names, args)
        test_ds = make_split(root, "test", class_names, args)
    except DataError as e:
        sys.exit(f"data error: {e}")
    print(f"[train] classes {class_names}; {len(train_ds)} / {len(val_ds)} / {len(test_ds)} train / val / "
          f"test images; {args.img_size} px; backbone {args.backbone}: {model.backbone.weights_source}")
    gen = torch.Generator().manual_seed(args.seed)
    workers = default_workers(device) if args.workers is None else args.workers
    # On a GPU, one batch in fp32 and in half precision first: a card whose half breaks the outputs trains in fp32.
    if device.type == "cuda" and precision.train is not None:
        images, _ = val_ds[0]
        if problem := autocast_problem(model, images[None].to(device, memory_format=torch.channels_last),
                                       precision.train):
            precision = Precision(None, None, f"{problem}: fp32 instead")
            print(describe(device, precision))
    train_loader, level = make_loader(train_ds, args, device, workers, shuffle_with=gen), None
    val_loader = make_loader(val_ds, args, device, workers)
    test_loader = make_loader(test_ds, args, device, workers)

    # ---- optimizer, loss scaler, loss, EMA; and where the run stands: new, or where --resume left it
    optimizer = make_optimizer(model, args.lr, args.weight_decay, args.backbone_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)  # fp16 only (T4, V100, P100)
    criterion = DetectionLoss(args.box_loss, args.cls_loss, box_weight=args.box_weight,
                              dfl_weight=args.dfl_weight)
    # EMA of the weights (timm's ModelEmaV3, with warm-up so early averages are not dominated by the init).
    ema = ModelEmaV3(model, decay=0.9998, use_warmup=True) if args.ema else None
    update = Update(optimizer, scaler, ema)
    per_epoch = len(train_loader)
    plan = Plan(0, args.epochs * per_epoch, max(1, int(args.warmup_epochs * per_epoch)), per_epoch)
    if ckpt is not None:
        epoch, plan.done, plan.total, best_map, rows, run_dir = restore(ckpt, model, ema, optimizer, scaler,
                                                                        gen)
        print(f"[train] resumed {args.resume} at epoch {epoch + 1}/{plan.epochs}")
    else:
        epoch, best_map, rows = 0, -1.0, []
        run_dir = new_run_dir(args.out, args.name, args.exist_ok)
    print(f"[train] writing to {run_dir}")

    # ---- the epochs
    while plan.done < plan.total:
        t0 = time.time()
        assigner = assigner_for_epoch(epoch, args)
        wanted = aug_for_epoch(epoch, plan.epochs, args)  # (augmentation level, copy-paste donors)
        if wanted != level:  # the first epoch, and when mosaic closes
            level = wanted
            aug, train_ds.copy_paste = level
            train_ds.transform = build_transforms(args.img_size, True, aug, args.jitter)
            # persistent workers keep the dataset they started with: new ones see the new transform
            train_loader = make_loader(train_ds, args, device, workers, shuffle_with=gen)
        train_loader.sampler.set_epoch(epoch)
        try:
            stats = train_one_epoch(model, train_loader, assigner, criterion, update, plan, args,
                                    precision.train)
        except NonFiniteLoss as e:
            sys.exit(f"error: {e}")
        train_s = time.time() - t0
        if args.time and plan.done < plan.total:  # --time: the cosine ends at the last iteration that fits
            seconds = sum(r["train_s"] for r in rows) + train_s
            plan.total = iters_that_fit(seconds, plan.done, args.time * 60, args.epochs * per_epoch)
        row = {"epoch": epoch + 1, "lr": args.lr * lr_at(plan.done, plan.total, plan.warmup),
               "assigner": type(assigner).__name__, **{k: round(v, 5) for k, v in stats.items()},
               "train_s": round(train_s, 1), "val_map": "", "val_map50": "", "val_map75": "",
               **{f"val_ap_{name}": "" for name in class_names}}
        is_best = False
        if (epoch + 1) % args.val_every == 0 or epoch + 1 == plan.epochs:
            # what gets validated, saved as best and tested: the EMA of the weights when there is one
            eval_model = ema.module if ema is not None else model
            row.update(validate(eval_model, val_loader, precision.infer, class_names))
            is_best = row["val_map"] > best_map
            best_map = max(best_map, row["val_map"])
        rows.append(row)
        print(f"epoch {epoch + 1}/{plan.epochs}  loss {row['loss']:.4f} (cls {row['loss_cls']:.4f} box "
              f"{row['loss_box']:.4f})  {train_s:.0f}s  val mAP {row['val_map']}  mAP50 {row['val_map50']}")
        if stalled := classes_not_learning(row):
            print(f"  not learning yet: validation AP 0 for {', '.join(stalled)} after {epoch + 1} epochs "
                  f"(ap_per_class.png shows each class per epoch; RESULTS.md section 9: why a small, rare class "
                  f"starts late)")
        state = training_state(model, ema, optimizer, scaler, gen, epoch, plan.done, plan.total, best_map, rows,
                               run_dir, class_names, args, describe(device, precision))
        save_atomic(state, run_dir / "last.pt")
        if is_best:
            save_atomic(state, run_dir / "best.pt")
        write_csv(rows, run_dir / "metrics.csv")
        plot_history(rows, run_dir)
        epoch += 1

    return test_best(model, run_dir, rows, test_loader, precision.infer, args.batch_size, per_epoch)


# --------------------------------------------------------------------------- the recipe
def fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    """The recipe: every default of `python train.py`, in groups (data, model, the course's improvements, run
    control, speed). The course modules' own defaults equal these (tests/test_recipe.py checks it)."""
    p = argparse.ArgumentParser(description="Train the one-stage detector.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="dataset root; default: $DETECTION_DATA, ./data clone, hub, "
                                                "then the offline stand-in")
    g.add_argument("--img-size", type=int, default=None, help="square input side; default: the dataset's image size")
    g.add_argument("--strict", action="store_true", help="any problem row in the data is an error")

    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="tf_efficientnet_lite0", help="any timm model name")
    g.add_argument("--weights", default=None, help="backbone weights file (timm or efficientnet_pytorch keys)")
    g.add_argument("--unfreeze", type=int, default=2, help="train the last K backbone stages (0 frozen, -1 all)")
    g.add_argument("--width", type=int, default=64, help="neck and head channels")
    g.add_argument("--neck", choices=sorted(NECKS), default="fpn", help="fpn: top-down only; pan: + bottom-up")
    g.add_argument("--neck-block", choices=["conv", "csp"], default="conv", help="neck fuse unit: 3x3 conv or CSP")
    g.add_argument("--head-conv", choices=["depthwise", "full"], default="full",
                   help="head branch convs: full 3x3 (YOLOX-S and up) or depthwise-separable (YOLOX-Nano)")
    g.add_argument("--strides", type=int, nargs="+", default=[8, 16, 32], choices=[4, 8, 16, 32], metavar="S",
                   help="levels the head predicts at; 4 8 16 32 adds a stride-4 level (P2, on the backbone's C2)")
    g.add_argument("--box-bins", type=int, default=16,
                   help="N > 0: predict each box side as a distribution over 0..N-1 strides, trained with "
                        "the distribution focal loss (GFL; YOLOv8: 16); 0: one softplus distance per side")

    g.add_argument("--box-prior", type=float, default=0.0, metavar="M",
                   help="with --box-bins: start every side's distribution at an expectation of M strides; 0: uniform. "
                        "2 helps small objects early and costs large ones AP75 (RESULTS.md section 9)")

    g = p.add_argument_group("the course's improvements: assignment, losses, augmentation, EMA")
    g.add_argument("--assigner", choices=["tal", "simple"], default="tal")
    g.add_argument("--warmup-assigner-epochs", type=int, default=0,
                   help="use the simple assigner for the first N epochs, then --assigner")
    g.add_argument("--tal-topk", type=int, default=10, help="TAL: positives per GT (TOOD: 13, YOLOv8: 10)")
    g.add_argument("--tal-alpha", type=float, default=0.5,
                   help="TAL: exponent of the class score (TOOD: 1, YOLOv8: 0.5)")
    g.add_argument("--tal-beta", type=float, default=6.0, help="TAL: exponent of the IoU")
    g.add_argument("--box-loss", choices=sorted(BOX_LOSSES), default="giou")
    g.add_argument("--cls-loss", choices=sorted(CLS_LOSSES), default="bce")
    g.add_argument("--box-weight", type=float, default=15.0,
                   help="weight of the box loss against the cls loss (1); YOLOv8: 7.5 : 0.5")
    g.add_argument("--dfl-weight", type=float, default=3.0,
                   help="weight of the DFL term (with --box-bins); YOLOv8: 1.5 against its box 7.5")
    g.add_argument("--aug", choices=AUG_LEVELS, default="strong", help="train augmentation level (strong: + mosaic)")
    g.add_argument("--jitter", choices=["light", "yolov8"], default="light",
                   help="per-image scale and colour jitter: light (scale 0.75-1.25 on half the images) or "
                        "YOLOv8's (0.5-1.5 on every image, multiplicative colour gains; tools/augment.py); "
                        "it stays on when mosaic closes")
    g.add_argument("--close-mosaic", type=int, default=None, metavar="N",
                   help="with --aug strong: basic aug for the last N planned epochs; default: the last eighth, rounded "
                        "up (10 of 80, 2 of 14; a --time run plans --epochs until its first epoch is timed)")
    g.add_argument("--copy-paste", type=int, default=0, metavar="N",
                   help="paste one object from each of N other training images into every training image "
                        "(tools/augment.py); with --aug strong, off in the last --close-mosaic epochs as mosaic is")
    g.add_argument("--multi-scale", type=fraction, default=0.0, metavar="F",
                   help="resize each training batch to a random side in [(1-F) S, (1+F) S], a multiple of 32 "
                        "(tools/augment.py; YOLOv5: 0.5); 0: off")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="keep an EMA of the weights; validate, save and test it")

    g = p.add_argument_group("run control")
    g.add_argument("--epochs", type=int, default=80, help="epochs (with --time: the most epochs)")
    g.add_argument("--time", type=float, default=None, metavar="MINUTES",
                   help="train for this much training time (validation not counted); the LR schedule is "
                        "re-planned after every epoch for the iterations that fit (the last epoch may be partial)")
    g.add_argument("--batch-size", type=int, default=16, help="images per training step")
    g.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate (after the warm-up)")
    g.add_argument("--backbone-lr", type=float, default=1.0, metavar="F",
                   help="learning rate of the trainable backbone stages, as a fraction of --lr")
    g.add_argument("--weight-decay", type=float, default=0.05,
                   help="AdamW decoupled weight decay, on conv and linear weights only")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear LR warm-up length")
    g.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and after the last)")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds the weights of the head, the data order and every augmentation")
    g.add_argument("--out", default="runs", help="parent folder of run folders")
    g.add_argument("--name", default="exp", help="run folder name (runs/NAME; runs/NAME-2 if taken)")
    g.add_argument("--exist-ok", action="store_true", help="reuse runs/NAME even if it exists (overwrites)")
    g.add_argument("--resume", default=None, help="path of a last.pt to continue from")
    g.add_argument("--max-bad-steps", type=int, default=10,
                   help="stop after this many consecutive steps with a non-finite loss")

    g = p.add_argument_group("speed")
    g.add_argument("--device", default="auto",
                   help="auto: the first CUDA GPU if there is one, else the CPU; or cpu, cuda, cuda:N, mps")
    g.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (default: none on CPU, up to 8 beside a GPU; "
                        "tools/device.py)")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="decode every image once into memory (about 0.5 MB per 416 px image)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast for the training forward pass (default: by hardware, tools/device.py: bf16 "
                        "where native, fp16 + GradScaler on CUDA below capability 8.0, else fp32)")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
