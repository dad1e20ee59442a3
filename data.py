"""Data: Hugging Face parquet detection datasets -> augmented tensors.

Course section: "Dataset & augmentations". The course dataset is Roboflow-100's
``Francesco/halo-infinite-angel-videogame`` on the Hugging Face hub. Every
``Francesco/*`` RF100 dataset has the same parquet layout::

    <root>/README.md                         dataset card; YAML header lists the class names
    <root>/data/{train,validation,test}-*.parquet
        image_id  int64
        image     {bytes: JPEG/PNG, path}
        width, height
        objects   {id, area, bbox: COCO [x, y, w, h] pixels, category: 1-based}

Category id 0 is Roboflow's super-category placeholder ("enemies", ...) that no
box uses, so the model's class ``k`` is the dataset's category ``k + 1``.

In data-flow order: ``parse_row`` converts every box ONCE from COCO xywh to xyxy
pixels (checking it on the way, datacheck.py); ``DetectionDataset`` decodes an image
and runs the albumentations pipeline of ``build_transforms`` (letterbox + augment);
``collate`` stacks a batch and ``pad_targets`` pads its boxes to ``(B, M, ...)`` for
the assigner; with ``--multi-scale`` the training step resizes each batch (``multi_scale``).
``boxes_to_image`` is the way back, from the network frame to the
image's own pixels. (Which dataset to use: sources.py.)

Differences from the course notebook:

- Boxes are xyxy pixels from the moment they are read; nothing downstream
  ever sees xywh (the notebook converts back and forth).
- Images are letterboxed (longest side resized, then padded to a square),
  not stretched, so box aspect ratios stay as they are in the game frame.
- Augmentation randomness is seeded per (seed, epoch, image): a run is
  repeatable and a resumed run sees exactly the images it would have seen.
"""
from __future__ import annotations

import glob
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2

from datacheck import Problem, check_boxes, check_image, check_objects, report
from sources import DataError, load_class_names

SPLITS = ("train", "validation", "test")
PAD_VALUE = 114  # grey letterbox border, as YOLOX/YOLOv5 use
# RF100 categories are 1-based: id 0 is the super-category placeholder no box uses.
# Model class k  <->  dataset category k + FIRST_CATEGORY_ID (parse_row one way, COCO export the other).
FIRST_CATEGORY_ID = 1


# --------------------------------------------------------------------------- reading rows
@dataclass
class Record:
    """One image: its encoded bytes and its boxes, already in the repo's format."""
    image_id: int
    image_bytes: bytes
    boxes: np.ndarray   # (N, 4) float32 xyxy pixels, inside the image
    labels: np.ndarray  # (N,) int64, 0-based model class ids
    where: str          # "file.parquet row 12 (image_id 34)", for messages


