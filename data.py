"""Data: Hugging Face parquet detection datasets -> augmented tensors.

Course section: "Dataset & augmentations". The course dataset is Roboflow-100's
``Francesco/halo-infinite-angel-videogame``; every ``Francesco/*`` RF100 dataset has this layout::

    <root>/README.md                         dataset card; YAML header lists the class names
    <root>/data/{train,validation,test}-*.parquet
        image_id  int64;  image {bytes: JPEG/PNG, path};  width, height
        objects   {id, area, bbox: COCO [x, y, w, h] pixels, category: 1-based}

In data-flow order: ``parse_row`` converts every box ONCE from COCO xywh to xyxy pixels (checked on the
way, tools/checks.py); ``DetectionDataset`` decodes an image and runs ``build_transforms``' albumentations
pipeline (letterbox + augment); ``collate`` stacks a batch and ``pad_targets`` pads its boxes to
``(B, M, ...)`` for the assigner. ``boxes_to_image`` is the way back to the image's own pixels.

Differences from the course notebook:

- Boxes are xyxy pixels from the moment they are read; nothing downstream ever sees xywh.
- Images are letterboxed (longest side resized, padded to a square), not stretched: aspect ratios stay.
- Augmentation randomness is seeded per (seed, epoch, image): a run is repeatable and a resumed run
  sees exactly the images it would have seen.
"""
from __future__ import annotations

import glob
import sys
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from albumentations.pytorch import ToTensorV2
from torch.nn.utils.rnn import pad_sequence

from tools.augment import paste_objects, seed_augmentation, yolov8_jitter
from tools.checks import Problem, check_boxes, check_image, check_objects, report
from tools.sources import DataError, load_class_names

SPLITS = ("train", "validation", "test")
AUG_LEVELS = ("none", "basic", "strong")
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


def split_files(root: Path, split: str) -> list[str]:
    """The parquet files of one split: ``<root>/data/<split>-*.parquet``."""
    files = sorted(glob.glob(str(Path(root) / "data" / f"{split}-*.parquet")))
    if not files:
        raise DataError(f"no {split} split: {Path(root) / 'data' / f'{split}-*.parquet'} matches no file")
    return files


def split_rows(root: Path, split: str, problems: list[Problem]):
    """Every row of a split as (row dict, "file.parquet row 12 (image_id 34)"), with a clear error for a file
    that is not the Hugging Face layout; a repeated image_id is appended to ``problems``."""
    seen = set()
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
            yield row, where


def dataset_image_size(root: Path) -> int:
    """The dataset's own (most common) image side, rounded up to a multiple of 32: 640 Halo, 416 stand-in."""
    df = pd.read_parquet(split_files(root, "train")[0], columns=["width", "height"])
    side = int(pd.concat([df["width"], df["height"]]).mode().iloc[0])
    return (side + 31) // 32 * 32


def parse_row(row: dict, num_classes: int, where: str) -> tuple[Record | None, list[Problem]]:
    """One parquet row -> Record: COCO xywh -> xyxy pixels and 1-based category -> 0-based label, ONCE.

    Every row is checked on the way (tools/checks.py): bad boxes are dropped, boxes crossing the border
    clipped, an unusable image gives ``None``; each such decision comes back as a Problem."""
    size, problems = check_image(row, where)                       # (W, H) from the image header
    objects, object_problems = check_objects(row, where) if size else (None, [])
    if objects is None:
        return None, problems + object_problems
    xywh, cats = objects                                            # (N, 4) COCO boxes, (N,) categories
    boxes = coco_to_xyxy(xywh)                                      # (N, 4) xyxy pixels
    labels = cats - FIRST_CATEGORY_ID                               # (N,) 0-based model classes
    keep, boxes, box_problems = check_boxes(xywh, cats, boxes, labels, size, num_classes, where)
    record = Record(int(row["image_id"]), row["image"]["bytes"], boxes[keep], labels[keep], where)
    return record, problems + box_problems


def scan_split(root: Path, split: str, num_classes: int) -> tuple[list[Record], list[Problem]]:
    """Every usable row of a split as a Record (boxes xyxy, labels 0-based), and every problem found."""
    records, problems = [], []
    for row, where in split_rows(root, split, problems):  # a repeated image_id is a problem too
        rec, row_problems = parse_row(row, num_classes, where)
        problems += row_problems
        if rec is not None:
            records.append(rec)
    return records, problems


def read_split(root: Path, split: str, num_classes: int, strict: bool = False) -> list[Record]:
    """The usable Records of a split; its problems are reported, or with ``strict`` the first one raises."""
    records, problems = scan_split(root, split, num_classes)
    report(problems, split, strict)
    return records


