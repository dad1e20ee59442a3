"""Evaluation: post-processing (score filter + NMS) and COCO mAP.

Course section: "Evaluation". NMS as in every one-stage detector since SSD; COCO
mAP@[.5:.95] (Lin et al., "Microsoft COCO", ECCV 2014) computed by torchmetrics'
``MeanAveragePrecision`` on xyxy boxes.

    python evaluate.py --checkpoint runs/NAME/best.pt [--data DIR] [--split test] [--save-json dets.json]

Differences from the course notebook:

- Class-aware NMS with ``torchvision.ops.batched_nms`` on tensors (one call per
  image), not a Python loop over boxes.
- Every (anchor, class) pair above a score of 0.001 (COCO practice) is a candidate
  (one anchor may predict two classes), capped to the top ``pre_nms`` scores before NMS.
- mAP is computed in each image's own pixels against the dataset's untransformed
  boxes (``data.boxes_to_image`` undoes the letterbox), as pycocotools scores the
  ``--save-json`` output, so COCO's small / medium / large areas are the dataset's.
- Alternatives to NMS (``--nms``): Gaussian Soft-NMS written out in torch, and
  ``wbf``: NMS then box voting, or with ``--tta`` (horizontal flip) NMS on each pass
  and Weighted Boxes Fusion (``ensemble-boxes``) across the two passes.
- Besides mAP, a localisation table and histogram (``best_match_ious``): for every GT box,
  the IoU of its best confident detection, which shows where mAP75 is lost.
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

from data import FIRST_CATEGORY_ID, DataError, DetectionDataset, boxes_to_image, build_transforms, collate
from metrics import best_match_ious, format_ious, format_results, metrics_summary
from nms_variants import box_voting, fuse_passes, predict_passes, soft_nms
from runtime import CheckpointError, inference_amp, model_from_checkpoint, read_checkpoint, resolve_device, round_to_stride
from sources import load_class_names, resolve_data_root


NMS_METHODS = ("nms", "soft-nms", "wbf")


def candidates(scores: torch.Tensor, boxes: torch.Tensor, score_thresh: float, pre_nms: int):
    """One image's (A, C) probabilities and (A, 4) xyxy boxes -> every (anchor, class) pair scoring above
    ``score_thresh`` (one anchor may propose two classes), at most the ``pre_nms`` best:
    boxes (N, 4), scores (N,), labels (N,)."""
    flat = scores.flatten()                                              # (A*C,) one entry per (anchor, class)
    idx = (flat > score_thresh).nonzero().squeeze(1)
    if len(idx) > pre_nms:
        idx = idx[flat[idx].topk(pre_nms).indices]
    anchor, label = idx // scores.shape[1], idx % scores.shape[1]
    return boxes[anchor], flat[idx], label


def postprocess(cls_logits: torch.Tensor, pred_boxes: torch.Tensor, method: str = "nms", score_thresh: float = 0.001,
                iou_thresh: float = 0.6, max_det: int = 100, pre_nms: int = 1000,
                vote_iou_thresh: float = 0.55) -> list[dict]:
    """(B, A, C) logits + (B, A, 4) xyxy -> per image {"boxes" (N,4), "scores" (N,), "labels" (N,)}.

    ``method``: "nms" (class-aware, torchvision), "soft-nms" (Gaussian), or "wbf": NMS, then box voting
    (``box_voting``); across flip-TTA passes ``detect`` fuses with WBF instead. ``score_thresh`` 0.001 is
    COCO practice: the extra low-score boxes rank below all others, so they can only add recall."""
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
        if method == "wbf":
            kept_boxes = box_voting(kept_boxes, label[kept], cand_boxes, cand_scores, label, vote_iou_thresh)
        out.append({"boxes": kept_boxes, "scores": kept_scores, "labels": label[kept]})
    return out


@torch.no_grad()
def detect(model, images: torch.Tensor, method: str = "nms", tta: bool = False, amp: bool = False,
           max_det: int = 100, **post_kwargs) -> list[dict]:
    """Network input (B,3,S,S) -> per image {"boxes", "scores", "labels"} in the network frame.

    ``amp``: the forward pass under bfloat16 autocast; post-processing always runs in fp32.
    With ``tta`` and ``method="wbf"``: NMS each pass, then WBF across the passes (``fuse_passes``).
    With ``tta`` and NMS / Soft-NMS: the candidates of both passes go into one NMS."""
    device = images.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        passes = predict_passes(model, images, tta)
    if tta and method == "wbf":
        per_pass = [postprocess(c, b, "nms", max_det=max_det, **post_kwargs) for c, b in passes]
        return [fuse_passes(list(dets), images.shape[-2:], max_det=max_det) for dets in zip(*per_pass)]
    cls_logits, boxes = (torch.cat(t, 1) for t in zip(*passes))          # (B, A or 2A, C), (B, A or 2A, 4)
    return postprocess(cls_logits, boxes, method, max_det=max_det, **post_kwargs)


@torch.no_grad()
def evaluate(model, loader, device="cpu", desc: str = "eval", amp: bool = False, tta: bool = False,
             **post_kwargs) -> tuple[dict, list]:
    """Run the model over ``loader`` and score it in each image's own pixels, as pycocotools would
    against the dataset's annotations: detections are mapped back from the network frame
    (``data.boxes_to_image``) and compared with the untransformed boxes.

    Returns (torchmetrics mAP dict, detections per image: boxes (image pixels), scores, labels,
    image_id and that image's ground truth, gt_boxes and gt_labels). ``post_kwargs`` go to ``detect``."""
    device = torch.device(device)
    model.eval()
    # extended_summary keeps the precision/recall arrays for the PR plot.
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, extended_summary=True)
    detections = []
    for images, targets in tqdm(loader, desc=desc, leave=False):
        dets = detect(model, images.to(device, memory_format=torch.channels_last), tta=tta, amp=amp, **post_kwargs)
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
    ``bbox`` [x, y, w, h] in the image's own pixels (``evaluate`` already mapped the boxes there)."""
    rows = []
    for d in detections:
        for box, score, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            x1, y1, x2, y2 = box
            rows.append({"image_id": int(d["image_id"]), "category_id": int(label) + FIRST_CATEGORY_ID,
                         "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)], "score": round(float(score), 5)})
    return rows


def detect_image_files(model, paths: list[Path], img_size: int, **detect_kwargs):
    """Run the model on image files of any size: letterbox, ``detect``, map boxes back to the file's pixels
    (``data.boxes_to_image``, as ``evaluate`` does). -> list of (path, RGB uint8 image, detections dict);
    unreadable files are skipped with a warning."""
    import cv2

    tf = build_transforms(img_size, train=False, mean=model.backbone.mean, std=model.backbone.std)
    out = []
    device = next(model.parameters()).device
    for path in tqdm(paths, desc="images", leave=False):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            print(f"warning: {path} is not a readable image, skipped", file=sys.stderr)
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        x = tf(image=rgb, bboxes=torch.zeros(0, 4).numpy(), labels=[])["image"][None]      # (1, 3, S, S)
        det = {k: v.cpu() for k, v in detect(model, x.to(device, memory_format=torch.channels_last),
                                             **detect_kwargs)[0].items()}
        det["boxes"] = boxes_to_image(det["boxes"], rgb.shape[:2], x.shape[-1])
        out.append((path, rgb, det))
    return out


def list_images(inputs: list[str]) -> list[Path]:
    """Files and folders (searched for .jpg/.jpeg/.png/.bmp/.webp) -> sorted image paths."""
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in exts)
        elif item.is_file():
            paths.append(item)
        else:
            raise CheckpointError(f"--images {item}: no such file or folder")
    if not paths:
        raise CheckpointError(f"--images {' '.join(inputs)}: no image files found")
    return paths


def main(argv=None):
    from visualize import plot_iou_histogram, plot_pr_curves, plot_predictions  # visualize imports this module

    p = argparse.ArgumentParser(description="Evaluate a checkpoint: COCO mAP on a split, pictures of predictions.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None, help="dataset root (default: the one auto-resolved, see README)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--img-size", type=int, default=None, help="default: the size the model was trained at")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--score-thresh", type=float, default=0.001, help="lowest score kept (COCO practice)")
    p.add_argument("--iou-thresh", type=float, default=0.6, help="NMS / hard Soft-NMS IoU threshold")
    p.add_argument("--nms", choices=NMS_METHODS, default="nms",
                   help="how overlapping boxes are merged: class-aware NMS, Gaussian Soft-NMS, or wbf: NMS then "
                        "box voting (with --tta: NMS each pass, then weighted boxes fusion across the passes)")
    p.add_argument("--tta", action="store_true", help="add horizontal-flip test-time augmentation")
    p.add_argument("--raw", action="store_true",
                   help="evaluate the checkpoint's raw training weights instead of their EMA (what the EMA adds)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast (default: on CUDA only; on CPU fp32 inference is faster, see "
                        "runtime.inference_amp)")
    p.add_argument("--save-json", default=None, help="write COCO results: the dataset's image_id and category_id, "
                                                     "bbox [x, y, w, h] in the image's own pixels")
    p.add_argument("--save-metrics", default=None, help="write mAP, mAP50, mAP75 and AP per class as JSON")
    p.add_argument("--pr", default=None, help="precision-recall plot (default: pr.png next to the checkpoint)")
    p.add_argument("--save-images", default=None, metavar="DIR", help="draw predictions + ground truth into DIR")
    p.add_argument("--num", type=int, default=12, help="how many images --save-images draws")
    p.add_argument("--images", nargs="+", default=None, metavar="PATH",
                   help="run on these image files / folders instead of the dataset (drawings go to --save-images)")
    p.add_argument("--show-thresh", type=float, default=0.3,
                   help="lowest score drawn, and counted in the localisation table")
    args = p.parse_args(argv)
    post = dict(method=args.nms, tta=args.tta, score_thresh=args.score_thresh, iou_thresh=args.iou_thresh)
    try:
        device = resolve_device(args.device)
        ckpt = read_checkpoint(args.checkpoint)
        if args.raw:
            if ckpt.get("train_model") is None:
                raise CheckpointError(f"{args.checkpoint} holds no raw training weights (an exported file?)")
            ckpt = {**ckpt, "model": ckpt["train_model"]}
        amp = inference_amp(device) if args.amp is None else args.amp
        model = model_from_checkpoint(ckpt, device, bf16=amp)
        names = ckpt["class_names"]
        size = round_to_stride(args.img_size or ckpt["train_args"]["img_size"])
        if args.images:
            out_dir = Path(args.save_images or "predictions")
            out_dir.mkdir(parents=True, exist_ok=True)
            for path, img, det in detect_image_files(model, list_images(args.images), size, amp=amp, **post):
                fig = plot_predictions([img], [det], names, min_score=args.show_thresh, cols=1)
                fig.savefig(out_dir / f"{path.stem}_pred.png", dpi=100)
                print(f"{path}: {int((det['scores'] >= args.show_thresh).sum())} detections -> "
                      f"{out_dir / (path.stem + '_pred.png')}")
            return
        root = resolve_data_root(args.data)
        data_names = load_class_names(root)
        if len(data_names) != len(names):
            raise CheckpointError(f"the checkpoint was trained for {len(names)} classes {names}, the dataset at {root} "
                                  f"has {len(data_names)} {data_names}")
        tf = build_transforms(size, train=False, mean=model.backbone.mean, std=model.backbone.std)
        ds = DetectionDataset(root, args.split, tf, class_names=names)
    except (CheckpointError, DataError) as e:
        sys.exit(f"error: {e}")
    loader = torch.utils.data.DataLoader(ds, args.batch_size, collate_fn=collate)
    res, dets = evaluate(model, loader, device, amp=amp, **post)
    print(f"{args.split} split, {len(ds)} images, {size} px, {args.nms}{' + flip TTA' if args.tta else ''}")
    summary = metrics_summary(res, names)
    print(format_results(summary))
    ious = best_match_ious(dets, len(names), args.show_thresh)
    print(f"localisation: IoU of each GT box with its best detection (score >= {args.show_thresh})")
    print(format_ious(ious, names))
    pr_path = Path(args.pr) if args.pr else Path(args.checkpoint).parent / "pr.png"
    plot_pr_curves(res, names).savefig(pr_path, dpi=100)
    iou_path = pr_path.with_name(f"iou_{args.split}.png")
    plot_iou_histogram(ious, names, args.show_thresh).savefig(iou_path, dpi=100)
    print(f"wrote {pr_path}, {iou_path}")
    if args.save_json:
        Path(args.save_json).write_text(json.dumps(to_coco_json(dets)))
        print(f"wrote {args.save_json}")
    if args.save_metrics:
        Path(args.save_metrics).write_text(json.dumps(summary, indent=1))
    if args.save_images:
        out_dir = Path(args.save_images)
        out_dir.mkdir(parents=True, exist_ok=True)
        for start in range(0, min(args.num, len(ds)), 6):  # 6 images per picture, in their own pixels
            idx = range(start, min(start + 6, args.num, len(ds)))
            fig = plot_predictions([ds.load(i)["image"] for i in idx], [dets[i] for i in idx], names,
                                   [{"boxes": dets[i]["gt_boxes"], "labels": dets[i]["gt_labels"]} for i in idx],
                                   min_score=args.show_thresh)
            fig.savefig(out_dir / f"{args.split}_{start:04d}.png", dpi=80)
        print(f"wrote drawings of {min(args.num, len(ds))} {args.split} images to {out_dir}")


if __name__ == "__main__":
    main()
