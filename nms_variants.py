"""Beside NMS: other ways to merge overlapping boxes, and flip test-time augmentation.

``evaluate.postprocess`` and ``evaluate.detect`` pick these with ``--nms`` and ``--tta``; plain
class-aware NMS, the default, stays in evaluate.py. Measured against NMS on the same checkpoints in
RESULTS.md (section 1, post-processing).

- ``soft_nms``: Gaussian Soft-NMS (Bodla et al., ICCV 2017), written out in torch.
- ``box_voting``: NMS's kept boxes moved to the score-weighted mean of what they suppressed.
- ``predict_passes`` + ``fuse_passes``: a horizontally flipped second pass, fused with Weighted Boxes
  Fusion (Solovyev et al., 2021, the ``ensemble-boxes`` package).
"""
from __future__ import annotations

import torch

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
