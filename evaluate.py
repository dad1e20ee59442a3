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
    if len(boxes) == 0:  # no candidate passed the score threshold
        return labels.new_zeros(0), scores
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


def box_voting(kept_boxes: torch.Tensor, kept_labels: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
               labels: torch.Tensor, iou_thresh: float = 0.55) -> torch.Tensor:
    """Box voting (Gidaris & Komodakis, "Object detection via a multi-region & semantic segmentation-aware
    CNN model", ICCV 2015): each box that NMS kept moves to the score-weighted mean of the candidates of
    its class that overlap it by IoU >= ``iou_thresh`` (itself included). Scores, and so the ranking,
    stay NMS's: only the corners change.

    kept (K, 4) xyxy + (K,) labels; candidates (N, 4) xyxy, (N,) scores, (N,) labels -> (K, 4) xyxy."""
    iou = box_iou(kept_boxes, boxes)                                                        # (K, N)
    weight = scores * ((iou >= iou_thresh) & (kept_labels[:, None] == labels))              # (K, N)
    return weight @ boxes / weight.sum(1, keepdim=True)                                     # sum_n w_kn b_n / sum_n w_kn


def fuse_passes(dets: list[dict], image_size, iou_thresh: float = 0.55, max_det: int = 100) -> dict:
    """Weighted Boxes Fusion (Solovyev et al., "Weighted boxes fusion", 2021) across the outputs of several
    passes over one image (here: flip TTA), each already NMS'd, with the ``ensemble-boxes`` package.

    Boxes of one class from different passes that overlap (IoU > iou_thresh) become ONE box: corners the
    score-weighted mean of theirs, score the mean score times (passes that found it) / (passes), so a box
    only one of two passes found keeps half its score. WBF is for fusing *outputs*: fed a raw candidate
    cloud, a well-found object averages in all its weak neighbours and drops below isolated weak boxes.

    dets: one {"boxes" (N,4) xyxy, "scores", "labels"} per pass; image_size (H, W) of the network input."""
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


def predict_passes(model, images: torch.Tensor, tta: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(cls_logits (B,A,C), boxes (B,A,4) xyxy)] for the batch and, with ``tta``, for the horizontally
    flipped batch too, its boxes flipped back into the unflipped image (x -> W - x)."""
    cls_logits, boxes, *_ = model(images)
    passes = [(cls_logits, boxes)]
    if tta:
        w = images.shape[-1]
        cls_f, boxes_f, *_ = model(images.flip(-1))
        boxes_f = torch.stack([w - boxes_f[..., 2], boxes_f[..., 1], w - boxes_f[..., 0], boxes_f[..., 3]], -1)
        passes.append((cls_f, boxes_f))
    return passes


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
    from data import boxes_to_image

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


def per_class_ap(res: dict, class_names: list[str]) -> dict[str, float]:
    """{class name: AP@[.5:.95]} from torchmetrics' ``map_per_class`` (-1 where a class has no GT)."""
    classes = res["classes"].reshape(-1).tolist()
    values = res["map_per_class"].reshape(-1).tolist()
    return {class_names[c]: v for c, v in zip(classes, values)}


def precision_curve(res: dict, k: int, iou_index: int) -> torch.Tensor:
    """(101,) interpolated precision of the ``k``-th class of ``res["classes"]`` at COCO's 101 recall points,
    at one IoU threshold (an index into COCO's 0.50:0.05:0.95, so 0 -> IoU 0.5, 5 -> IoU 0.75), all box
    areas, 100 detections per image, from torchmetrics' extended summary. -1 marks recall levels the
    detector never reaches."""
    return res["precision"][iou_index, :, k, 0, -1]


def ap_at_iou(res: dict, k: int, iou_index: int) -> float:
    """COCO's AP of the ``k``-th class at one IoU threshold: the mean of ``precision_curve``, recall
    levels never reached counting as precision 0."""
    return precision_curve(res, k, iou_index).clamp(min=0).mean().item()


def per_class_ap_at_iou(res: dict, class_names: list[str], iou_index: int) -> dict[str, float]:
    """{class name: AP at one IoU threshold} (``ap_at_iou``): per-class AP50 and AP75 tell a class that is
    found but badly localised (AP50 high, AP75 low) from one that is not found at all."""
    return {class_names[c]: ap_at_iou(res, k, iou_index) for k, c in enumerate(res["classes"].reshape(-1).tolist())}


