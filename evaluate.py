"""Evaluation: post-processing (score filter + NMS) and COCO mAP.

Course section: "Evaluation". NMS as in every one-stage detector since SSD; COCO
mAP@[.5:.95] (Lin et al., "Microsoft COCO", ECCV 2014) computed by torchmetrics'
``MeanAveragePrecision`` on xyxy boxes.

    python evaluate.py --checkpoint runs/NAME/best.pt [--data DIR] [--split test] [--save-json dets.json]

Differences from the course notebook:

- Class-aware NMS with ``torchvision.ops.batched_nms`` on tensors (one call per
  image), not a Python loop over boxes.
- Every (anchor, class) pair above a low score threshold is a candidate (one anchor
  may predict two classes), capped to the top ``pre_nms`` scores before NMS.
- Alternatives to NMS (``--nms``): Gaussian Soft-NMS written out in torch, and
  Weighted Boxes Fusion from the ``ensemble-boxes`` package; ``--tta`` adds
  horizontal-flip test-time augmentation before either.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torchvision
from torchmetrics.detection import MeanAveragePrecision
from tqdm import tqdm

from losses import box_iou


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_thresh: float = 0.6,
             sigma: float = 0.5, method: str = "gaussian", score_thresh: float = 0.001, max_det: int = 100):
    """Class-aware Soft-NMS (Bodla et al., "Soft-NMS", ICCV 2017, Algorithm 1).

    Repeatedly keep the highest-scoring box M and, instead of deleting every box b that overlaps it
    (NMS), lower its score:  s_b <- s_b * exp(-IoU(M, b)^2 / sigma)   (``method="gaussian"``).
    ``method="hard"`` uses the step s_b <- s_b * [IoU(M, b) <= iou_thresh], which is exactly NMS.
    A crowd of overlapping people keeps its members, with lower scores, instead of losing them.

    boxes (N, 4) xyxy, scores (N,), labels (N,) -> (kept indices (K,), their decayed scores (K,)).
    """
    # Shift each class to its own far-away region so boxes of different classes never overlap
    # (the same trick torchvision's batched_nms uses): one loop serves all classes.
    shifted = boxes + (labels.to(boxes) * (boxes.max() + 1))[:, None]
    scores = scores.clone()
    remaining = torch.arange(len(scores), device=scores.device)
    keep = []
    while len(remaining) and len(keep) < max_det:
        best = remaining[scores[remaining].argmax()]
        if scores[best] <= score_thresh:  # suppressed (or decayed below the floor): done
            break
        keep.append(best)
        remaining = remaining[remaining != best]
        iou = box_iou(shifted[best][None], shifted[remaining])[0]                     # (R,)
        if method == "gaussian":
            scores[remaining] *= torch.exp(-iou ** 2 / sigma)
        elif method == "hard":
            scores[remaining] *= (iou <= iou_thresh).to(scores)
        else:
            raise ValueError(f"soft_nms method must be 'gaussian' or 'hard', got {method!r}")
    keep = torch.stack(keep) if keep else remaining[:0]
    return keep, scores[keep]


def weighted_boxes_fusion(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, image_size,
                          iou_thresh: float = 0.55, max_det: int = 100):
    """Weighted Boxes Fusion (Solovyev et al., 2021) from the ``ensemble-boxes`` package.

    Boxes of one class that overlap (IoU > iou_thresh) are fused into ONE box whose corners are the
    score-weighted mean of theirs, with the mean score, instead of keeping the best and dropping
    the rest. -> (boxes (K,4), scores (K,), labels (K,)).
    """
    from ensemble_boxes import weighted_boxes_fusion as wbf

    h, w = image_size
    scale = boxes.new_tensor([w, h, w, h])
    if len(boxes) == 0:
        return boxes, scores, labels
    fused, fused_scores, fused_labels = wbf([(boxes / scale).clamp(0, 1).tolist()], [scores.tolist()],
                                            [labels.tolist()], iou_thr=iou_thresh, skip_box_thr=0.0)
    order = torch.as_tensor(fused_scores).argsort(descending=True)[:max_det]
    return (torch.as_tensor(fused, dtype=boxes.dtype)[order] * scale, torch.as_tensor(fused_scores, dtype=scores.dtype)[order],
            torch.as_tensor(fused_labels).long()[order])


NMS_METHODS = ("nms", "soft-nms", "wbf")


def postprocess(cls_logits: torch.Tensor, pred_boxes: torch.Tensor, method: str = "nms", score_thresh: float = 0.01,
                iou_thresh: float = 0.6, max_det: int = 100, pre_nms: int = 1000, image_size=None,
                wbf_iou_thresh: float = 0.55) -> list[dict]:
    """(B, A, C) logits + (B, A, 4) xyxy -> per image {"boxes" (N,4), "scores" (N,), "labels" (N,)}.

    ``method``: "nms" (class-aware, torchvision), "soft-nms" (Gaussian) or "wbf" (needs ``image_size``).
    """
    if method not in NMS_METHODS:
        raise ValueError(f"method must be one of {NMS_METHODS}, got {method!r}")
    scores_all = cls_logits.float().sigmoid()                                # (B, A, C)
    out = []
    for scores, boxes in zip(scores_all, pred_boxes.float()):
        flat = scores.flatten()                                              # (A*C,) one entry per (anchor, class)
        keep = flat > score_thresh
        cand_scores, idx = flat[keep], keep.nonzero().squeeze(1)
        if len(cand_scores) > pre_nms:
            cand_scores, top = cand_scores.topk(pre_nms)
            idx = idx[top]
        anchor, label = idx // scores.shape[1], idx % scores.shape[1]
        cand_boxes = boxes[anchor]
        if method == "nms":
            kept = torchvision.ops.batched_nms(cand_boxes, cand_scores, label, iou_thresh)[:max_det]  # class-aware
            det = cand_boxes[kept], cand_scores[kept], label[kept]
        elif method == "soft-nms":
            kept, decayed = soft_nms(cand_boxes, cand_scores, label, score_thresh=score_thresh, max_det=max_det)
            det = cand_boxes[kept], decayed, label[kept]
        else:
            det = weighted_boxes_fusion(cand_boxes, cand_scores, label, image_size, wbf_iou_thresh, max_det)
        out.append(dict(zip(("boxes", "scores", "labels"), det)))
    return out


def predict(model, images: torch.Tensor, tta: bool = False):
    """Model outputs for a batch; with ``tta`` the horizontally flipped batch is run too and its boxes,
    flipped back, are appended as extra candidates: (B, A or 2A, C) logits, (B, A or 2A, 4) boxes."""
    cls_logits, boxes, _ = model(images)
    if tta:
        w = images.shape[-1]
        cls_f, boxes_f, _ = model(images.flip(-1))
        boxes_f = torch.stack([w - boxes_f[..., 2], boxes_f[..., 1], w - boxes_f[..., 0], boxes_f[..., 3]], -1)
        cls_logits, boxes = torch.cat([cls_logits, cls_f], 1), torch.cat([boxes, boxes_f], 1)
    return cls_logits, boxes


@torch.no_grad()
def evaluate(model, loader, device="cpu", desc: str = "eval", amp: bool = False, tta: bool = False,
             **post_kwargs) -> tuple[dict, list]:
    """Run the model over ``loader``; returns (torchmetrics mAP dict, detections per image with image_id).

    ``amp``: forward pass under bfloat16 autocast (post-processing always runs in fp32).
    ``tta``: add horizontally flipped predictions; ``post_kwargs`` go to ``postprocess``."""
    device = torch.device(device)
    model.eval()
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True)
    detections = []
    for images, targets in tqdm(loader, desc=desc, leave=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            cls_logits, pred_boxes = predict(model, images.to(device, memory_format=torch.channels_last), tta)
        dets = postprocess(cls_logits, pred_boxes, image_size=images.shape[-2:], **post_kwargs)
        preds = [{k: v.cpu() for k, v in p.items()} for p in dets]
        metric.update(preds, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        detections += [dict(p, image_id=t["image_id"]) for p, t in zip(preds, targets)]
    return metric.compute(), detections


def per_class_ap(res: dict, class_names: list[str]) -> dict[str, float]:
    """{class name: AP@[.5:.95]} from torchmetrics' ``map_per_class`` (-1 where a class has no GT)."""
    classes = res["classes"].reshape(-1).tolist()
    values = res["map_per_class"].reshape(-1).tolist()
    return {class_names[c]: v for c, v in zip(classes, values)}


