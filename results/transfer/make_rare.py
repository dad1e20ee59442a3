"""Make a dataset with a small, rare third class, in the Hugging Face parquet layout of the course.

    python results/transfer/make_rare.py --out data/valorant-rare

The stand-in has two balanced classes and raccoon one, so neither shows what #42 is about: a class whose boxes
are few and small. This makes one from both, by pasting:

- train: 200 stand-in training images (a fixed random choice), and into 26 of them one raccoon from raccoon's
  training split, cut out at its box and resized so that its longer side is 12-28 px (the size of the stand-in's
  heads), at a random place that overlaps no labelled box. That makes the raccoons ~7 % of the boxes.
- validation / test: the stand-in's own splits, with one raccoon from raccoon's validation / test split pasted
  into 30 / 15 images the same way, so the rare class has enough boxes to give an AP.

Classes: 0 enemyBody, 1 enemyHead, 2 raccoon (categories 1, 2, 3). The pastes are plain rectangles: the edges
make the class easier to see than a real one, so a recipe that misses it misses an easy class.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
STAND_IN, RACCOON = SHARED / "valorant-object-detection", SHARED / "raccoon"
PLAN = {"train": (200, 26), "validation": (None, 30), "test": (None, 15)}  # (images kept, images with a paste)
RARE_CATEGORY = 3


def read(root: Path, split: str) -> pd.DataFrame:
    return pd.read_parquet(next((root / "data").glob(f"{split}-*.parquet")))


def raccoon_crops(split: str) -> list[Image.Image]:
    """Every raccoon of a split, cut out at its box."""
    crops = []
    for _, row in read(RACCOON, split).iterrows():
        img = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
        for x, y, w, h in row["objects"]["bbox"]:
            crops.append(img.crop((int(x), int(y), int(x + w), int(y + h))))
    return crops


def free_place(boxes: np.ndarray, w: int, h: int, side: int, rng) -> tuple[int, int] | None:
    """A top-left corner for a (w, h) paste inside a side x side image that overlaps none of ``boxes`` (xywh)."""
    for _ in range(100):
        x, y = int(rng.integers(0, side - w)), int(rng.integers(0, side - h))
        if all(x + w <= bx or bx + bw <= x or y + h <= by or by + bh <= y for bx, by, bw, bh in boxes):
            return x, y
    return None


def plain(objects: dict) -> dict:
    """The objects column as lists (pyarrow writes lists of lists, not numpy arrays of arrays)."""
    return {k: [list(map(float, b)) for b in v] if k == "bbox" else list(v) for k, v in objects.items()}


def paste(row: dict, crop: Image.Image, rng) -> dict:
    """The row with ``crop`` resized to a 12-28 px longer side and pasted where no box is, labelled raccoon."""
    img = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
    scale = rng.uniform(12, 28) / max(crop.size)
    w, h = max(2, round(crop.width * scale)), max(2, round(crop.height * scale))
    objects = row["objects"]
    boxes = np.array([list(b) for b in objects["bbox"]]).reshape(-1, 4)
    place = free_place(boxes, w, h, min(img.size), rng)
    if place is None:
        return row
    img.paste(crop.resize((w, h), Image.BILINEAR), place)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95)
    new_box = np.array([place[0], place[1], w, h], dtype=np.float32)
    row = dict(row, image={"bytes": out.getvalue(), "path": row["image"]["path"]})
    row["objects"] = {
        "id": objects["id"] + [100_000 + int(row["image_id"])],
        "area": objects["area"] + [w * h],
        "bbox": [list(b) for b in objects["bbox"]] + [new_box.tolist()],
        "category": objects["category"] + [RARE_CATEGORY],
    }
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    (args.out / "data").mkdir(parents=True, exist_ok=True)
    for split, (keep, n_paste) in PLAN.items():
        df = read(STAND_IN, split)
        if keep is not None:
            df = df.iloc[np.sort(rng.choice(len(df), keep, replace=False))]
        rows = [dict(r, objects=plain(r["objects"])) for r in df.to_dict("records")]
        crops = raccoon_crops(split)
        targets = rng.choice(len(rows), n_paste, replace=False)
        for i, t in enumerate(targets):
            rows[t] = paste(rows[t], crops[int(rng.integers(len(crops)))], rng)
        out = pd.DataFrame(rows)
        out.to_parquet(args.out / "data" / f"{split}-00000-of-00001.parquet")
        cats = np.array([c for r in rows for c in r["objects"]["category"]], dtype=int)
        print(f"{split}: {len(rows)} images, boxes per category {np.bincount(cats)[1:].tolist()}")
    card = (STAND_IN / "README.md").read_text()
    card = card.replace("            '2': enemyHead\n", "            '2': enemyHead\n            '3': raccoon\n")
    (args.out / "README.md").write_text(card)


if __name__ == "__main__":
    main()
