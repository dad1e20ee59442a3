"""Evaluation: post-processing (score filter + NMS and its variants) and COCO mAP.

Course section: "Evaluation". NMS as in every one-stage detector since SSD; COCO mAP@[.5:.95]
(Lin et al., "Microsoft COCO", ECCV 2014) computed by torchmetrics' ``MeanAveragePrecision``.

    python evaluate.py --checkpoint runs/NAME/best.pt [--split test] [--nms soft-nms] [--save-json dets.json]

Differences from the course notebook:

- Class-aware NMS with ``torchvision.ops.batched_nms`` on tensors (one call per image), not a Python loop.
- Every (anchor, class) pair above a score of 0.001 (COCO practice) is a candidate (one anchor may
  predict two classes), capped to the top ``pre_nms`` scores before NMS.
- mAP is computed in each image's own pixels against the dataset's untransformed boxes
  (``data.boxes_to_image``), as pycocotools scores the ``--save-json`` output.
- Alternatives to NMS (``--nms``), measured against it in RESULTS.md: Gaussian Soft-NMS written out in
  torch (``soft_nms``); ``vote``: NMS, then box voting (``box_voting``); and with flip test-time
  augmentation (``--tta``), ``wbf``: NMS on each pass, then Weighted Boxes Fusion across the two passes.
The command line's reports (tables, plots, COCO JSON, drawings) are written by tools/outputs.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchmetrics.detection import MeanAveragePrecision
from tqdm import tqdm

from data import FIRST_CATEGORY_ID, DataError, DetectionDataset, boxes_to_image, build_transforms, collate
from detector import model_from_checkpoint
from losses import box_iou
from tools.checkpoint import CheckpointError, read_checkpoint
from tools.checks import round_to_stride
from tools.device import DeviceError, autocast, choose_precision, describe, resolve_device
from tools.outputs import read_images, report, save_prediction
from tools.sources import load_class_names, resolve_data_root

NMS_METHODS = ("nms", "soft-nms", "vote")  # within one pass; "wbf" fuses the passes of flip TTA (detect)


def candidates(scores: torch.Tensor, boxes: torch.Tensor, score_thresh: float, pre_nms: int):
    """One image's (A, C) probabilities and (A, 4) xyxy boxes -> every (anchor, class) pair scoring above
    ``score_thresh``, at most the ``pre_nms`` best: boxes (N, 4), scores (N,), labels (N,)."""
    flat = scores.flatten()                                              # (A*C,) one entry per (anchor, class)
    idx = (flat > score_thresh).nonzero().squeeze(1)
    if len(idx) > pre_nms:
        idx = idx[flat[idx].topk(pre_nms).indices]
    anchor, label = idx // scores.shape[1], idx % scores.shape[1]
    return boxes[anchor], flat[idx], label


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_thresh: float = 0.6,
             sigma: float = 0.5, method: str = "gaussian", score_thresh: float = 0.001, max_det: int = 100):
    """Class-aware Soft-NMS (Bodla et al., "Soft-NMS", ICCV 2017, Algorithm 1).

    Repeatedly keep the highest-scoring box M and, instead of deleting every box b that overlaps it
    (NMS), lower its score:  s_b <- s_b * exp(-IoU(M, b)^2 / sigma)   (``method="gaussian"``).
    ``method="hard"`` uses the step s_b <- s_b * [IoU(M, b) <= iou_thresh], which is exactly NMS.

    boxes (N, 4) xyxy, scores (N,), labels (N,) -> (kept indices (K,), their decayed scores (K,)).
    """
    if method not in ("gaussian", "hard"):
        raise ValueError(f"soft_nms method must be 'gaussian' or 'hard', got {method!r}")
    if len(boxes) == 0:  # no candidate passed the score threshold
        return labels.new_zeros(0), scores
    # Each class shifted to its own far-away region (as torchvision's batched_nms): one loop serves all.
    shifted = boxes + (labels.to(boxes) * (boxes.max() + 1))[:, None]
    scores, remaining, keep = scores.clone(), torch.arange(len(scores), device=scores.device), []  # (N,), (R,)
    while len(remaining) and len(keep) < max_det:
        best = remaining[scores[remaining].argmax()]
        if scores[best] <= score_thresh:  # suppressed (or decayed below the floor): done
            break
        keep.append(best)
        remaining = remaining[remaining != best]
        iou = box_iou(shifted[best][None], shifted[remaining])[0]                     # (R,)
        scores[remaining] *= torch.exp(-iou ** 2 / sigma) if method == "gaussian" else (iou <= iou_thresh).to(scores)
    keep = torch.stack(keep) if keep else remaining[:0]
    return keep, scores[keep]


def box_voting(kept_boxes: torch.Tensor, kept_labels: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
               labels: torch.Tensor, iou_thresh: float = 0.55) -> torch.Tensor:
    """Box voting (Gidaris & Komodakis, ICCV 2015): each box NMS kept moves to the score-weighted mean of the
    candidates of its class that overlap it by IoU >= ``iou_thresh`` (itself included); scores stay NMS's.
    kept (K, 4) xyxy + (K,) labels; candidates (N, 4) xyxy, (N,) scores, (N,) labels -> (K, 4) xyxy."""
    iou = box_iou(kept_boxes, boxes)                                                        # (K, N)
    weight = scores * ((iou >= iou_thresh) & (kept_labels[:, None] == labels))              # (K, N)
    return weight @ boxes / weight.sum(1, keepdim=True)                         # sum_n w_kn b_n / sum_n w_kn


def fuse_passes(dets: list[dict], image_size, iou_thresh: float = 0.55, max_det: int = 100) -> dict:
    """Weighted Boxes Fusion (Solovyev et al., 2021; ``ensemble-boxes``) across the NMS'd outputs of several
    passes over one image (flip TTA): overlapping same-class boxes of different passes become ONE box, corners
    the score-weighted mean, score the mean score x (passes that found it) / (passes). WBF fuses *outputs*: fed
    raw candidates, a well-found object would average in all its weak neighbours. dets: one {"boxes" (N,4)
    xyxy, "scores", "labels"} per pass; image_size (H, W)."""
    from ensemble_boxes import weighted_boxes_fusion

    h, w = image_size
    scale = dets[0]["boxes"].new_tensor([w, h, w, h])  # ensemble-boxes wants corners in [0, 1]
    boxes, scores, labels = weighted_boxes_fusion(
        [(d["boxes"] / scale).clamp(0, 1).tolist() for d in dets], [d["scores"].tolist() for d in dets],
        [d["labels"].tolist() for d in dets], iou_thr=iou_thresh, skip_box_thr=0.0)
    order = torch.as_tensor(scores).argsort(descending=True)[:max_det]
    return {"boxes": torch.as_tensor(boxes, dtype=scale.dtype).reshape(-1, 4)[order] * scale,
            "scores": torch.as_tensor(scores, dtype=torch.float32)[order],
            "labels": torch.as_tensor(labels).long()[order]}


def postprocess(cls_logits: torch.Tensor, pred_boxes: torch.Tensor, method: str = "nms", score_thresh: float = 0.001,
                iou_thresh: float = 0.6, max_det: int = 100, pre_nms: int = 1000) -> list[dict]:
    """(B, A, C) logits + (B, A, 4) xyxy -> per image {"boxes" (N,4), "scores" (N,), "labels" (N,)}.

    ``method``: "nms" (class-aware, torchvision), "soft-nms" (Gaussian) or "vote" (NMS, then box voting).
    ``score_thresh`` 0.001 is COCO practice: low-score boxes rank below all others, so they only add recall."""
    if method not in NMS_METHODS:
        raise ValueError(f"method must be one of {NMS_METHODS}, got {method!r}")
    out = []
    for scores, boxes in zip(cls_logits.float().sigmoid(), pred_boxes.float()):   # (A, C), (A, 4)
        cand_boxes, cand_scores, label = candidates(scores, boxes, score_thresh, pre_nms)
        if method == "soft-nms":
            kept, kept_scores = soft_nms(cand_boxes, cand_scores, label, score_thresh=score_thresh, max_det=max_det)
        else:
            kept = torchvision.ops.batched_nms(cand_boxes, cand_scores, label, iou_thresh)[:max_det]  # class-aware
            kept_scores = cand_scores[kept]
        kept_boxes = cand_boxes[kept]
        if method == "vote":
            kept_boxes = box_voting(kept_boxes, label[kept], cand_boxes, cand_scores, label)
        out.append({"boxes": kept_boxes, "scores": kept_scores, "labels": label[kept]})
    return out


@torch.no_grad()
def detect(model, images: torch.Tensor, method: str = "nms", tta: bool = False, dtype=None, max_det: int = 100,
           **post_kwargs) -> list[dict]:
    """Network input (B,3,S,S) -> per image {"boxes", "scores", "labels"} in the network frame.

    ``dtype``: the forward pass under autocast to it (None: fp32); post-processing always runs in fp32.
    ``tta``: a horizontally flipped second pass, its boxes flipped back (x -> W - x). Its candidates join
    the first pass's in one post-processing, except with "wbf": NMS each pass, then ``fuse_passes``."""
    if method == "wbf" and not tta:
        raise ValueError("wbf fuses the two passes of flip TTA: use it with tta=True (--tta), or method='vote'")
    w = images.shape[-1]
    with autocast(images.device, dtype):
        passes = [model(images)[:2]]                                     # (cls_logits (B,A,C), boxes (B,A,4))
        if tta:
            cls_f, boxes_f, *_ = model(images.flip(-1))
            x1, y1, x2, y2 = boxes_f.unbind(-1)
            passes.append((cls_f, torch.stack([w - x2, y1, w - x1, y2], -1)))  # flipped back: x -> W - x
    if method == "wbf":
        per_pass = [postprocess(c, b, "nms", max_det=max_det, **post_kwargs) for c, b in passes]
        return [fuse_passes(list(dets), images.shape[-2:], max_det=max_det) for dets in zip(*per_pass)]
    cls_logits, boxes = (torch.cat(t, 1) for t in zip(*passes))          # (B, A or 2A, C), (B, A or 2A, 4)
    return postprocess(cls_logits, boxes, method, max_det=max_det, **post_kwargs)


