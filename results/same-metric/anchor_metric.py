"""The same detections scored by COCO's rules (torchmetrics, as evaluate.py) and by ultralytics' own AP code
(``match_predictions`` + ``ap_per_class``, what a YOLOv8 results.csv reports), at evaluate.py's post-processing
(NMS IoU 0.6, 100 detections per image) and at ultralytics' validation settings (NMS IoU 0.7, 300).

    pip install --no-deps --target /tmp/ul ultralytics==8.4.190     # a measuring tool here, not a dependency
    PYTHONPATH=/tmp/ul:. python results/same-metric/anchor_metric.py --checkpoint weights/detector.pt --split validation

Both score the boxes in each image's own pixels against the dataset's own boxes (``evaluate.evaluate``).
"""
import argparse
from types import SimpleNamespace

import numpy as np
import torch
from ultralytics.engine.validator import BaseValidator
from ultralytics.utils.metrics import ap_per_class, box_iou

from data import DetectionDataset, build_transforms, collate
from evaluate import evaluate
from detector import model_from_checkpoint
from tools.checkpoint import read_checkpoint
from tools.sources import resolve_data_root


def ultralytics_map(detections: list[dict]) -> tuple[float, float, float, np.ndarray]:
    """(mAP50-95, mAP50, mAP75, per-class AP (C, 10)) by ultralytics' matching and AP code."""
    matcher = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    tps, confs, pred_cls, target_cls = [], [], [], []
    for d in detections:
        order = d["scores"].argsort(descending=True)                    # match_predictions wants conf order
        boxes, scores, labels = d["boxes"][order], d["scores"][order], d["labels"][order]
        iou = box_iou(d["gt_boxes"], boxes) if len(d["gt_boxes"]) and len(boxes) else torch.zeros(len(d["gt_boxes"]),
                                                                                                  len(boxes))
        tps.append(BaseValidator.match_predictions(matcher, labels, d["gt_labels"], iou).numpy())
        confs.append(scores.numpy())
        pred_cls.append(labels.numpy())
        target_cls.append(d["gt_labels"].numpy())
    out = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pred_cls), np.concatenate(target_cls))
    ap = out[5]                                                          # (C, 10) AP per class and IoU threshold
    return float(ap.mean()), float(ap[:, 0].mean()), float(ap[:, 5].mean()), ap


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="weights/detector.pt")
    p.add_argument("--split", default="validation")
    p.add_argument("--data", default=None)
    args = p.parse_args()
    ckpt = read_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt)
    size = ckpt["train_args"]["img_size"]
    ds = DetectionDataset(resolve_data_root(args.data), args.split,
                          build_transforms(size, False), ckpt["class_names"])
    loader = torch.utils.data.DataLoader(ds, 8, collate_fn=collate)
    print(f"{args.checkpoint}, {args.split} ({len(ds)} images), {size} px")
    print(f"{'NMS IoU, max det':<18}{'COCO mAP / mAP50 / mAP75':>28}{'ultralytics mAP / mAP50 / mAP75':>36}"
          f"{'ultralytics AP per class':>28}")
    for iou, max_det in ((0.6, 100), (0.7, 300)):
        res, dets = evaluate(model, loader, iou_thresh=iou, max_det=max_det)
        m, m50, m75, ap = ultralytics_map(dets)
        coco = f"{float(res['map']):.4f} / {float(res['map_50']):.4f} / {float(res['map_75']):.4f}"
        ours = f"{m:.4f} / {m50:.4f} / {m75:.4f}"
        per_class = " / ".join(f"{a:.4f}" for a in ap.mean(1))
        print(f"{f'{iou}, {max_det}':<18}{coco:>28}{ours:>36}{per_class:>28}")


if __name__ == "__main__":
    main()
