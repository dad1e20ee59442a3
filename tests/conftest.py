"""Shared test fixtures: a tiny synthetic dataset written in the real Hugging Face parquet schema.

Images are grey noise with coloured rectangles: red rectangles are category 1 ("box-red"),
blue ones category 2 ("box-blue"); category 0 is the RF100 placeholder, as in the real data.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from tools import sources

CARD = """---
dataset_info:
  features:
  - name: objects
    sequence:
    - name: category
      dtype:
        class_label:
          names:
            '0': shapes
            '1': box-red
            '2': box-blue
---
# synthetic rectangles
"""
COLOURS = {1: (220, 40, 40), 2: (40, 40, 220)}  # RGB per 1-based category


def synthetic_image(rng: np.random.Generator, size: int, max_boxes: int = 3):
    """-> (H, W, 3) uint8 RGB image, COCO xywh boxes (N, 4), 1-based categories (N,)."""
    img = rng.integers(90, 140, (size, size, 3), dtype=np.uint8)
    boxes, cats = [], []
    for _ in range(rng.integers(1, max_boxes + 1)):
        w, h = rng.integers(size // 6, size // 2, 2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        cat = int(rng.integers(1, 3))
        img[y:y + h, x:x + w] = COLOURS[cat]
        boxes.append([float(x), float(y), float(w), float(h)])
        cats.append(cat)
    return img, np.array(boxes, np.float32), np.array(cats, np.int64)


def encode_jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def make_row(image_id: int, image_bytes: bytes, size: int, boxes, cats) -> dict:
    """One parquet row in the RF100 schema (objects.bbox is COCO xywh, categories 1-based)."""
    boxes = [list(map(float, b)) for b in boxes]
    return {"image_id": image_id, "image": {"bytes": image_bytes, "path": f"{image_id}.jpg"},
            "width": size, "height": size,
            "objects": {"id": list(range(len(boxes))), "area": [int(b[2] * b[3]) for b in boxes],
                        "bbox": boxes, "category": [int(c) for c in cats]}}


def write_split(root: Path, split: str, rows: list[dict]) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")


def make_dataset(root: Path, sizes=None, image_size: int = 128, seed: int = 0, empty_images: int = 0,
                 max_boxes: int = 3) -> Path:
    """Write train/validation/test splits of synthetic images; returns ``root``."""
    sizes = sizes or {"train": 48, "validation": 16, "test": 16}
    rng = np.random.default_rng(seed)
    image_id = 0
    for split, n in sizes.items():
        rows = []
        for i in range(n):
            img, boxes, cats = synthetic_image(rng, image_size, max_boxes)
            if i < empty_images:  # an image without objects is a valid sample
                img, boxes, cats = rng.integers(90, 140, img.shape, dtype=np.uint8), np.zeros((0, 4)), []
            rows.append(make_row(image_id, encode_jpeg(img), image_size, boxes, cats))
            image_id += 1
        write_split(root, split, rows)
    (root / "README.md").write_text(CARD)
    return root


class Stop(Exception):
    """Raised to interrupt a training run at a chosen point, as a kill would."""


def interrupt_then_resume(monkeypatch, args: list[str], stop_after: int) -> dict:
    """``train.main(args)`` stopped right after epoch ``stop_after`` was saved, then continued with ``--resume``
    from its last.pt. Returns the last.pt the resume started from."""
    import train

    real_plot, calls = train.plot_history, []

    def plot_then_stop(rows, run_dir):
        real_plot(rows, run_dir)
        calls.append(run_dir)
        if len(calls) == stop_after:
            raise Stop

    monkeypatch.setattr(train, "plot_history", plot_then_stop)
    with pytest.raises(Stop):
        train.main(args)
    monkeypatch.setattr(train, "plot_history", real_plot)
    saved = torch.load(calls[-1] / "last.pt", weights_only=False)
    train.main(["--resume", str(calls[-1] / "last.pt")])
    return saved


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny"), empty_images=2)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every test runs as on a machine without network, whatever this one has: the hub probe says no, so
    no test downloads weights or data and each takes the same path everywhere. A test of the online path
    patches the probe back (``test_other_backbones_load_timms_download_online``)."""
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: False)