def metrics_summary(res: dict, class_names: list[str]) -> dict:
    """The numbers a run reports, as plain floats: mAP, mAP50, mAP75, AP of small / medium / large objects
    (COCO's areas in the image's own pixels: < 32², 32²..96², > 96²; -1 where a split has none) and, per
    class, AP@[.5:.95], AP50 and AP75 (the last two need ``evaluate``'s extended summary)."""
    return {"map": float(res["map"]), "map_50": float(res["map_50"]), "map_75": float(res["map_75"]),
            "map_small": float(res["map_small"]), "map_medium": float(res["map_medium"]),
            "map_large": float(res["map_large"]),
            "ap_per_class": per_class_ap(res, class_names),
            "ap50_per_class": per_class_ap_at_iou(res, class_names, 0),
            "ap75_per_class": per_class_ap_at_iou(res, class_names, 5)}


def format_results(s: dict) -> str:
    """``metrics_summary``'s numbers as a small text table."""
    lines = [f"mAP@[.5:.95] {s['map']:.4f}   mAP50 {s['map_50']:.4f}   mAP75 {s['map_75']:.4f}",
             f"AP small {s['map_small']:.4f}   medium {s['map_medium']:.4f}   large {s['map_large']:.4f}",
             f"{'class':<16}{'AP@[.5:.95]':>12}{'AP50':>8}{'AP75':>8}"]
    lines += [f"{name:<16}{ap:>12.4f}{s['ap50_per_class'][name]:>8.4f}{s['ap75_per_class'][name]:>8.4f}"
              for name, ap in s["ap_per_class"].items()]
    return "\n".join(lines)


def best_match_ious(detections: list[dict], num_classes: int, min_score: float = 0.3) -> list[torch.Tensor]:
    """How tight the boxes are, ranking aside: for every GT box, the IoU of the best detection of its class
    scoring >= ``min_score`` in the same image (0 when there is none). ``detections`` as ``evaluate``
    returns them. -> one (N_c,) tensor per class. mAP75 low while mAP50 is high means these IoUs pile
    up between 0.5 and 0.75."""
    per_class = [[] for _ in range(num_classes)]
    for d in detections:
        confident = d["scores"] >= min_score
        for c in range(num_classes):
            gt = d["gt_boxes"][d["gt_labels"] == c]                        # (N, 4)
            pred = d["boxes"][confident & (d["labels"] == c)]              # (M, 4)
            if len(gt):
                per_class[c].append(box_iou(gt, pred).amax(1) if len(pred) else gt.new_zeros(len(gt)))
    return [torch.cat(v) if v else torch.zeros(0) for v in per_class]


def format_ious(ious: list[torch.Tensor], class_names: list[str]) -> str:
    """``best_match_ious`` as a small text table: median IoU and the share of GT boxes matched at 0.5 / 0.75."""
    lines = [f"{'class':<16}{'GT':>5}{'median IoU':>12}{'>= 0.5':>8}{'>= 0.75':>9}"]
    # A class without GT boxes prints nan: the mean of nothing is nan, the median of nothing an error.
    lines += [f"{name:<16}{len(v):>5}{v.median().item() if len(v) else float('nan'):>12.3f}"
              f"{(v >= 0.5).float().mean().item():>8.0%}{(v >= 0.75).float().mean().item():>9.0%}"
              for name, v in zip(class_names, ious)]
    return "\n".join(lines)