def decode_image(rec: Record) -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8 RGB."""
    arr = cv2.imdecode(np.frombuffer(rec.image_bytes, np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise DataError(f"{rec.where}: image bytes could not be decoded")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- augmentation
def build_transforms(img_size: int, train: bool, aug: str = "basic", jitter: str = "light") -> A.Compose:
    """albumentations pipeline: (H,W,3) uint8 + xyxy boxes -> (3,S,S) uint8 pixels + boxes.

    Test (``train=False``) or ``aug="none"``: letterbox (resize longest side, pad to a square).
    ``"basic"`` adds flip, colour and scale/translate jitter (``jitter="yolov8"``: YOLOv8's stronger one,
    tools/augment.py); ``"strong"`` puts a 4-image Mosaic in front (the dataset hands it 3 donor images).
    No normalisation: the images stay uint8 until the model's device, where ``Backbone.forward`` normalises
    them (a quarter of the bytes through the workers and the host-to-GPU copy)."""
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
        after = yolov8_jitter(PAD_VALUE) if jitter == "yolov8" else [
            A.HorizontalFlip(p=0.5),  # FPS frames are left/right symmetric; never flip vertically
            A.Affine(scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_CONSTANT,
                     fill=PAD_VALUE, p=0.5),  # x and y each drawn from the range (keep_ratio=False)
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=30, val_shift_limit=20, p=0.5),
            A.RandomBrightnessContrast(p=0.3),
        ]
    return A.Compose(
        before + letterbox + after + [ToTensorV2()],  # (H,W,3) -> (3,H,W), still uint8
        # clip: boxes pushed past the border by Affine are cut to the image;
        # min_visibility: a box less than 30% visible after that is dropped (with its label).
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True,
                                 min_visibility=0.3, min_width=1, min_height=1, filter_invalid_bboxes=True),
    )


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


# --------------------------------------------------------------------------- dataset and batches
class DetectionDataset(torch.utils.data.Dataset):
    """One split of a parquet detection dataset. Item: (image (3,S,S) float, target dict) with

    - ``boxes`` (N, 4) xyxy and ``labels`` (N,): after the transform, in the network frame (what training uses);
    - ``image_id``, ``image_size`` (H, W), ``image_boxes`` (N0, 4) xyxy and ``image_labels`` (N0,): the
      dataset's own id, pixels and boxes, untouched by the transform (what evaluation scores against).

    ``cache``: decode every image once, up front (DataLoader workers share the arrays); an image whose
    body is broken is then dropped with a warning (an error with ``strict``). ``copy_paste`` > 0: objects
    of that many other images are pasted into each image before the transform (tools/augment.py)."""

    def __init__(self, root, split: str, transform: A.Compose, class_names: list[str] | None = None,
                 seed: int = 0, strict: bool = False, cache: bool = True, copy_paste: int = 0):
        self.root, self.transform, self.copy_paste = Path(root), transform, copy_paste
        self.class_names = class_names or load_class_names(self.root)
        self.records = read_split(self.root, split, len(self.class_names), strict)
        self.images = None
        if cache:
            decoded = [(rec, self._try_decode(rec, strict)) for rec in self.records]
            self.records = [rec for rec, image in decoded if image is not None]
            self.images = [image for _, image in decoded if image is not None]
        if not self.records:
            raise DataError(f"{self.root}: the {split} split has no usable image")
        self.seed = seed  # item i of epoch e is augmented by generators seeded (seed, e, i)

    @staticmethod
    def _try_decode(rec: Record, strict: bool) -> np.ndarray | None:
        try:
            return decode_image(rec)
        except DataError as e:
            if strict:
                raise
            print(f"[data] warning: {e} (image skipped)", file=sys.stderr)
            return None

    def __len__(self):
        return len(self.records)

    def load(self, i: int) -> dict:
        """Decoded image (H,W,3) uint8 with its boxes (already clipped to the image by ``parse_row``)."""
        rec = self.records[i]
        image = self.images[i] if self.images is not None else decode_image(rec)
        return {"image": image, "bboxes": rec.boxes, "labels": rec.labels}

    def __getitem__(self, key):
        """``key``: an index (epoch 0), or ``(epoch, index)`` as ``EpochSampler`` gives them during training.
        Same (seed, epoch, index), same augmentation: in every run, every worker, and after a resume."""
        epoch, i = key if isinstance(key, tuple) else (0, key)
        rec = self.records[i]
        rng = seed_augmentation(self.transform, (self.seed, epoch, i))  # every random draw below follows
        sample = self.load(i)
        if self.copy_paste:
            donors = [self.load(int(j)) for j in rng.integers(0, len(self), self.copy_paste)]
            sample = paste_objects(sample, donors, rng)
        if any(isinstance(t, A.Mosaic) for t in self.transform.transforms):  # donors for the other 3 cells
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


class EpochSampler(torch.utils.data.Sampler):
    """The training order: a new random permutation of the ``n`` images each epoch, each index handed to the
    dataset with its epoch as ``(epoch, index)``.

    The epoch travels with the index because persistent DataLoader workers keep the copy of the dataset they
    started with: an epoch set on the dataset would never reach them. The permutation is drawn whole when the
    epoch starts, exactly one per epoch from ``generator``, however far ahead the workers prefetch: the order
    is the same with or without workers, and after a resume on another machine."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator, self.epoch = n, generator, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()  # (n,) this epoch's order
        return ((self.epoch, i) for i in order)


def collate(batch):
    """List of (image, target) -> images (B,3,S,S) uint8, list of B target dicts."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def pad_targets(targets: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image targets -> gt_boxes (B,M,4), gt_labels (B,M), gt_mask (B,M); M = most boxes in one image.

    Padding lets the assigner work on the whole batch at once; ``gt_mask`` marks the real boxes.
    """
    gt_boxes = pad_sequence([t["boxes"] for t in targets], batch_first=True)     # (B, M, 4), zeros past N_i
    gt_labels = pad_sequence([t["labels"] for t in targets], batch_first=True)   # (B, M)
    gt_mask = pad_sequence([torch.ones(len(t["labels"]), dtype=torch.bool) for t in targets], batch_first=True)
    return gt_boxes.float(), gt_labels.long(), gt_mask
