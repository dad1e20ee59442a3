"""Speed on this machine: how close training and inference come to the backbone's own cost.

    python -m tools.benchmark                          # sizes 320 416 640, default config, precisions as in use
    python -m tools.benchmark --sizes 416 --threads 2 --no-amp --infer-amp   # fp32 training, bf16 inference
    python -m tools.benchmark --sizes 416 --no-fp32-depthwise   # trainable depthwise convs in bf16 too

Device and precision follow the repo's policy (tools/device.py), as train.py and evaluate.py use them:
``--amp`` / ``--infer-amp`` override it for the training and the inference columns. The measures of
tools/speed.py (fp32 depthwise convs in CPU training, BN folding for inference) are switched here to
measure them. On a GPU every timed call ends with a ``torch.cuda.synchronize``.

A training step can't be faster than the backbone's forward + backward (with the same frozen /
trainable blocks); everything else (neck, head, assigner, loss, optimizer) is overhead on top of
that floor. Likewise inference can't beat the backbone's forward. The table shows, per image size:

    backbone fwd+bwd     ms/img  the training floor (batch --batch-size)
    train step           ms/img  forward + assign + loss + backward + AdamW step, data already in memory
    loader               img/s   train.py's training loader alone over --loop-steps batches: decoded images
                                 (--cache), mosaic and jitter, --workers persistent workers (already started)
    loop                 img/s   --loop-steps train steps fed by that loader, as train.py's loop (less its
                                 progress bar and grad clipping); ``--workers 2`` against the default 0 shows
                                 why 0 is train.py's CPU default
    loop/step            ratio   train step time / loop time per image: 1 when the data never keeps the step
                                 waiting; below 1, the step waits for its data
    backbone fwd b1      ms      the inference floor, batch 1
    inference b1         ms      model + post-processing (NMS), batch 1, the model as trained
    fused b1             ms      the same with BatchNorm folded into the convs and, with bf16 autocast,
                                 the weights stored in bf16 (``fuse_conv_bn``), as evaluate.py runs
                                 it: the deployed number
    inference b8         ms/img  fused, batch 8

Each number is the median of ``--repeats`` timed runs after ``--warmup`` untimed ones. A floor and what
it is the floor of are timed in alternation (``timed_together``), so that their ratio compares like with
like: the floor runs the same modules under the same autocast as the step, with the trainable depthwise
convs in fp32 in both.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

import torch

from assign import TaskAlignedAssigner
from data import DetectionDataset, build_transforms, collate
from detector import Detector, load_checkpoint
from evaluate import postprocess
from losses import DetectionLoss
from tools.checkpoint import CheckpointError
from tools.device import DeviceError, autocast, choose_precision, default_workers, resolve_device
from tools.sources import load_class_names, resolve_data_root
from tools.speed import depthwise_in_fp32, fuse_conv_bn
from train import batch_to, make_loader, make_optimizer


def timed(fn, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    return timed_together({"fn": fn}, repeats, warmup)["fn"]


def timed_together(fns: dict, repeats: int, warmup: int) -> dict:
    """Median wall time in seconds of each function in ``fns``, timed in alternation (a, b, a, b, ...) after
    ``warmup`` untimed rounds. Alternating is what makes a ratio of two columns mean something: whatever
    drifts during the measurement (clock speed, another process, caches and allocator still warming up)
    falls on both alike. Timed one after the other, a drift falls on one column only and shows up in their
    ratio (RESULTS.md section 6)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # GPU work is asynchronous
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def floor_and_step(model, dtype):
    """The two functions whose ratio is step/floor, on a model in train mode:
    ``backbone_step(images)``: the floor, the backbone's forward + backward through its trainable blocks;
    ``train_step(images, gt_boxes, gt_labels, gt_mask)``: forward + assign + loss + backward + AdamW step.
    Both under the same autocast, on the same modules (trainable depthwise convs in fp32 in both)."""
    assigner, criterion = TaskAlignedAssigner(), DetectionLoss()
    optimizer = make_optimizer(model, 1e-4, 0.05)

    def backbone_step(images):
        model.zero_grad(set_to_none=True)  # as the step's optimizer.zero_grad: fresh gradients, no accumulation
        with autocast(images.device, dtype):
            feats = [f for f in model.backbone(images) if f.requires_grad]  # the maps of trainable stages
        # Each map gets a gradient as the neck sends one back in training: in the map's own dtype (bf16 under
        # autocast) and memory layout (channels_last).
        torch.autograd.backward(feats, [torch.ones_like(f) for f in feats])

    def train_step(images, gt_boxes, gt_labels, gt_mask):
        with autocast(images.device, dtype):
            out = model(images)
        a = assigner(out.cls_logits.detach().float().sigmoid(), out.boxes.detach(), out.points, out.strides,
                     gt_labels, gt_boxes, gt_mask)
        loss = criterion(out.cls_logits, out.boxes, a, out.box_logits, out.points, out.strides)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return backbone_step, train_step


