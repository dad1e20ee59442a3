"""What inference precision does to the shipped model's boxes and validation mAP (RESULTS.md section 6).

    python results/precision/infer_precision.py     # from the repo root; writes results/precision/infer_precision.json

The same BN-folded model scored on the validation split in fp32, and under CPU autocast to bf16 and fp16 (CPU
autocast emulates what a GPU computes in each); and for every anchor that detects something in fp32 (class
score >= 0.3), how far its box corners move in the other precision (mean and max, pixels of the 416 px frame).
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from data import DetectionDataset, build_transforms, collate  # noqa: E402
from detector import load_checkpoint  # noqa: E402
from evaluate import evaluate  # noqa: E402
from tools.device import autocast  # noqa: E402
from tools.sources import resolve_data_root  # noqa: E402

model, ckpt = load_checkpoint("weights/detector.pt")
size = ckpt["train_args"]["img_size"]
ds = DetectionDataset(resolve_data_root(None), "validation",
                      build_transforms(size, False), ckpt["class_names"])
loader = torch.utils.data.DataLoader(ds, 8, collate_fn=collate)
out = {}
with torch.no_grad():  # fp32 boxes of the anchors that detect something (class score >= 0.3)
    reference = []
    for images, _ in loader:
        fp32 = model(images.contiguous(memory_format=torch.channels_last))
        reference.append((fp32.boxes, fp32.cls_logits.sigmoid().amax(-1) >= 0.3))
for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
    res, _ = evaluate(model, loader, desc=name, dtype=dtype)
    moved = []
    with torch.no_grad():
        for (images, _), (ref, detected) in zip(loader, reference):
            with autocast(torch.device("cpu"), dtype):
                boxes = model(images.contiguous(memory_format=torch.channels_last)).boxes.float()
            moved.append((boxes - ref)[detected].abs().flatten())
    moved = torch.cat(moved)
    out[name] = {"val_map": round(float(res["map"]), 4), "val_map50": round(float(res["map_50"]), 4),
                 "val_map75": round(float(res["map_75"]), 4), "corner_px_mean": round(float(moved.mean()), 3),
                 "corner_px_max": round(float(moved.max()), 3)}
    print(name, out[name])
Path(__file__).with_suffix(".json").write_text(json.dumps(out, indent=1))
