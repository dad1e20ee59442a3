"""train.py's flags. Not a course concept: the loop in train.py reads ``args.NAME`` and never needs to scroll
past these. ``python train.py --help`` prints them in their groups.
"""
from __future__ import annotations

import argparse

from data import AUG_LEVELS
from losses import BOX_LOSSES, CLS_LOSSES
from neck import NECKS


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def parse_train_args(argv=None) -> argparse.Namespace:
    """train.py's flags, in groups: data, model, the course's improvements, run control, speed."""
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
                   help="DataLoader worker processes (default: none on CPU, up to 4 beside a GPU; "
                        "tools/device.py)")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="decode every image once into memory (about 0.5 MB per 416 px image)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast for the training forward pass (default: by hardware, tools/device.py: bf16 "
                        "where native, fp16 + GradScaler on CUDA below capability 8.0, else fp32)")
    return p.parse_args(argv)