def bench_size(size: int, args, root, names, device, train_dtype, infer_dtype) -> dict:
    torch.manual_seed(0)
    if args.checkpoint:  # trained weights: realistic numbers of candidates reach NMS
        model, _ = load_checkpoint(args.checkpoint, device, fuse=False)  # the training step needs BN
    else:
        model = Detector(len(names)).to(device, memory_format=torch.channels_last)
    depthwise_in_fp32(model, args.fp32_depthwise)
    # The training split as train.py builds it: images decoded once (--cache), mosaic + jitter (--aug strong)
    train_ds = DetectionDataset(root, "train", build_transforms(size, True, "strong"), names)
    b = args.batch_size
    # one real batch for the timed steps, kept on the device as train.py puts it there
    images, gt_boxes, gt_labels, gt_mask = batch_to(device, *collate([train_ds[i] for i in range(b)]), 0.0)

    model.train()
    backbone_step, train_step = floor_and_step(model, train_dtype)
    r = {"size": size}
    both = timed_together({"backbone_fb": lambda: backbone_step(images),
                           "train_step": lambda: train_step(images, gt_boxes, gt_labels, gt_mask)},
                          args.repeats, args.warmup)
    r |= {name: seconds / b for name, seconds in both.items()}

    # 3. the training loader alone, as train.py builds it: that dataset, --workers persistent workers; a first,
    #    untimed pass starts the workers
    loader = make_loader(train_ds, args, device, args.workers, shuffle_with=torch.Generator().manual_seed(0))
    steps = min(args.loop_steps, len(loader))

    def load():
        for _ in itertools.islice(loader, steps):
            pass

    r["loader"] = timed(load, 1, 1) / (steps * b)

    # 4. the training loop as train.py runs it: the same step fed by that loader
    def train_loop():
        for batch_images, batch_targets in itertools.islice(loader, steps):
            train_step(*batch_to(device, batch_images, batch_targets, 0.0))

    r["loop"] = timed(train_loop, 1, 0) / (steps * b)

    # 5. inference: backbone alone and the whole model + post-processing, batch 1 and batch 8
    model.eval()
    fused = fuse_conv_bn(model, infer_dtype)
    one, eight = images[:1], images[:1].repeat(8, 1, 1, 1).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def infer(m, x):
        with autocast(device, infer_dtype):
            cls_logits, boxes, *_ = m(x)
        return postprocess(cls_logits, boxes)

    @torch.no_grad()
    def backbone_fwd():
        with autocast(device, infer_dtype):
            model.backbone(one)

    r |= timed_together({"backbone_fwd_b1": backbone_fwd, "infer_b1": lambda: infer(model, one),
                         "fused_b1": lambda: infer(fused, one)}, args.repeats * 3, args.warmup)
    r["infer_b8"] = timed(lambda: infer(fused, eight), args.repeats, args.warmup) / 8
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 416, 640])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    p.add_argument("--device", default="auto", help="auto: the first CUDA GPU if there is one, else the CPU")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast for the training columns (default: the policy of tools/device.py, as train.py)")
    p.add_argument("--infer-amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast for the inference columns (default: the policy, as evaluate.py; off on CPU)")
    p.add_argument("--fp32-depthwise", action=argparse.BooleanOptionalAction, default=None,
                   help="trainable depthwise convs in fp32 under autocast (default: on CPU only, as train.py; "
                        "tools/speed.py)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers for the loader and loop columns (default: as train.py, 0 on CPU)")
    p.add_argument("--loop-steps", type=int, default=30, help="training steps timed in the loop column")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--data", default=None)
    p.add_argument("--checkpoint", default=None, help="trained weights (else ImageNet backbone + fresh head); "
                                                      "matters for post-processing time")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except DeviceError as e:
        sys.exit(f"error: {e}")
    train_dtype = choose_precision(device, args.amp, "train").train
    infer_dtype = choose_precision(device, args.infer_amp, "infer").infer
    args.fp32_depthwise = device.type == "cpu" if args.fp32_depthwise is None else args.fp32_depthwise
    args.workers = default_workers(device) if args.workers is None else args.workers
    root = resolve_data_root(args.data)
    names = load_class_names(root)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, autocast: training "
          f"{train_dtype or 'off'} (trainable depthwise convs in {'fp32' if args.fp32_depthwise else 'autocast'}), "
          f"inference {infer_dtype or 'off'}, batch {args.batch_size}, {args.workers} loader workers, "
          f"median of {args.repeats}")
    try:
        rows = [bench_size(s, args, root, names, device, train_dtype, infer_dtype) for s in args.sizes]
    except CheckpointError as e:  # e.g. an exported (BN-folded) file: the training columns need BatchNorm
        sys.exit(f"error: {e}")
    ms = 1000
    print(f"\n{'size':>5} {'backbone fwd+bwd':>17} {'train step':>11} {'step/floor':>10} {'train img/s':>11} "
          f"{'loader img/s':>12} {'loop img/s':>10} {'loop/step':>9} {'backbone fwd b1':>16} {'infer b1':>9} "
          f"{'infer/floor':>11} {'fused b1':>9} {'infer b8':>9}")
    print(f"{'px':>5} {'ms/img':>17} {'ms/img':>11} {'':>10} {'':>11} {'':>12} {'':>10} {'':>9} {'ms':>16} {'ms':>9} "
          f"{'':>11} {'ms':>9} {'ms/img':>9}")
    for r in rows:
        print(f"{r['size']:>5} {r['backbone_fb'] * ms:>17.1f} {r['train_step'] * ms:>11.1f} "
              f"{r['train_step'] / r['backbone_fb']:>10.2f} {1 / r['train_step']:>11.1f} {1 / r['loader']:>12.1f} "
              f"{1 / r['loop']:>10.1f} {r['train_step'] / r['loop']:>9.2f} {r['backbone_fwd_b1'] * ms:>16.1f} "
              f"{r['infer_b1'] * ms:>9.1f} "
              f"{r['infer_b1'] / r['backbone_fwd_b1']:>11.2f} {r['fused_b1'] * ms:>9.1f} {r['infer_b8'] * ms:>9.1f}")
    return rows


if __name__ == "__main__":
    main()
