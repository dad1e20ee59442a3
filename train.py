"""Training: a plain PyTorch loop, no framework.

Course section: "Training". The step, in ``train_one_epoch``, is one block:
forward -> assign -> loss -> backward -> step -> EMA. ``main`` reads top to bottom around it: data and
model, optimizer, then per epoch train, validate, save ``last.pt`` (and ``best.pt`` on the best validation
mAP); at the end ``best.pt`` is evaluated on the test split. The flags are in tools/flags.py.

    python train.py --epochs 80                      # the default recipe: TAL + GIoU, mosaic, EMA
    python train.py --time 10                        # 10 minutes of training; the LR schedule fits the budget
    python train.py --resume runs/exp/last.pt        # continue exactly where a run stopped

It picks the device and precision itself (tools/device.py): the GPU when there is one, in bf16 where the
hardware has it natively, in fp16 with a gradient scaler on older GPUs (a T4); the CPU otherwise.

Differences from the papers' recipes (TOOD / YOLOX use SGD, 300 epochs, 8 GPUs):

- AdamW with a linear warm-up then a cosine decay, set every iteration (``lr_at``): it trains a small
  head on a mostly frozen backbone well with a batch of 16 on a CPU.
- No weight decay on BatchNorm weights and biases (they only scale and shift).
- Optional warm-up with the prediction-free assigner for the first N epochs, as TOOD does with ATSS
  (TOOD sec. 4, "Implementation details").
"""
from __future__ import annotations

import itertools
import math
import random
import sys
import time

import numpy as np
import torch
from timm.utils import ModelEmaV3
from tqdm import tqdm

from assign import SimpleAssigner, TaskAlignedAssigner
from data import DataError, DetectionDataset, build_transforms, collate, pad_targets
from detector import Detector
from evaluate import evaluate
from losses import DetectionLoss
from tools.augment import multi_scale
from tools.checkpoint import CheckpointError, restore, resume_args, save_atomic, training_state
from tools.checks import dataset_image_size, round_to_stride
from tools.device import DeviceError, autocast, choose, default_workers, describe, resolve_device
from tools.flags import parse_train_args as parse_args
from tools.plots import plot_history
from tools.run import NonFiniteGuard, NonFiniteLoss, iters_that_fit, new_run_dir, test_best, write_csv
from tools.sources import load_class_names, resolve_data_root
from tools.speed import depthwise_in_fp32


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
    """A loader batch on ``device``: images (B, 3, S, S) in channels_last (NHWC, the layout oneDNN's and
    cuDNN's fast conv kernels want) and the padded GT (B, M, ...); with ``--multi-scale`` resized to a
    random side (tools/augment.py). ``non_blocking``: from the loader's pinned memory, the copy to a GPU
    overlaps the work still running there."""
    images = images.to(device, memory_format=torch.channels_last, non_blocking=True)
    gt_boxes, gt_labels, gt_mask = (t.to(device, non_blocking=True) for t in pad_targets(targets))
    images, gt_boxes = multi_scale(images, gt_boxes, scale_frac)
    return images, gt_boxes, gt_labels, gt_mask


def train_one_epoch(model, loader, assigner, criterion, optimizer, scaler, ema, args, dtype, epoch: int,
                    step: int, total: int, warmup: int) -> dict:
    """One pass over ``loader`` from iteration ``step`` of ``total`` (``lr_at``), stopping at ``total`` (the
    last, partial epoch of a ``--time`` run). Returns the mean losses of the epoch and its step counts."""
    model.train()
    device = next(model.parameters()).device
    guard, sums, n = NonFiniteGuard(args.max_bad_steps), {"loss": 0.0, "loss_cls": 0.0, "loss_box": 0.0}, 0
    n_batches = min(len(loader), total - step)  # islice stops the loader there without fetching one more
    bar = tqdm(itertools.islice(loader, n_batches), desc=f"epoch {epoch + 1}", total=n_batches, leave=False)
    t0 = time.time()
    for images, targets in bar:
        images, gt_boxes, gt_labels, gt_mask = batch_to(device, images, targets, args.multi_scale)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_at(step, total, warmup)      # this iteration's LR
        step += 1
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
        scaler.step(optimizer)                      # AdamW (skipped by the scaler if a fp16 gradient overflowed)
        scaler.update()
        if ema is not None:
            ema.update(model, step=step)
        # ---------------- end of the step; the rest is bookkeeping
        n += 1
        for name, value in losses.items():  # total, cls, box (and dfl with --box-bins)
            key = "loss" if name == "total" else f"loss_{name}"
            sums[key] = sums.get(key, 0.0) + value.item()
        bar.set_postfix(loss=f"{sums['loss'] / n:.3f}", cls=f"{sums['loss_cls'] / n:.3f}",
                        box=f"{sums['loss_box'] / n:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}",
                        img_s=f"{n * loader.batch_size / (time.time() - t0):.1f}", refresh=False)
    return {k: v / max(n, 1) for k, v in sums.items()} | {"skipped": guard.skipped, "steps": n + guard.skipped}