def coco_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """(N, 4) COCO [x, y, w, h] -> (N, 4) [x1, y1, x2, y2]."""
    xywh = np.asarray(xywh, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def parse_row(row: dict, num_classes: int, where: str) -> tuple[Record | None, list[Problem]]:
    """One parquet row -> Record: COCO xywh -> xyxy pixels and 1-based category -> 0-based label, ONCE.

    Every row is checked on the way (datacheck.py): bad boxes are dropped, boxes crossing the border
    clipped, an unusable image gives ``None``; each such decision comes back as a Problem."""
    size, problems = check_image(row, where)                       # (W, H) from the image header
    objects, found = check_objects(row, where) if size else (None, [])
    if objects is None:
        return None, problems + found
    xywh, cats = objects                                            # (N, 4) COCO boxes, (N,) categories
    boxes = coco_to_xyxy(xywh)                                      # (N, 4) xyxy pixels
    labels = cats - FIRST_CATEGORY_ID                               # (N,) 0-based model classes
    keep, boxes, found = check_boxes(xywh, cats, boxes, labels, size, num_classes, where)
    return Record(int(row["image_id"]), row["image"]["bytes"], boxes[keep], labels[keep], where), problems + found


def split_files(root: Path, split: str) -> list[str]:
    files = sorted(glob.glob(str(Path(root) / "data" / f"{split}-*.parquet")))
    if not files:
        raise DataError(f"no {split} split: {Path(root) / 'data' / f'{split}-*.parquet'} matches no file")
    return files


def scan_split(root: Path, split: str, num_classes: int) -> tuple[list[Record], list[Problem]]:
    """Every usable row of a split as a Record (boxes xyxy, labels 0-based), and every problem found."""
    records, problems, seen = [], [], set()
    for f in split_files(root, split):
        try:
            df = pd.read_parquet(f)
        except Exception as e:
            raise DataError(f"{f}: not a readable parquet file ({type(e).__name__}: {e})") from None
        missing = {"image_id", "image", "objects"} - set(df.columns)
        if missing:
            raise DataError(f"{f}: missing column(s) {sorted(missing)} (expected the Hugging Face RF100 layout)")
        for i, row in enumerate(df.to_dict("records")):
            where = f"{Path(f).name} row {i} (image_id {row['image_id']})"
            if row["image_id"] in seen:
                problems.append(Problem(where, "duplicate image_id (COCO results would mix two images)", False))
            seen.add(row["image_id"])
            rec, found = parse_row(row, num_classes, where)
            problems += found
            if rec is not None:
                records.append(rec)
    return records, problems


def read_split(root: Path, split: str, num_classes: int, strict: bool = False) -> list[Record]:
    """The usable Records of a split; its problems are reported (``datacheck.report``), or with ``strict``
    the first one raises a DataError naming the file and row."""
    records, problems = scan_split(root, split, num_classes)
    report(problems, split, strict)
    return records


def dataset_image_size(root: Path) -> int:
    """The dataset's own (most common) image side, rounded up to a multiple of 32: 640 Halo, 416 stand-in."""
    df = pd.read_parquet(split_files(root, "train")[0], columns=["width", "height"])
    side = int(pd.concat([df["width"], df["height"]]).mode().iloc[0])
    return (side + 31) // 32 * 32


def decode_image(rec: Record) -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8 RGB."""
    arr = cv2.imdecode(np.frombuffer(rec.image_bytes, np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise DataError(f"{rec.where}: image bytes could not be decoded")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- augmentation
AUG_LEVELS = ("none", "basic", "strong")


def build_transforms(img_size: int, train: bool, mean, std, aug: str = "basic") -> A.Compose:
    """albumentations pipeline: (H,W,3) uint8 + xyxy boxes -> (3,S,S) float normalised + boxes.

    Test (``train=False``) or ``aug="none"``: letterbox (resize longest side, pad to a square) + normalise.
    ``"basic"`` adds flip, colour and scale/translate jitter; ``"strong"`` puts a 4-image Mosaic in front
    (the dataset hands it 3 donor images). ``mean``/``std`` must be the backbone's pretrained ones.
    """
    if aug not in AUG_LEVELS:
        raise ValueError(f"aug must be one of {AUG_LEVELS}, got {aug!r}")
    letterbox = [A.LongestMaxSize(max_size=img_size),
                 A.PadIfNeeded(img_size, img_size, position="top_left",
                               border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE)]
    before, after = [], []
    if train and aug == "strong":
        # Mosaic (YOLOv4 sec. 3.3): 4 images in a 2x2 grid, then a crop of one image's size around a random
        # centre. Objects keep their scale but appear with new neighbours, borders and partial views.
        before = [A.Mosaic(target_size=(img_size, img_size), cell_shape=(img_size, img_size), fit_mode="contain",
                           fill=PAD_VALUE, p=1.0)]
    if train and aug in ("basic", "strong"):
        after = [
            A.HorizontalFlip(p=0.5),  # FPS frames are left/right symmetric; never flip vertically
            A.Affine(scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_CONSTANT,
                     fill=PAD_VALUE, p=0.5),
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=30, val_shift_limit=20, p=0.5),
            A.RandomBrightnessContrast(p=0.3),
        ]
    return A.Compose(
        before + letterbox + after + [A.Normalize(mean=mean, std=std), ToTensorV2()],
        # clip: boxes pushed past the border by Affine are cut to the image;
        # min_visibility: a box less than 30% visible after that is dropped (with its label).
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True,
                                 min_visibility=0.3, min_width=1, min_height=1, filter_invalid_bboxes=True),
    )


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


def letterbox_size(height: int, width: int, img_size: int) -> tuple[int, int]:
    """(h, w) of the image inside the letterbox, before the padding: the longer side becomes ``img_size``,
    each side rounded as albumentations' ``LongestMaxSize`` rounds it."""
    s = img_size / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def boxes_to_image(boxes: torch.Tensor, image_hw: tuple[int, int], img_size: int) -> torch.Tensor:
    """The one way back from the network frame to an image's own pixels: (N, 4) xyxy in the letterboxed
    ``img_size`` square -> (N, 4) xyxy in the original (H, W) image, clipped to it.

    The letterbox scales the image to (h, w) = ``letterbox_size`` and pads bottom/right (top-left
    position), so undoing it is one scale per axis, W / w and H / h; padding needs no shift."""
    height, width = image_hw
    h, w = letterbox_size(height, width, img_size)
    out = boxes * boxes.new_tensor([width / w, height / h, width / w, height / h])
    out[:, 0::2] = out[:, 0::2].clamp(0, width)   # a box reaching into the padding ends at the border
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


def uses_mosaic(transform: A.Compose) -> bool:
    return any(isinstance(t, A.Mosaic) for t in transform.transforms)


class DetectionDataset(torch.utils.data.Dataset):
    """One split of a parquet detection dataset. Item: (image (3,S,S) float, target dict) with

    - ``boxes`` (N, 4) xyxy and ``labels`` (N,): after the transform, in the network frame (what training uses);
    - ``image_id``, ``image_size`` (H, W), ``image_boxes`` (N0, 4) xyxy and ``image_labels`` (N0,): the
      dataset's own id, pixels and boxes, untouched by the transform (what evaluation scores against).

    ``copy_paste`` > 0 (training): objects of that many other images are pasted into each image before the
    transform (``paste_objects``)."""

    def __init__(self, root, split: str, transform: A.Compose, class_names: list[str] | None = None,
                 seed: int = 0, strict: bool = False, cache: bool = True, copy_paste: int = 0):
        self.root, self.strict, self.copy_paste = Path(root), strict, copy_paste
        self.class_names = class_names or load_class_names(self.root)
        self.records = read_split(self.root, split, len(self.class_names), strict)
        self.images = self._decode_all() if cache else None
        if not self.records:
            raise DataError(f"{self.root}: the {split} split has no usable image")
        self.transform = transform
        self.seed, self.epoch = seed, 0

    def _decode_all(self) -> list[np.ndarray]:
        """``cache=True``: decode every image once, up front (a few seconds), instead of once per epoch.
        DataLoader workers are forked from this process, so they share these arrays without copying.
        Images whose bytes have a valid header but a broken body are found only here, and dropped with
        a warning (an error with ``strict``); without the cache such an image is an error when it is read."""
        images, kept = [], []
        for rec in self.records:
            try:
                images.append(decode_image(rec))
                kept.append(rec)
            except DataError as e:
                if self.strict:
                    raise
                print(f"[data] warning: {e} (image skipped)", file=sys.stderr)
        self.records = kept
        return images

    def set_epoch(self, epoch: int) -> None:
        """Augmentations of item i in epoch e are drawn from a generator seeded with (seed, e, i): the
        same in every run and every DataLoader worker, so a resumed run sees exactly the same images."""
        self.epoch = epoch

    def __len__(self):
        return len(self.records)

    def load(self, i: int) -> dict:
        """Decoded image (H,W,3) uint8 with its boxes (already clipped to the image by ``parse_row``)."""
        rec = self.records[i]
        image = self.images[i] if self.images is not None else decode_image(rec)
        return {"image": image, "bboxes": rec.boxes, "labels": rec.labels}

    def __getitem__(self, i):
        rec = self.records[i]
        key = (self.seed, self.epoch, i)
        rng = np.random.default_rng(key)
        self.transform.set_random_state(rng, random.Random("-".join(map(str, key))))
        sample = self.load(i)
        if self.copy_paste:  # objects of ``copy_paste`` other training images pasted into this one
            sample = paste_objects(sample, [self.load(int(j)) for j in rng.integers(0, len(self), self.copy_paste)],
                                   rng)
        if uses_mosaic(self.transform):  # three donor images for the other mosaic cells
            sample["mosaic_metadata"] = [self.load(int(j)) for j in rng.integers(0, len(self), 3)]
        out = self.transform(**sample)
        target = {
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4)),  # (N, 4) xyxy
            "labels": torch.as_tensor(np.asarray(out["labels"], np.int64).reshape(-1)),       # (N,)
            "image_id": rec.image_id,
            "image_size": sample["image"].shape[:2],                                          # (H, W)
            "image_boxes": torch.as_tensor(rec.boxes),                                        # (N0, 4) xyxy
            "image_labels": torch.as_tensor(rec.labels),                                      # (N0,)
        }
        return out["image"], target


def collate(batch):
    """List of (image, target) -> images (B,3,S,S), list of B target dicts."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def pad_targets(targets: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image targets -> gt_boxes (B,M,4), gt_labels (B,M), gt_mask (B,M); M = most boxes in one image.

    Padding lets the assigner work on the whole batch at once; ``gt_mask`` marks the real boxes.
    """
    b = len(targets)
    m = max((len(t["labels"]) for t in targets), default=0)
    gt_boxes = torch.zeros(b, m, 4)
    gt_labels = torch.zeros(b, m, dtype=torch.long)
    gt_mask = torch.zeros(b, m, dtype=torch.bool)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        gt_boxes[i, :n] = t["boxes"]
        gt_labels[i, :n] = t["labels"]
        gt_mask[i, :n] = True
    return gt_boxes, gt_labels, gt_mask
