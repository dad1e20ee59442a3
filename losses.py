"""Losses: the IoU family written out by hand, and the detection loss.

Course section: "Losses". Papers: GIoU (Rezatofighi et al., CVPR 2019, eq. in Alg. 2),
DIoU / CIoU (Zheng et al., AAAI 2020, eqs. 6 and 9-11), the loss of TOOD
(Feng et al., ICCV 2021, sec. 3.2 "Task-aligned Loss"), and, optionally, GFL's
distribution focal loss (Li et al., NeurIPS 2020, sec. 3.3, eq. 6).

All boxes are xyxy pixels. ``box_iou`` is THE IoU of this repo: the assigner,
the loss and post-processing all call it (or its paired twin ``paired_iou``).

Differences from the papers:

- TOOD uses Focal Loss on soft targets and a GIoU loss; here the classification
  loss is BCE against the soft targets by default (as YOLOv8), or Quality Focal
  Loss (GFL) / Varifocal Loss (VarifocalNet), and the box loss is selectable
  (IoU/GIoU/DIoU/CIoU).
- Both terms are normalised by the sum of the soft targets (as YOLOv8/PP-YOLOE),
  not by the number of positives.
- The distribution focal loss (only for a head with ``box_bins``) is added to the box loss,
  not used instead of it (as YOLOv8); each positive weighs its soft target there too.
- CIoU's ``alpha`` is computed without gradient, as in the authors' code, so it
  acts as a weight and not as a second target.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from head import encode


# --------------------------------------------------------------------------- IoU
def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (...) area; degenerate boxes have area 0, never negative."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _inter_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection and union of boxes ``a`` and ``b`` (xyxy, broadcast against each other)."""
    lt = torch.maximum(a[..., :2], b[..., :2])  # top-left of the overlap
    rb = torch.minimum(a[..., 2:], b[..., 2:])  # bottom-right of the overlap
    inter = (rb - lt).clamp(min=0).prod(-1)     # |A ∩ B|, 0 when they do not overlap
    union = box_area(a) + box_area(b) - inter   # |A ∪ B| = |A| + |B| - |A ∩ B|
    return inter, union


def paired_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of box ``a[i]`` with box ``b[i]``: (..., 4), (..., 4) -> (...)."""
    inter, union = _inter_union(a, b)
    return inter / (union + eps)  # IoU = |A ∩ B| / |A ∪ B|


def box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Pairwise IoU: (..., N, 4), (..., M, 4) xyxy -> (..., N, M). Same as ``torchvision.ops.box_iou``
    for 2-D inputs, and batched over leading dimensions."""
    return paired_iou(a[..., :, None, :], b[..., None, :, :], eps)


def _enclosing_box(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left and bottom-right corners of the smallest box C enclosing both A and B."""
    return torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum()  # mean of nothing is 0, not NaN
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def iou_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean", eps: float = 1e-7):
    """L_IoU = 1 - IoU for paired (N, 4) xyxy boxes."""
    return _reduce(1 - paired_iou(pred, target, eps), reduction)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean", eps: float = 1e-7):
    """L_GIoU = 1 - IoU + |C \\ (A ∪ B)| / |C|  (C: smallest enclosing box). Has a gradient even
    when the boxes do not overlap, because the penalty shrinks as B moves towards A."""
    inter, union = _inter_union(pred, target)
    iou = inter / (union + eps)
    c_lt, c_rb = _enclosing_box(pred, target)
    area_c = (c_rb - c_lt).clamp(min=0).prod(-1)   # |C|
    giou = iou - (area_c - union) / (area_c + eps)  # GIoU = IoU - |C \ (A ∪ B)| / |C|
    return _reduce(1 - giou, reduction)


def _diou_terms(pred, target, eps):
    """IoU and the DIoU distance penalty rho^2(b, b_gt) / c^2 (centre distance over enclosing diagonal)."""
    iou = paired_iou(pred, target, eps)
    c_lt, c_rb = _enclosing_box(pred, target)
    c2 = ((c_rb - c_lt) ** 2).sum(-1) + eps  # c^2: squared diagonal of the enclosing box
    centre_p = (pred[..., :2] + pred[..., 2:]) / 2
    centre_t = (target[..., :2] + target[..., 2:]) / 2
    rho2 = ((centre_p - centre_t) ** 2).sum(-1)  # rho^2: squared distance between the centres
    return iou, rho2 / c2


def diou_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean", eps: float = 1e-7):
    """L_DIoU = 1 - IoU + rho^2(b, b_gt) / c^2. Pulls centres together directly, so it converges
    faster than GIoU, which first grows the predicted box to cover the target."""
    iou, dist = _diou_terms(pred, target, eps)
    return _reduce(1 - iou + dist, reduction)


def ciou_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean", eps: float = 1e-7):
    """L_CIoU = 1 - IoU + rho^2 / c^2 + alpha * v, with the aspect-ratio term
    v = 4/pi^2 (atan(w_gt/h_gt) - atan(w/h))^2 and its weight alpha = v / ((1 - IoU) + v)."""
    iou, dist = _diou_terms(pred, target, eps)
    w_p, h_p = pred[..., 2] - pred[..., 0], pred[..., 3] - pred[..., 1]
    w_t, h_t = target[..., 2] - target[..., 0], target[..., 3] - target[..., 1]
    # eps in the denominators keeps zero-height boxes finite (atan(w/0) would be atan(inf) = pi/2 anyway).
    v = (4 / math.pi ** 2) * (torch.atan(w_t / (h_t + eps)) - torch.atan(w_p / (h_p + eps))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return _reduce(1 - iou + dist + alpha * v, reduction)


BOX_LOSSES = {"iou": iou_loss, "giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}


# --------------------------------------------------------------------------- classification losses
def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise BCE against soft targets q in [0, 1]: -(q log p + (1 - q) log(1 - p)), p = sigmoid(x)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def quality_focal_loss(logits: torch.Tensor, target: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Quality Focal Loss (GFL, Li et al., NeurIPS 2020, eq. 5), elementwise:

        QFL(p) = -|q - p|^beta * (q log p + (1 - q) log(1 - p))

    BCE scaled by how far the prediction still is from its soft target: easy examples (mostly the
    thousands of background points already near 0) fade out. beta = 0 gives plain BCE.
    """
    p = logits.sigmoid()
    return bce_loss(logits, target) * (target - p).abs().pow(beta)


def varifocal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.75, gamma: float = 2.0):
    """Varifocal Loss (VarifocalNet, Zhang et al., CVPR 2021, eq. 2), elementwise:

        VFL(p, q) = -q (q log p + (1 - q) log(1 - p))   if q > 0   (positives: weighted by their quality)
                  = -alpha p^gamma log(1 - p)            if q = 0   (negatives: focal down-weighting)

    Asymmetric: only negatives are down-weighted, so rare high-quality positives keep their full weight.
    """
    p = logits.sigmoid()
    weight = torch.where(target > 0, target, alpha * p.pow(gamma))
    return bce_loss(logits, target) * weight


