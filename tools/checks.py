"""Row checks for the parquet layout, run whenever data.py reads a split. Not a course concept.

``data.parse_row`` calls ``check_image``, ``check_objects`` and ``check_boxes`` on every row: bad boxes are
dropped, boxes crossing the border clipped, an unusable image skipped, and each decision is a ``Problem``
naming the file and row. ``report`` prints them (``train.py --strict`` makes them errors);
``python -m tools.datacheck`` lists them all without training. ``round_to_stride`` makes an input side a
multiple of the largest stride.
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tools.sources import DataError


@dataclass
class Problem:
    """Something wrong with a row. ``fatal``: data had to be thrown away (a box or the whole image);
    otherwise it was repaired (clipped). With ``strict`` every problem is an error."""
    where: str
    what: str
    fatal: bool

    def __str__(self):
        return f"{self.where}: {self.what}"


def image_header_size(data: bytes | None) -> tuple[int, int] | None:
    """(width, height) read from the image header only (fast), or None if the bytes are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return None


def check_image(row: dict, where: str) -> tuple[tuple[int, int] | None, list[Problem]]:
    """The image's (W, H) from its header (None: not an image, skipped) and whether the row's width/height
    columns agree with it."""
    img = row["image"]
    size = image_header_size(img.get("bytes") if isinstance(img, dict) else None)
    if size is None:
        return None, [Problem(where, "image bytes could not be decoded (image skipped)", True)]
    if (row.get("width"), row.get("height")) != size:
        return size, [Problem(where, f"width/height columns say {row.get('width')}x{row.get('height')}, "
                                     f"the image is {size[0]}x{size[1]} (the image's size is used)", False)]
    return size, []


def check_objects(row: dict, where: str):
    """The row's boxes and categories as arrays, ((N, 4) float32 COCO xywh, (N,) int64), or None (image
    skipped) when they are not N boxes of 4 numbers with N categories."""
    objs = row["objects"] if row["objects"] is not None else {}
    bbox, cats = list(objs.get("bbox", [])), np.asarray(objs.get("category", []), dtype=np.int64).reshape(-1)
    try:
        xywh = np.array([np.asarray(b, dtype=np.float32) for b in bbox], dtype=np.float32).reshape(len(bbox), 4)
    except ValueError:
        return None, [Problem(where, "bbox entries are not 4 numbers [x, y, w, h] (image skipped)", True)]
    if len(cats) != len(xywh):
        return None, [Problem(where, f"{len(xywh)} boxes but {len(cats)} categories (image skipped)", True)]
    return (xywh, cats), []


def check_boxes(xywh: np.ndarray, cats: np.ndarray, boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int],
                num_classes: int, where: str) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Which boxes to keep: (N,) bool, the (N, 4) xyxy boxes clipped to the (W, H) image, and the problems.
    Dropped: non-positive width/height, a category outside the class list, a box entirely outside the
    image; clipped: a box partly outside (by more than 1 px of rounding)."""
    problems, (w, h) = [], size
    keep = np.ones(len(boxes), bool)
    for k in range(len(boxes)):
        if not np.isfinite(xywh[k]).all() or xywh[k, 2] <= 0 or xywh[k, 3] <= 0:
            problems.append(Problem(where, f"box {k} {xywh[k].tolist()} has non-positive width/height "
                                           "(COCO x, y, w, h; box dropped)", True))
            keep[k] = False
        elif not 0 <= labels[k] < num_classes:
            problems.append(Problem(where, f"box {k}: category id {int(cats[k])} is outside the class list "
                                           f"(valid: 1..{num_classes}; box dropped)", True))
            keep[k] = False
    inside = boxes.copy()
    inside[:, 0::2] = inside[:, 0::2].clip(0, w)
    inside[:, 1::2] = inside[:, 1::2].clip(0, h)
    for k in np.nonzero(keep)[0]:
        if np.abs(inside[k] - boxes[k]).max() > 1:  # more than rounding noise outside the image
            gone = inside[k, 2] - inside[k, 0] < 1 or inside[k, 3] - inside[k, 1] < 1
            problems.append(Problem(where, f"box {k} {boxes[k].round(1).tolist()} (xyxy) lies "
                                           f"{'entirely' if gone else 'partly'} outside the {w}x{h} image "
                                           f"({'dropped' if gone else 'clipped'})", bool(gone)))
            keep[k] &= not gone
    return keep, inside, problems


def report(problems: list[Problem], split: str, strict: bool = False) -> None:
    """One warning line per problem plus a summary; with ``strict`` the first problem is a DataError."""
    if problems and strict:
        raise DataError(f"{problems[0]}  [--strict: fix the row or train without --strict]")
    for p in problems:
        print(f"[data] warning: {p}", file=sys.stderr)
    if problems:
        dropped = sum(p.fatal for p in problems)
        print(f"[data] {split}: {len(problems)} problem(s), {dropped} box(es)/image(s) dropped, "
              f"{len(problems) - dropped} repaired; `python -m tools.datacheck` lists them", file=sys.stderr)


def round_to_stride(size: int, stride: int = 32) -> int:
    """Image sides must be multiples of the largest stride; round up (and say so)."""
    if size % stride:
        rounded = (size + stride - 1) // stride * stride
        print(f"[size] {size} is not a multiple of the largest stride {stride}: using {rounded}")
        return rounded
    return size