@torch.no_grad()
def evaluate(model, loader, desc: str = "eval", dtype=None, **detect_kwargs) -> tuple[dict, list]:
    """Run the model over ``loader`` and score it in each image's own pixels, as pycocotools would against the
    dataset's annotations: detections are mapped back from the network frame (``data.boxes_to_image``).

    Returns (torchmetrics mAP dict, detections per image: boxes (image pixels), scores, labels, image_id and
    that image's ground truth, gt_boxes and gt_labels). ``detect_kwargs`` go to ``detect``."""
    device = next(model.parameters()).device
    model.eval()
    # extended_summary keeps the precision/recall arrays for per-class AP50 / AP75 and the PR plot.
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, extended_summary=True)
    detections = []
    for images, targets in tqdm(loader, desc=desc, leave=False):
        dets = detect(model, images.to(device, memory_format=torch.channels_last), dtype=dtype, **detect_kwargs)
        preds = [{"boxes": boxes_to_image(d["boxes"].cpu(), t["image_size"], images.shape[-1]),
                  "scores": d["scores"].cpu(), "labels": d["labels"].cpu()} for d, t in zip(dets, targets)]
        gts = [{"boxes": t["image_boxes"], "labels": t["image_labels"]} for t in targets]
        metric.update(preds, gts)
        detections += [dict(p, image_id=t["image_id"], gt_boxes=g["boxes"], gt_labels=g["labels"])
                       for p, g, t in zip(preds, gts, targets)]
    return metric.compute(), detections