CLS_LOSSES = {"bce": bce_loss, "qfl": quality_focal_loss, "vfl": varifocal_loss}


# --------------------------------------------------------------------------- box distribution
def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution Focal Loss (GFL, Li et al., NeurIPS 2020, eq. 6), elementwise:

        DFL(S, y) = -((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1}),   y_i = floor(y), y_{i+1} = y_i + 1

    ``logits`` (..., n) over the bins 0 .. n-1, ``target`` (...) a real distance in bins, clamped here to
    [0, n - 1.01] so both neighbours exist. The two bins around y get all the probability mass, split so
    that the expectation Σ S_i · i is exactly y at the minimum: a sharp distribution where the box side
    is clear, a wide one where it is ambiguous (occlusion, blur). -> (...) loss.
    """
    y = target.clamp(0, logits.shape[-1] - 1.01)
    left = y.floor().long()                    # y_i
    w_left = (left + 1) - y                    # y_{i+1} - y: weight of the left bin
    log_p = logits.float().log_softmax(-1)     # log S
    return -(w_left * log_p.gather(-1, left[..., None]).squeeze(-1)
             + (1 - w_left) * log_p.gather(-1, left[..., None] + 1).squeeze(-1))


# --------------------------------------------------------------------------- detection loss
class DetectionLoss(torch.nn.Module):
    """cls loss (BCE / QFL / VFL) against soft targets + box IoU-loss on positives (+ DFL with a
    distribution head), all / max(Σ targets, 1).

    Images without objects have all-zero targets: they add only the (background) classification term.
    The weights cls : box : DFL = 1 : 15 : 3 are YOLOv8's 0.5 : 7.5 : 1.5 with the cls weight at 1; they
    train tighter boxes than TOOD's 1 : 2 (our 2.5) on this data (RESULTS.md section 8).
    """

    def __init__(self, box_loss: str = "giou", cls_loss: str = "bce", cls_weight: float = 1.0,
                 box_weight: float = 15.0, dfl_weight: float = 3.0):
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {sorted(BOX_LOSSES)}, got {box_loss!r}")
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {sorted(CLS_LOSSES)}, got {cls_loss!r}")
        self.box_loss_fn, self.cls_loss_fn = BOX_LOSSES[box_loss], CLS_LOSSES[cls_loss]
        self.cls_weight, self.box_weight, self.dfl_weight = cls_weight, box_weight, dfl_weight

    def forward(self, cls_logits: torch.Tensor, pred_boxes: torch.Tensor, assignment,
                box_logits: torch.Tensor | None = None, points: torch.Tensor | None = None,
                strides: torch.Tensor | None = None) -> dict:
        """``assignment``: the ``assign.Assignment`` of these predictions (read here, not imported: assign.py
        builds on this module's IoU). ``box_logits`` (B, A, 4, n), ``points`` (A, 2), ``strides`` (A,): a
        distribution head's outputs (``DetectorOutput``), for the DFL term; without them there is no DFL term."""
        fg, target_boxes, target_scores = assignment.fg_mask, assignment.target_boxes, assignment.target_scores
        cls_logits, pred_boxes = cls_logits.float(), pred_boxes.float()  # the loss always runs in fp32
        norm = target_scores.sum().clamp(min=1)  # max(Σ targets, 1): a batch of empty images divides by 1
        loss_cls = self.cls_loss_fn(cls_logits, target_scores).sum() / norm
        weight = target_scores.sum(-1)[fg]  # (P,) each positive counts as much as its soft target
        loss_box = (self.box_loss_fn(pred_boxes[fg], target_boxes[fg], reduction="none") * weight).sum() / norm
        total = self.cls_weight * loss_cls + self.box_weight * loss_box
        out = {"cls": loss_cls, "box": loss_box}
        if box_logits is not None:
            fg_points = points.expand(len(fg), -1, -1)[fg]                      # (P, 2) anchor points
            fg_strides = strides.expand(len(fg), -1)[fg][:, None]               # (P, 1)
            ltrb = encode(fg_points, target_boxes[fg]) / fg_strides             # (P, 4) target distances in bins
            loss_dfl = (distribution_focal_loss(box_logits[fg], ltrb).mean(-1) * weight).sum() / norm
            total = total + self.dfl_weight * loss_dfl
            out["dfl"] = loss_dfl
        out["total"] = total
        return out