def plot_iou_histogram(ious: list[torch.Tensor], class_names: list[str], min_score: float = 0.3):
    """Histogram per class of ``best_match_ious``, with COCO's 0.5 and 0.75 thresholds marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, v in zip(class_names, ious):
        ax.hist(v.numpy(), bins=20, range=(0, 1), histtype="step", lw=2, label=f"{name} ({len(v)} GT)")
    for t in (0.5, 0.75):
        ax.axvline(t, color="grey", ls="--", lw=1)
    ax.set(xlabel=f"IoU of the best detection (score >= {min_score})", ylabel="GT boxes",
           title="how tight are the boxes?")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def to_coco_json(detections: list[dict]) -> list[dict]:
    """COCO result format, readable by pycocotools against the dataset's own annotations: one dict per box
    with the dataset's ``image_id``, its own ``category_id`` (model class + ``FIRST_CATEGORY_ID``) and
    ``bbox`` [x, y, w, h] in the image's own pixels (``evaluate`` already mapped the boxes there)."""
    from data import FIRST_CATEGORY_ID

    rows = []
    for d in detections:
        for box, score, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            x1, y1, x2, y2 = box
            rows.append({"image_id": int(d["image_id"]), "category_id": int(label) + FIRST_CATEGORY_ID,
                         "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)], "score": round(float(score), 5)})
    return rows


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not one of ours."""


def read_checkpoint(path: str) -> dict:
    """torch.load with readable errors for a missing, corrupt or foreign file."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint written by train.py (no model_config/model)")
    return ckpt


def load_checkpoint(path: str, device="cpu", fuse: bool = True):
    """-> (fp32 model in eval mode, checkpoint dict). Raises CheckpointError with a readable message.
    ``fuse``: see ``model_from_checkpoint``."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, device, fuse), ckpt


def model_from_checkpoint(ckpt: dict, device="cpu", fuse: bool = True, bf16: bool = False):
    """The model of a checkpoint read by ``read_checkpoint``, in eval mode, channels_last.
    ``fuse``: fold BatchNorm into the convs (inference only: same outputs, faster; see ``fuse_conv_bn``);
    ``bf16``: with ``fuse``, weights stored in bfloat16 for bf16-autocast inference (``fuse_conv_bn``)."""
    from detector import build_detector, fuse_conv_bn

    model = build_detector(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    if fuse:
        model = fuse_conv_bn(model, bf16)
    return model.to(device, memory_format=torch.channels_last).eval()


def inference_amp(device) -> bool:
    """Whether inference (validation, test, deployment) runs under bf16 autocast: on CUDA only.

    On this CPU, which has native bf16, the model's inference is still *faster in fp32*
    (``python benchmark.py`` vs ``--infer-amp``: 32 vs 38 ms at 416 px, batch 1, BN folded):
    its depthwise convs and small feature maps gain nothing from bf16 arithmetic, while the data still
    has to be converted. Training keeps bf16 autocast, where batch-16 forward + backward is ~7 % faster.
    fp32 is also exact: bf16 moved test mAP by a few thousandths."""
    return torch.device(device).type == "cuda"


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"--device {name} asked for, but no CUDA GPU is available (use --device cpu)")
    return torch.device(name)


def round_to_stride(size: int, stride: int = 32) -> int:
    """Image sides must be multiples of the largest stride; round up (and say so)."""
    if size % stride:
        rounded = (size + stride - 1) // stride * stride
        print(f"[size] {size} is not a multiple of the largest stride {stride}: using {rounded}")
        return rounded
    return size


# --------------------------------------------------------------------------- pictures
def plot_pr_curves(res: dict, class_names: list[str], iou_index: int = 0):
    """Precision-recall curve per class at IoU 0.5 (``iou_index`` 0 of COCO's 0.50:0.05:0.95),
    from torchmetrics' extended summary. Returns the matplotlib figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recall = torch.linspace(0, 1, res["precision"].shape[1])  # COCO's 101 recall points
    fig, ax = plt.subplots(figsize=(5, 4))
    for k, c in enumerate(res["classes"].reshape(-1).tolist()):
        prec = precision_curve(res, k, iou_index)
        valid = prec >= 0
        ax.plot(recall[valid], prec[valid], label=f"{class_names[c]} (AP50 {ap_at_iou(res, k, iou_index):.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall @ IoU 0.5")
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def plot_predictions(images: list, predictions: list[dict], class_names: list[str], targets: list[dict] | None = None,
                     min_score: float = 0.3, cols: int = 3):
    """Grid of images (H,W,3 uint8) with predictions (class colour + score) and, if given, ground truth
    (white dashed). Returns the matplotlib figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from data import draw_boxes

    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, img, pred) in enumerate(zip(axes.flat, images, predictions)):
        ax.imshow(img)
        if targets is not None:
            t = targets[i]
            draw_boxes(ax, t["boxes"], t["labels"], class_names, linestyle="--", colors=["white"], tags=False)
        keep = pred["scores"] >= min_score
        draw_boxes(ax, pred["boxes"][keep], pred["labels"][keep], class_names, scores=pred["scores"][keep])
        ax.set_title(f"{int(keep.sum())} detections >= {min_score}", fontsize=8)
    fig.tight_layout()
    return fig


def detect_image_files(model, paths: list[Path], img_size: int, **detect_kwargs):
    """Run the model on image files of any size: letterbox, ``detect``, map boxes back to the file's pixels
    (``data.boxes_to_image``, as ``evaluate`` does). -> list of (path, RGB uint8 image, detections dict);
    unreadable files are skipped with a warning."""
    import cv2

    from data import boxes_to_image, build_transforms

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
    from data import DataError, DetectionDataset, build_transforms, collate, load_class_names, resolve_data_root

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
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast (default: on CUDA only; on CPU fp32 inference is faster, see "
                        "inference_amp)")
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
