"""Training: a plain PyTorch loop, no framework.

Course section: "Training". The step, in ``train_one_epoch``, is one block:
forward -> assign -> loss -> backward -> clip -> step. ``main`` reads top to bottom around it:
data and model, optimizer and LR schedule, then per epoch train, validate, save ``last.pt`` (and
``best.pt`` on the best validation mAP); at the end ``best.pt`` is evaluated on the test split.

    python train.py --epochs 80                      # the default recipe: TAL + GIoU, mosaic, EMA
    python train.py --time 10                        # 10 minutes of training; the LR schedule fits the budget
    python train.py --resume runs/exp/last.pt        # continue exactly where a run stopped

Differences from the papers' recipes (TOOD / YOLOX use SGD, 300 epochs, 8 GPUs):

- AdamW with a linear warm-up then a cosine decay, stepped every iteration: it
  trains a small head on a mostly frozen backbone well with a batch of 16 on a CPU.
- No weight decay on BatchNorm weights and biases (they only scale and shift).
- Optional warm-up with the prediction-free assigner for the first N epochs, as
  TOOD does with ATSS (TOOD sec. 4, "Implementation details").
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time

import numpy as np
import torch
from timm.utils import ModelEmaV3
from tqdm import tqdm

from assign import SimpleAssigner, TaskAlignedAssigner
from data import (AUG_LEVELS, DataError, DetectionDataset, build_transforms, collate, dataset_image_size,
                  multi_scale, pad_targets)
from detector import Detector
from evaluate import evaluate
from losses import BOX_LOSSES, CLS_LOSSES, DetectionLoss
from metrics import format_results, metrics_summary
from neck import NECKS
from runtime import (CheckpointError, NonFiniteGuard, NonFiniteLoss, amp_supported, default_workers, inference_amp,
                     new_run_dir, restore, resume_args, resolve_device, round_to_stride, save_atomic, training_state,
                     write_csv)
from sources import load_class_names, resolve_data_root
from speed import depthwise_in_fp32, fuse_conv_bn
from visualize import plot_history, plot_pr_curves


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def parse_args(argv=None):
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
    g.add_argument("--box-bins", type=int, default=0,
                   help="N > 0: predict each box side as a distribution over 0..N-1 strides, trained with "
                        "the distribution focal loss (GFL; YOLOv8: 16); 0: one softplus distance per side")

    g = p.add_argument_group("the course's improvements: assignment, losses, augmentation, EMA")
    g.add_argument("--assigner", choices=["tal", "simple"], default="tal")
    g.add_argument("--warmup-assigner-epochs", type=int, default=0,
                   help="use the simple assigner for the first N epochs, then --assigner")
    g.add_argument("--tal-topk", type=int, default=13, help="TAL: positives per GT")
    g.add_argument("--tal-alpha", type=float, default=1.0, help="TAL: exponent of the class score")
    g.add_argument("--tal-beta", type=float, default=6.0, help="TAL: exponent of the IoU")
    g.add_argument("--box-loss", choices=sorted(BOX_LOSSES), default="giou")
    g.add_argument("--cls-loss", choices=sorted(CLS_LOSSES), default="bce")
    g.add_argument("--box-weight", type=float, default=2.5, help="weight of the box loss against the cls loss (1)")
    g.add_argument("--dfl-weight", type=float, default=0.5, help="weight of the DFL term (with --box-bins)")
    g.add_argument("--aug", choices=AUG_LEVELS, default="strong", help="train augmentation level (strong: + mosaic)")
    g.add_argument("--close-mosaic", type=int, default=None, metavar="N",
                   help="with --aug strong: basic aug for the last N planned epochs; default: the last eighth, rounded "
                        "up (10 of 80, 2 of 14; a --time run plans --epochs until its first epoch is timed)")
    g.add_argument("--copy-paste", type=int, default=0, metavar="N",
                   help="paste one object from each of N other training images into every training image "
                        "(data.paste_objects); with --aug strong, off in the last --close-mosaic epochs as mosaic is")
    g.add_argument("--multi-scale", type=fraction, default=0.0, metavar="F",
                   help="resize each training batch to a random side in [(1-F) S, (1+F) S], a multiple of 32 "
                        "(data.multi_scale; YOLOv5: 0.5); 0: off")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="keep an EMA of the weights; validate, save and test it")

    g = p.add_argument_group("run control")
    g.add_argument("--epochs", type=int, default=80, help="epochs (with --time: the most epochs)")
    g.add_argument("--time", type=float, default=None, metavar="MINUTES",
                   help="train for this much training time (validation not counted); the LR schedule is "
                        "re-planned after every epoch for the iterations that fit (the last epoch may be partial)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear LR warm-up length")
    g.add_argument("--val-every", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="runs", help="parent folder of run folders")
    g.add_argument("--name", default="exp", help="run folder name (runs/NAME; runs/NAME-2 if taken)")
    g.add_argument("--exist-ok", action="store_true", help="reuse runs/NAME even if it exists (overwrites)")
    g.add_argument("--resume", default=None, help="path of a last.pt to continue from")
    g.add_argument("--max-bad-steps", type=int, default=10,
                   help="stop after this many consecutive steps with a non-finite loss")

    g = p.add_argument_group("speed")
    g.add_argument("--device", default="cpu")
    g.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (default: runtime.default_workers: none on CPU)")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="decode every image once into memory (about 0.5 MB per 416 px image)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast for the training forward pass (default: where the hardware has "
                        "native bf16); validation and test follow runtime.inference_amp")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- pieces
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; 1-D ones (BN weights, biases) get no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


class WarmupCosine:
    """Per-iteration LR factor: linear 0 -> 1 over warm-up, then cosine 1 -> final_ratio at ``total_iters``.

    An object rather than a closure so that ``total_iters`` can be re-planned during a ``--time`` run
    and is saved in the scheduler's state_dict (LambdaLR saves the attributes of callable objects).
    """

    def __init__(self, total_iters: int, warmup_iters: int, final_ratio: float = 0.05):
        self.total_iters, self.warmup_iters, self.final_ratio = total_iters, warmup_iters, final_ratio

    def __call__(self, it: int) -> float:
        if it < self.warmup_iters:
            return (it + 1) / self.warmup_iters
        progress = min(1.0, (it - self.warmup_iters) / max(1, self.total_iters - self.warmup_iters))
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer, total_iters: int, warmup_iters: int, final_ratio: float = 0.05):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_iters, warmup_iters, final_ratio))


def iters_that_fit(seconds: float, done_iters: int, budget_s: float, max_iters: int) -> int:
    """``--time``: how many training iterations in total fit the budget, from the mean time per iteration
    so far (``seconds`` of training for ``done_iters``; validation excluded). Never fewer than already done,
    never more than ``--epochs`` worth. Counted in iterations, not epochs, so the budget is used to the end:
    with 150 s epochs, whole epochs would leave up to 149 s of a 10-minute budget (a quarter) unused."""
    return max(done_iters, min(max_iters, int(budget_s * done_iters / seconds)))


def assigner_for_epoch(epoch: int, args):
    """The simple assigner for the first ``warmup_assigner_epochs`` epochs (0-based), then ``--assigner``."""
    if epoch < args.warmup_assigner_epochs or args.assigner == "simple":
        return SimpleAssigner()
    return TaskAlignedAssigner(topk=args.tal_topk, alpha=args.tal_alpha, beta=args.tal_beta)


def aug_for_epoch(epoch: int, total_epochs: int, args) -> tuple[str, int]:
    """(augmentation level, copy-paste donors) for this epoch: ``--aug`` and ``--copy-paste``, except that
    with strong aug the last ``close_mosaic`` epochs drop to basic aug without copy-paste: mosaic and pasted
    images are unlike test images, so the model finishes on realistic ones (YOLOX sec. 2.3).

    By default the closing phase is the last eighth of the planned epochs: YOLOv8's 10 of a long run, and
    still 12 mosaic epochs of a 20-minute run's 14, where a fixed 10 would leave 4 and the model over-fits
    the ~530 distinct frames after them (RESULTS.md section 7, "A longer mosaic phase")."""
    close = math.ceil(total_epochs / 8) if args.close_mosaic is None else args.close_mosaic
    if args.aug == "strong" and epoch >= total_epochs - close:
        return "basic", 0
    return args.aug, args.copy_paste


def train_one_epoch(model, loader, criterion, assigner, optimizer, scheduler, epoch, device, amp, ema=None,
                    max_bad_steps: int = 10, max_steps: int | None = None, scale_frac: float = 0.0) -> dict:
    """One pass over ``loader``, or its first ``max_steps`` batches (the last, partial epoch of a ``--time`` run).
    Returns the mean losses of the epoch and its step counts."""
    model.train()
    guard, sums, n = NonFiniteGuard(max_bad_steps), {"loss": 0.0, "loss_cls": 0.0, "loss_box": 0.0}, 0
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    # islice stops the loader after ``total`` batches without fetching one more.
    bar = tqdm(itertools.islice(loader, total), desc=f"epoch {epoch + 1}", total=total, leave=False)
    t0 = time.time()
    for images, targets in bar:
        # ---------------- the step: forward -> assign -> loss -> backward -> clip -> step
        images = images.to(device, memory_format=torch.channels_last)                   # (B, 3, S, S)
        gt_boxes, gt_labels, gt_mask = (t.to(device) for t in pad_targets(targets))     # (B, M, 4), (B, M), (B, M)
        images, gt_boxes = multi_scale(images, gt_boxes, scale_frac)                   # (B, 3, S', S'): --multi-scale
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):            # bf16 forward where native
            out = model(images)                     # (B, A, C) logits, (B, A, 4) xyxy boxes, (A, 2) points ...
        # The assigner sees detached predictions: assignment is a choice, not something to backprop through.
        assignment = assigner(out.cls_logits.detach().float().sigmoid(), out.boxes.detach(), out.points,
                              gt_labels, gt_boxes, gt_mask)
        losses = criterion(out.cls_logits, out.boxes, assignment, out.box_logits, out.points, out.strides)
        if not guard.finite(losses, targets):       # NaN/inf: no update, the LR schedule goes on
            scheduler.step()
            continue
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        optimizer.step()
        scheduler.step()                            # the LR changes every iteration
        if ema is not None:
            ema.update(model, step=scheduler.last_epoch)  # last_epoch counts iterations here
        # ---------------- end of the step; the rest is bookkeeping
        n += 1
        for name, value in losses.items():  # total, cls, box (and dfl with --box-bins)
            key = "loss" if name == "total" else f"loss_{name}"
            sums[key] = sums.get(key, 0.0) + value.item()
        bar.set_postfix(loss=f"{sums['loss'] / n:.3f}", cls=f"{sums['loss_cls'] / n:.3f}",
                        box=f"{sums['loss_box'] / n:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}",
                        img_s=f"{n * loader.batch_size / (time.time() - t0):.1f}", refresh=False)
    return {k: v / max(n, 1) for k, v in sums.items()} | {"skipped": guard.skipped, "steps": n + guard.skipped}


# --------------------------------------------------------------------------- the run around the loop
def build_datasets(args, root, class_names, mean, std):
    """Train (augmented, seeded), validation and test datasets."""
    def split(name, train):
        tf = build_transforms(args.img_size, train, mean, std, args.aug if train else "none")
        return DetectionDataset(root, name, tf, class_names, seed=args.seed, strict=args.strict, cache=args.cache,
                                copy_paste=args.copy_paste if train else 0)
    return split("train", True), split("validation", False), split("test", False)


def test_best(model, run_dir, test_loader, device, args, class_names, rows, iters) -> dict:
    """Evaluate best.pt (selected on validation) on the test split; write pr.png and test_results.json."""
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(best["model"])  # the EMA weights when --ema
    # BN folded into the convs, in inference precision, as evaluate.py loads a checkpoint: the test numbers
    # are the deployed model's.
    amp = inference_amp(device)
    res, _ = evaluate(fuse_conv_bn(model, bf16=amp), test_loader, device, desc="test", amp=amp)
    print(f"best checkpoint: epoch {best['epoch'] + 1} (val mAP {best['best_map']:.4f}), {run_dir / 'best.pt'}")
    metrics = metrics_summary(res, class_names)
    print(format_results(metrics))
    plot_pr_curves(res, class_names).savefig(run_dir / "pr.png", dpi=100)
    train_s, steps = sum(r["train_s"] for r in rows), sum(r["steps"] for r in rows)
    summary = {**metrics, "best_epoch": best["epoch"] + 1, "epochs": round(steps / iters, 1),
               "train_minutes": round(train_s / 60, 1),
               "train_img_per_s": round(steps * args.batch_size / train_s, 2)}
    (run_dir / "test_results.json").write_text(json.dumps(summary, indent=1))
    print(f"TEST mAP@[.5:.95] {res['map']:.4f}  mAP50 {res['map_50']:.4f}  mAP75 {res['map_75']:.4f}")
    return res


# --------------------------------------------------------------------------- main
def main(argv=None):
    args, ckpt = parse_args(argv), None
    try:
        if args.resume:
            args, ckpt = resume_args(args.resume, parse_args([]))  # exactly the settings it started with
        device = resolve_device(args.device)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    args.amp = amp_supported(device) if args.amp is None else args.amp
    args.workers = default_workers(device) if args.workers is None else args.workers
    seed_everything(args.seed)

    # ---- data and model
    try:
        root = resolve_data_root(args.data)
        class_names = load_class_names(root)
        args.img_size = round_to_stride(args.img_size or dataset_image_size(root))
        model = Detector(len(class_names), backbone=args.backbone, pretrained=ckpt is None, weights=args.weights,
                         unfreeze=args.unfreeze, width=args.width, neck=args.neck, neck_block=args.neck_block,
                         depthwise_head=args.head_conv == "depthwise", box_bins=args.box_bins)
        # channels_last (NHWC) lets oneDNN / cuDNN pick faster convolution kernels;
        # trainable depthwise convs skip bf16 autocast, whose backward is slow for them (speed.py).
        model = depthwise_in_fp32(model.to(device, memory_format=torch.channels_last))
        mean, std = model.backbone.mean, model.backbone.std
        train_ds, val_ds, test_ds = build_datasets(args, root, class_names, mean, std)
    except DataError as e:
        sys.exit(f"data error: {e}")
    print(f"[train] classes {class_names}; {len(train_ds)} train / {len(val_ds)} val / {len(test_ds)} test images; "
          f"{args.img_size} px; bf16 autocast {'on' if args.amp else 'off'}; "
          f"backbone {args.backbone}: {model.backbone.weights_source}")
    gen = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(train_ds, args.batch_size, shuffle=True, drop_last=True,
                                               collate_fn=collate, num_workers=args.workers, generator=gen)
    val_loader = torch.utils.data.DataLoader(val_ds, args.batch_size, collate_fn=collate, num_workers=args.workers)
    test_loader = torch.utils.data.DataLoader(test_ds, args.batch_size, collate_fn=collate, num_workers=args.workers)

    # ---- optimizer, LR schedule, loss, EMA
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    iters = len(train_loader)
    scheduler = make_scheduler(optimizer, args.epochs * iters, max(1, int(args.warmup_epochs * iters)))
    criterion = DetectionLoss(args.box_loss, args.cls_loss, box_weight=args.box_weight, dfl_weight=args.dfl_weight)
    # EMA of the weights (timm's ModelEmaV3, with warm-up so early averages are not dominated by the init).
    ema = ModelEmaV3(model, decay=0.9998, use_warmup=True) if args.ema else None
    # planned_iters: --epochs worth, or with --time the iterations that fit (re-planned after every epoch).
    if ckpt is not None:
        start_epoch, best_map, rows, planned_iters, run_dir = restore(ckpt, model, ema, optimizer, scheduler, gen)
        print(f"[train] resumed {args.resume} at epoch {start_epoch + 1}/{math.ceil(planned_iters / iters)}")
    else:
        start_epoch, best_map, rows, planned_iters = 0, -1.0, [], args.epochs * iters
        run_dir = new_run_dir(args.out, args.name, args.exist_ok)
    print(f"[train] writing to {run_dir}")

    # ---- the epochs
    epoch = start_epoch
    while epoch * iters < planned_iters:
        planned = math.ceil(planned_iters / iters)  # epochs, the last one possibly partial
        t0 = time.time()
        assigner = assigner_for_epoch(epoch, args)
        # Workers start anew each epoch (not persistent), so they see the new epoch and transform.
        train_ds.set_epoch(epoch)
        aug, train_ds.copy_paste = aug_for_epoch(epoch, planned, args)
        train_ds.transform = build_transforms(args.img_size, True, mean, std, aug)
        try:
            stats = train_one_epoch(model, train_loader, criterion, assigner, optimizer, scheduler, epoch, device,
                                    args.amp, ema, args.max_bad_steps, max_steps=planned_iters - epoch * iters,
                                    scale_frac=args.multi_scale)
        except NonFiniteLoss as e:
            sys.exit(f"error: {e}")
        train_time = time.time() - t0
        done = sum(r["steps"] for r in rows) + stats["steps"]  # iterations trained so far
        # --time: re-plan so the cosine ends at the last iteration that fits (not once the plan is complete).
        if args.time and done < planned_iters:
            seconds = sum(r["train_s"] for r in rows) + train_time
            planned_iters = iters_that_fit(seconds, done, args.time * 60, args.epochs * iters)
            planned = math.ceil(planned_iters / iters)
            scheduler.lr_lambdas[0].total_iters = planned_iters
        row = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "assigner": type(assigner).__name__,
               **{k: round(v, 5) for k, v in stats.items()}, "train_s": round(train_time, 1),
               "val_map": "", "val_map50": "", "val_map75": ""}
        is_best = False
        if (epoch + 1) % args.val_every == 0 or epoch + 1 == planned:
            eval_model = ema.module if ema is not None else model  # what gets validated, saved as best, tested
            res, _ = evaluate(eval_model, val_loader, device, desc="val", amp=inference_amp(device))
            row.update(val_map=round(float(res["map"]), 5), val_map50=round(float(res["map_50"]), 5),
                       val_map75=round(float(res["map_75"]), 5))
            is_best = row["val_map"] > best_map
            best_map = max(best_map, row["val_map"])
        rows.append(row)
        print(f"epoch {epoch + 1}/{planned}  loss {row['loss']:.4f} (cls {row['loss_cls']:.4f} box "
              f"{row['loss_box']:.4f})  {train_time:.0f}s  val mAP {row['val_map']}  mAP50 {row['val_map50']}")
        state = training_state(model, ema, optimizer, scheduler, gen, epoch, best_map, rows, planned_iters,
                               class_names, args, run_dir)
        save_atomic(state, run_dir / "last.pt")
        if is_best:
            save_atomic(state, run_dir / "best.pt")
        write_csv(rows, run_dir / "metrics.csv")
        plot_history(rows, run_dir)
        epoch += 1

    return test_best(model, run_dir, test_loader, device, args, class_names, rows, iters)


if __name__ == "__main__":
    main()