def format_results(res: dict, class_names: list[str]) -> str:
    lines = [f"mAP@[.5:.95] {res['map']:.4f}   mAP50 {res['map_50']:.4f}   mAP75 {res['map_75']:.4f}",
             f"{'class':<16}{'AP@[.5:.95]':>12}"]
    lines += [f"{name:<16}{ap:>12.4f}" for name, ap in per_class_ap(res, class_names).items()]
    return "\n".join(lines)


def to_coco_json(detections: list[dict]) -> list[dict]:
    """COCO result format: one dict per box, bbox [x, y, w, h], category_id = 0-based model class."""
    rows = []
    for d in detections:
        for box, score, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            x1, y1, x2, y2 = box
            rows.append({"image_id": int(d["image_id"]), "category_id": int(label),
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return rows


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not one of ours."""


def load_checkpoint(path: str, device="cpu"):
    """-> (model in eval mode, checkpoint dict). Raises CheckpointError with a readable message."""
    from detector import build_detector

    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint written by train.py (no model_config/model)")
    model = build_detector(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model.to(device, memory_format=torch.channels_last).eval(), ckpt


def main(argv=None):
    from data import DataError, DetectionDataset, build_transforms, collate, resolve_data_root

    p = argparse.ArgumentParser(description="Evaluate a checkpoint: COCO mAP on a split.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None, help="dataset root (default: the one auto-resolved, see README)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--img-size", type=int, default=None, help="default: the size the model was trained at")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--score-thresh", type=float, default=0.01)
    p.add_argument("--iou-thresh", type=float, default=0.6, help="NMS / hard Soft-NMS IoU threshold")
    p.add_argument("--nms", choices=NMS_METHODS, default="nms", help="how overlapping boxes are merged")
    p.add_argument("--tta", action="store_true", help="add horizontal-flip test-time augmentation")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast (default: as the checkpoint was trained)")
    p.add_argument("--save-json", default=None, help="write COCO-style detections to this file")
    args = p.parse_args(argv)
    try:
        model, ckpt = load_checkpoint(args.checkpoint)
        root = resolve_data_root(args.data)
        names = ckpt["class_names"]
        size = args.img_size or ckpt["train_args"]["img_size"]
        tf = build_transforms(size, train=False, mean=model.backbone.mean, std=model.backbone.std)
        ds = DetectionDataset(root, args.split, tf, class_names=names)
    except (CheckpointError, DataError) as e:
        sys.exit(f"error: {e}")
    loader = torch.utils.data.DataLoader(ds, args.batch_size, collate_fn=collate)
    amp = ckpt["train_args"].get("amp", False) if args.amp is None else args.amp
    res, dets = evaluate(model, loader, amp=amp, tta=args.tta, method=args.nms, score_thresh=args.score_thresh,
                         iou_thresh=args.iou_thresh)
    print(f"{args.split} split, {len(ds)} images, {size} px, {args.nms}{' + flip TTA' if args.tta else ''}")
    print(format_results(res, names))
    if args.save_json:
        Path(args.save_json).write_text(json.dumps(to_coco_json(dets)))
        print(f"wrote {args.save_json}")


if __name__ == "__main__":
    main()