# --------------------------------------------------------------------------- main
def main(argv=None):
    args, ckpt = parse_args(argv), None
    try:
        if args.resume:
            args, ckpt = resume_args(args.resume, parse_args([]))  # exactly the settings it started with
        device = resolve_device(args.device)
    except (CheckpointError, DeviceError) as e:
        sys.exit(f"error: {e}")
    precision = choose(device, args.amp, "train")
    print(describe(device, precision))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # ---- data and model
    try:
        root = resolve_data_root(args.data)
        class_names = load_class_names(root)
        args.img_size = round_to_stride(args.img_size or dataset_image_size(root))
        model = Detector(len(class_names), backbone=args.backbone, pretrained=ckpt is None, weights=args.weights,
                         unfreeze=args.unfreeze, width=args.width, neck=args.neck, neck_block=args.neck_block,
                         depthwise_head=args.head_conv == "depthwise", box_bins=args.box_bins, strides=args.strides)
        model = model.to(device, memory_format=torch.channels_last)
        depthwise_in_fp32(model, enabled=device.type == "cpu")  # oneDNN's bf16 depthwise backward is slow
        mean, std = model.backbone.mean, model.backbone.std
        splits = [DetectionDataset(root, name, build_transforms(args.img_size, name == "train", mean, std,
                                                                args.aug if name == "train" else "none", args.jitter),
                                   class_names, seed=args.seed, strict=args.strict, cache=args.cache,
                                   copy_paste=args.copy_paste if name == "train" else 0)
                  for name in ("train", "validation", "test")]
    except DataError as e:
        sys.exit(f"data error: {e}")
    train_ds = splits[0]
    print(f"[train] classes {class_names}; {' / '.join(str(len(s)) for s in splits)} train / val / test images; "
          f"{args.img_size} px; backbone {args.backbone}: {model.backbone.weights_source}")
    gen = torch.Generator().manual_seed(args.seed)
    workers = default_workers(device) if args.workers is None else args.workers
    train_loader, val_loader, test_loader = (
        torch.utils.data.DataLoader(ds, args.batch_size, shuffle=ds is train_ds, drop_last=ds is train_ds,
                                    collate_fn=collate, num_workers=workers, pin_memory=device.type == "cuda",
                                    generator=gen if ds is train_ds else None) for ds in splits)

    # ---- optimizer, loss scaler, loss, EMA; and where the run stands: new, or where --resume left it
    optimizer = make_optimizer(model, args.lr, args.weight_decay, args.backbone_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)  # fp16 only (T4, V100, P100)
    criterion = DetectionLoss(args.box_loss, args.cls_loss, box_weight=args.box_weight, dfl_weight=args.dfl_weight)
    # EMA of the weights (timm's ModelEmaV3, with warm-up so early averages are not dominated by the init).
    ema = ModelEmaV3(model, decay=0.9998, use_warmup=True) if args.ema else None
    iters, warmup = len(train_loader), max(1, int(args.warmup_epochs * len(train_loader)))
    if ckpt is not None:
        epoch, step, planned_iters, best_map, rows, run_dir = restore(ckpt, model, ema, optimizer, scaler, gen)
        print(f"[train] resumed {args.resume} at epoch {epoch + 1}/{math.ceil(planned_iters / iters)}")
    else:  # planned_iters: --epochs worth, or with --time the iterations that fit (re-planned every epoch)
        epoch, step, planned_iters, best_map, rows = 0, 0, args.epochs * iters, -1.0, []
        run_dir = new_run_dir(args.out, args.name, args.exist_ok)
    print(f"[train] writing to {run_dir}")

    # ---- the epochs
    while step < planned_iters:
        planned = math.ceil(planned_iters / iters)  # epochs, the last one possibly partial
        t0 = time.time()
        assigner = assigner_for_epoch(epoch, args)
        # Workers start anew each epoch (not persistent), so they see the new epoch and transform.
        train_ds.set_epoch(epoch)
        aug, train_ds.copy_paste = aug_for_epoch(epoch, planned, args)
        train_ds.transform = build_transforms(args.img_size, True, mean, std, aug, args.jitter)
        try:
            stats = train_one_epoch(model, train_loader, assigner, criterion, optimizer, scaler, ema, args,
                                    precision.train, epoch, step, planned_iters, warmup)
        except NonFiniteLoss as e:
            sys.exit(f"error: {e}")
        train_s, step = time.time() - t0, step + stats["steps"]
        if args.time and step < planned_iters:  # --time: the cosine ends at the last iteration that fits
            seconds = sum(r["train_s"] for r in rows) + train_s
            planned_iters = iters_that_fit(seconds, step, args.time * 60, args.epochs * iters)
            planned = math.ceil(planned_iters / iters)
        row = {"epoch": epoch + 1, "lr": args.lr * lr_at(step, planned_iters, warmup),
               "assigner": type(assigner).__name__, **{k: round(v, 5) for k, v in stats.items()},
               "train_s": round(train_s, 1), "val_map": "", "val_map50": "", "val_map75": ""}
        is_best = False
        if (epoch + 1) % args.val_every == 0 or epoch + 1 == planned:
            eval_model = ema.module if ema is not None else model  # what gets validated, saved as best, tested
            res, _ = evaluate(eval_model, val_loader, desc="val", dtype=precision.infer)
            row.update(val_map=round(float(res["map"]), 5), val_map50=round(float(res["map_50"]), 5),
                       val_map75=round(float(res["map_75"]), 5))
            is_best = row["val_map"] > best_map
            best_map = max(best_map, row["val_map"])
        rows.append(row)
        print(f"epoch {epoch + 1}/{planned}  loss {row['loss']:.4f} (cls {row['loss_cls']:.4f} box "
              f"{row['loss_box']:.4f})  {train_s:.0f}s  val mAP {row['val_map']}  mAP50 {row['val_map50']}")
        state = training_state(model, ema, optimizer, scaler, gen, epoch, step, planned_iters, best_map, rows,
                               run_dir, class_names, args, describe(device, precision))
        save_atomic(state, run_dir / "last.pt")
        if is_best:
            save_atomic(state, run_dir / "best.pt")
        write_csv(rows, run_dir / "metrics.csv")
        plot_history(rows, run_dir)
        epoch += 1

    return test_best(model, run_dir, rows, test_loader, precision.infer, args.batch_size, iters)


if __name__ == "__main__":
    main()
