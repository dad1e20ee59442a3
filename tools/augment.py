"""Augmentation levers, off by default (measured in RESULTS.md section 4).

Not part of the course's pipeline (``data.build_transforms``); ``train.py --copy-paste N``,
``--multi-scale F`` and ``--jitter yolov8`` switch them on.

- ``paste_objects``: Simple Copy-Paste (Ghiasi et al., CVPR 2021) with boxes instead of masks, called by
  ``data.DetectionDataset`` before the albumentations pipeline.
- ``multi_scale``: YOLO9000's multi-scale training, a whole batch resized in the training step.
- ``yolov8_jitter``: YOLOv8's per-image jitter, in place of ``build_transforms``' lighter one.
"""
from __future__ import annotations

import math
import random

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F


def paste_objects(sample: dict, donors: list[dict], rng: np.random.Generator, max_cover: float = 0.3) -> dict:
    """Copy-paste augmentation (Ghiasi et al. 2021, "Simple Copy-Paste"), with boxes instead of masks: one
    random object of each donor image is cut out as its box's rectangle and pasted, at its own scale, at a
    random place of ``sample``'s image, with its box and label. A paste that would hide more than
    ``max_cover`` of a box already there (an original or an earlier paste) is skipped, so no label ends up
    on an object that is no longer visible.

    ``sample`` / donors: ``{"image": (H, W, 3) uint8, "bboxes": (N, 4) xyxy pixels, "labels": (N,)}``, as
    ``DetectionDataset.load`` gives them. Returns a new dict; the inputs are not modified.

    Differences from the paper: no instance masks here (RF100 has boxes only), so the object comes with
    the background inside its box; no random rescaling of the pasted object (the letterbox and the
    Affine jitter that follow rescale the whole image); one object per donor.
    """
    image = sample["image"].copy()
    boxes = list(np.asarray(sample["bboxes"], np.float32).reshape(-1, 4))     # N arrays (4,) xyxy
    labels = list(np.asarray(sample["labels"], np.int64).reshape(-1))
    height, width = image.shape[:2]
    for donor in donors:
        if len(donor["labels"]) == 0:
            continue
        k = rng.integers(len(donor["labels"]))
        # Whole pixels that contain the box: the pasted box is exactly the pasted rectangle.
        x1, y1 = np.floor(donor["bboxes"][k][:2]).astype(int)
        x2, y2 = np.ceil(donor["bboxes"][k][2:]).astype(int)
        crop = donor["image"][y1:y2, x1:x2]
        h, w = crop.shape[:2]
        if h < 1 or w < 1 or h > height or w > width:
            continue
        px, py = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        new = np.array([px, py, px + w, py + h], np.float32)                         # (4,) xyxy
        if boxes:
            old = np.stack(boxes)                                                    # (N, 4)
            overlap = (np.minimum(old[:, 2:], new[2:]) - np.maximum(old[:, :2], new[:2])).clip(0).prod(1)  # (N,)
            area = (old[:, 2:] - old[:, :2]).prod(1)                                 # (N,)
            if (overlap / np.maximum(area, 1e-6)).max() > max_cover:  # fraction of each old box covered
                continue
        image[py:py + h, px:px + w] = crop
        boxes.append(new)
        labels.append(int(donor["labels"][k]))
    return {"image": image, "bboxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int64)}


def multi_scale(images: torch.Tensor, boxes: torch.Tensor, frac: float, stride: int = 32
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-scale training (YOLO9000 sec. 2, "Multi-Scale Training"; YOLOv5's ``--multi-scale``): resize a
    whole batch to a random side in [(1 - frac) S, (1 + frac) S], a multiple of ``stride`` so every FPN level
    still divides it. YOLO9000 draws a new side every 10 batches from 320..608; here, as in YOLOv5, every batch.

    (B, 3, S, S) images and (B, M, 4) xyxy boxes in the network frame -> the same at the new side S'.
    The image is square, so the boxes scale by the one factor S' / S. Evaluation stays at S: the network
    learns to find each object at several sizes, as scale jitter teaches it, but batch by batch.
    ``frac`` = 0 returns the batch unchanged."""
    if frac <= 0:
        return images, boxes
    side = images.shape[-1]
    low, high = math.ceil(side * (1 - frac) / stride), math.floor(side * (1 + frac) / stride)
    new = int(torch.randint(low, high + 1, ()).item()) * stride  # torch's generator: saved in last.pt
    if new == side:
        return images, boxes
    images = F.interpolate(images, size=(new, new), mode="bilinear", align_corners=False)
    return images.contiguous(memory_format=torch.channels_last), boxes * (new / side)


def yolov8_jitter(fill: int) -> list:
    """YOLOv8's default per-image jitter (its hyperparameters fliplr 0.5, scale 0.5, translate 0.1,
    hsv_v / hsv_s / hsv_h 0.4 / 0.7 / 0.015), as albumentations transforms to follow the letterbox:

    - scale 0.5-1.5, one factor for x and y, and a shift of up to 10 %, on every image (``build_transforms``'
      light jitter: 0.75-1.25 on half of them); ``fill``: the letterbox's grey for the uncovered border;
    - colour by multiplicative gains, value 0.6-1.4 and saturation 0.3-1.7 (dark pixels stay dark), and a
      hue shift of at most 0.015 of the colour circle, 5 degrees: the enemies' red outline is a cue.

    Differences from YOLOv8: its HSV gains are drawn in OpenCV's HSV space, ColorJitter's brightness and
    saturation factors work on RGB; no perspective or shear (both are 0 in its defaults too)."""
    return [A.HorizontalFlip(p=0.5),  # FPS frames are left/right symmetric; never flip vertically
            A.Affine(scale=(0.5, 1.5), keep_ratio=True, translate_percent=(-0.1, 0.1),  # keep_ratio: x and y alike
                     border_mode=cv2.BORDER_CONSTANT, fill=fill, p=1.0),
            A.ColorJitter(brightness=0.4, contrast=0.0, saturation=0.7, hue=0.015, p=1.0)]


def seed_augmentation(transform: A.Compose, key: tuple[int, int, int]) -> np.random.Generator:
    """Seed ``transform``'s random draws from ``key`` = (seed, epoch, index) and return a numpy generator seeded
    the same way for the draws around it (mosaic and copy-paste donors): an item's augmentation is then the same in
    every run, every DataLoader worker and after a resume, and changes from epoch to epoch."""
    rng = np.random.default_rng(key)
    transform.set_random_state(rng, random.Random("-".join(map(str, key))))
    return rng