def to_coco_json(detections: list[dict]) -> list[dict]:
    """COCO result format, readable by pycocotools against the dataset's own annotations: one dict per box
    with the dataset's ``image_id``, its own ``category_id`` (model class + ``FIRST_CATEGORY_ID``) and
    ``bbox`` [x, y, w, h] in the image's own pixels (``evaluate.evaluate`` already mapped the boxes there)."""
    rows = []
    for d in detections:
        for box, score, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            x1, y1, x2, y2 = box
            rows.append({"image_id": int(d["image_id"]), "category_id": int(label) + FIRST_CATEGORY_ID,
                         "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)], "score": round(float(score), 5)})
    return rows


def detect_image(model, rgb: np.ndarray, img_size: int, **detect_kwargs) -> dict:
    """One image file's pixels (H, W, 3) uint8 -> detections in those pixels: letterbox, ``detect``, and
    ``data.boxes_to_image`` back, as ``evaluate`` does for a dataset."""
    tf = build_transforms(img_size, train=False)
    x = tf(image=rgb, bboxes=np.zeros((0, 4), np.float32), labels=[])["image"][None]    # (1, 3, S, S)
    x = x.to(next(model.parameters()).device, memory_format=torch.channels_last)
    det = {k: v.cpu() for k, v in detect(model, x, **detect_kwargs)[0].items()}
    return det | {"boxes": boxes_to_image(det["boxes"], rgb.shape[:2], img_size)}


def main(argv=None):
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
        precision = choose_precision(device, args.amp, "infer")
        print(describe(device, precision))
        ckpt = read_checkpoint(args.checkpoint)
        if args.raw:
            if ckpt.get("train_model") is None:
                raise CheckpointError(f"{args.checkpoint} holds no raw training weights (an exported file?)")
            ckpt = {**ckpt, "model": ckpt["train_model"]}
        model = model_from_checkpoint(ckpt, device, dtype=precision.infer)  # BN folded: same outputs, faster
        names, size = ckpt["class_names"], round_to_stride(args.img_size or ckpt["train_args"]["img_size"])
        detect_options = dict(method=args.nms, tta=args.tta, dtype=precision.infer, score_thresh=args.score_thresh,
                    iou_thresh=args.iou_thresh)
        if args.images:
            for path, rgb in read_images(args.images):
                save_prediction(path, rgb, detect_image(model, rgb, size, **detect_options), names, args)
            return
        root = resolve_data_root(args.data)
        if len(data_names := load_class_names(root)) != len(names):
            raise CheckpointError(f"the checkpoint was trained for {len(names)} classes {names}, the dataset at "
                                  f"{root} has {len(data_names)} {data_names}")
        tf = build_transforms(size, train=False)
        ds = DetectionDataset(root, args.split, tf, class_names=names)
    except (CheckpointError, DataError, DeviceError) as e:
        sys.exit(f"error: {e}")
    res, dets = evaluate(model, torch.utils.data.DataLoader(ds, args.batch_size, collate_fn=collate), **detect_options)
    print(f"{args.split} split, {len(ds)} images, {size} px, {args.nms}{' + flip TTA' if args.tta else ''}")
    report(res, dets, ds, names, args)
    if args.save_json:
        Path(args.save_json).write_text(json.dumps(to_coco_json(dets)))
        print(f"wrote {args.save_json}")



# --------------------------------------------------------------------------- the command line
def parse_args(argv=None) -> argparse.Namespace:
    """evaluate.py's flags; their defaults are ``postprocess``'s (tests/test_recipe.py checks it)."""
    p = argparse.ArgumentParser(description="Evaluate a checkpoint: COCO mAP on a split, pictures of predictions.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None, help="dataset root (default: the one auto-resolved, see README)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--img-size", type=int, default=None, help="default: the size the model was trained at")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto: the first CUDA GPU if there is one, else the CPU")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast (default: by hardware, tools/device.py: on CUDA; on CPU fp32 is faster)")
    p.add_argument("--score-thresh", type=float, default=0.001, help="lowest score kept (COCO practice)")
    p.add_argument("--iou-thresh", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--nms", choices=[*NMS_METHODS, "wbf"], default="nms", help="class-aware NMS, Gaussian "
                   "Soft-NMS, NMS + box voting, or (with --tta) NMS on each pass + weighted boxes fusion across them")
    p.add_argument("--tta", action="store_true", help="add horizontal-flip test-time augmentation")
    p.add_argument("--raw", action="store_true", help="the checkpoint's raw training weights instead of their EMA")
    p.add_argument("--images", nargs="+", default=None, metavar="PATH",
                   help="run on these image files / folders instead of the dataset (drawings go to --save-images)")
    p.add_argument("--show-thresh", type=float, default=0.3, help="lowest score drawn and counted as localised")
    p.add_argument("--save-json", default=None, help="COCO results: the dataset's image_id and category_id, "
                                                     "bbox [x, y, w, h] in the image's own pixels")
    p.add_argument("--save-metrics", default=None, help="mAP, mAP50, mAP75, per size and per class, as JSON")
    p.add_argument("--pr", default=None, help="precision-recall plot (default: pr.png next to the checkpoint)")
    p.add_argument("--save-images", default=None, metavar="DIR", help="draw predictions + ground truth into DIR")
    p.add_argument("--num", type=int, default=12, help="how many images --save-images draws")
    args = p.parse_args(argv)
    if args.nms == "wbf" and not args.tta:
        p.error("--nms wbf fuses the two passes of --tta: add --tta, or use --nms vote")
    return args


if __name__ == "__main__":
    main()
