"""A non-square copy of the stand-in's test split, for checking evaluate.py's image frame on real frames.

    python results/eval-frame/crop_standin.py OUT_DIR [--data ../shared/data/valorant-object-detection]

Every 416x416 test frame is cropped to its central 416x288 band (W x H); boxes are cut to the band and
kept when at least 2 px of them remain, in the same parquet layout, ids and card as the original.
"""
import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared/data/valorant-object-detection"))
args = p.parse_args()
src, out = Path(args.data), Path(args.out)
(out / "data").mkdir(parents=True, exist_ok=True)
shutil.copy(src / "README.md", out / "README.md")
top, height = 64, 288
for split in ("train", "validation", "test"):
    df = pd.read_parquet(next((src / "data").glob(f"{split}-*.parquet")))
    if split != "test":  # only test is evaluated; the others just have to exist
        df.head(1).to_parquet(out / "data" / f"{split}-00000-of-00001.parquet")
        continue
    rows = []
    for r in df.to_dict("records"):
        img = cv2.imdecode(np.frombuffer(r["image"]["bytes"], np.uint8), cv2.IMREAD_COLOR)[top:top + height]
        boxes, cats = [], []
        for (x, y, w, h), c in zip(r["objects"]["bbox"], r["objects"]["category"]):
            y1, y2 = max(y, top) - top, min(y + h, top + height) - top
            if y2 - y1 >= 2:
                boxes.append([float(x), float(y1), float(w), float(y2 - y1)])
                cats.append(int(c))
        rows.append({"image_id": r["image_id"], "width": img.shape[1], "height": img.shape[0],
                     "image": {"bytes": cv2.imencode(".jpg", img)[1].tobytes(), "path": r["image"]["path"]},
                     "objects": {"id": list(range(len(boxes))), "area": [b[2] * b[3] for b in boxes],
                                 "bbox": boxes, "category": cats}})
    pd.DataFrame(rows).to_parquet(out / "data" / f"{split}-00000-of-00001.parquet")
    print(f"{split}: {len(rows)} frames, {sum(len(r['objects']['bbox']) for r in rows)} boxes -> {out}")
