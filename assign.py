"""Label assignment: which anchor points learn which ground-truth box.

Course section: "Label assignment". Paper: Feng et al., "TOOD: Task-aligned One-stage
Object Detection", ICCV 2021, sec. 3.2 "Task-aligned Sample Assignment".

Both assigners have the same call and return the same ``Assignment`` (defined here; the loss
reads it), so training can switch from one to the other between epochs::

    assigner(pred_scores (B,A,C) probabilities, pred_boxes (B,A,4) xyxy, anchor_points (A,2),
             anchor_strides (A,), gt_labels (B,M), gt_boxes (B,M,4) xyxy, gt_mask (B,M)) -> Assignment

Both run the same five named steps, vectorised over the whole batch (no loop over
images or GTs); only the metric used to rank candidates differs:

1. ``candidates_inside``   anchor points strictly inside a (real) GT box
2. metric                  TAL: t = s^alpha * u^beta (TOOD eq. 2); simple: IoU of a fixed prior box
3. ``select_topk``         per GT, the k candidates with the largest metric
4. ``resolve_conflicts``   an anchor picked by several GTs keeps the one it overlaps most
5. ``build_targets``       labels, boxes and soft scores for every anchor

Differences from the paper:

- TOOD writes the metric as ``t = s^alpha * u^beta`` with alpha on the score and
  beta on the IoU (alpha=1, beta=6). The course text swaps the two names; we keep
  the paper's roles. The defaults are the run's (``python train.py``), YOLOv8's
  top-k 10 and alpha 0.5, not TOOD's 13 and 1: the class score counts less while
  it is still poor (RESULTS.md section 8 measures the pair).
- A GT so small that no anchor point lies inside it (8-px heads at stride 8) gets
  its nearest anchor point as a candidate, so it is never left unlearned. TOOD
  (and YOLOv8) would silently drop it.
- Conflicts go to the GT with the highest IoU among the GTs that picked the anchor
  (as YOLOv8); TOOD's text says "the highest IoU" without restricting to those GTs.
- The soft classification target ``t / max t * max IoU`` (TOOD eq. 7's
  normalisation) is computed per GT over its *positives* only.
- TOOD warms up with ATSS for 4 epochs; our ``SimpleAssigner`` is a
  prediction-free stand-in (top-k prior-box IoU, no adaptive threshold).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from head import encode
from losses import box_iou, paired_iou


class Assignment(NamedTuple):
    """What an assigner decides for every anchor point; ``losses.DetectionLoss`` turns it into the loss."""
    fg_mask: torch.Tensor        # (B, A) bool: the anchor is a positive
    gt_index: torch.Tensor       # (B, A) int64: index of its GT in the padded (B, M) GT tensors
    target_labels: torch.Tensor  # (B, A) int64: class of that GT (meaningless where not fg)
    target_boxes: torch.Tensor   # (B, A, 4) xyxy pixels of that GT
    target_scores: torch.Tensor  # (B, A, C) soft classification targets (0 for background)


# --------------------------------------------------------------------------- shared steps
def candidates_inside(anchor_points: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor,
                      eps: float = 1e-9) -> torch.Tensor:
    """Step 1: (B, M, A) bool, True where anchor point a lies strictly inside real GT m.

    A real GT with no point inside (smaller than the stride) gets its nearest point instead.
    """
    # Smallest distance from the point to the four sides; > 0 means strictly inside.
    inside = encode(anchor_points, gt_boxes[..., None, :]).amin(-1) > eps         # (B, M, A)
    inside &= gt_mask[..., None]
    centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2                         # (B, M, 2)
    nearest = torch.cdist(centres, anchor_points[None].expand(len(centres), -1, -1)).argmin(-1)  # (B, M)
    tiny = gt_mask & ~inside.any(-1)                                              # (B, M) real GTs with no point
    fallback = torch.zeros_like(inside).scatter_(-1, nearest[..., None], True) & tiny[..., None]
    return inside | fallback


def select_topk(metric: torch.Tensor, candidates: torch.Tensor, topk: int) -> torch.Tensor:
    """Step 3: (B, M, A) -> bool, per GT the ``topk`` candidates with the largest metric.

    Non-candidates get metric -1 so they lose every tie against a candidate, even one with metric 0.
    """
    ranked = torch.where(candidates, metric, torch.full_like(metric, -1.0))
    k = min(topk, ranked.shape[-1])
    idx = ranked.topk(k, dim=-1).indices                                          # (B, M, k)
    chosen = torch.zeros_like(candidates).scatter_(-1, idx, True)                 # (B, M, A)
    return chosen & candidates  # a GT with fewer than k candidates keeps only its candidates


def resolve_conflicts(pos: torch.Tensor, overlaps: torch.Tensor) -> torch.Tensor:
    """Step 4: an anchor selected by several GTs keeps only the GT it overlaps most,
    among the GTs that selected it. pos, overlaps: (B, M, A) -> pos with ≤ 1 GT per anchor."""
    masked = torch.where(pos, overlaps, torch.full_like(overlaps, -1.0))          # only the GTs that chose it
    best = masked.argmax(1, keepdim=True)                                         # (B, 1, A)
    one_gt = torch.zeros_like(pos).scatter_(1, best, True)
    return pos & one_gt


def build_targets(pos: torch.Tensor, quality: torch.Tensor, gt_labels: torch.Tensor, gt_boxes: torch.Tensor,
                  num_classes: int) -> Assignment:
    """Step 5: per-anchor targets. pos (B, M, A) bool with ≤ 1 GT per anchor; quality (B, M, A) the
    soft score each positive should learn (0 where not pos)."""
    fg_mask = pos.any(1)                                                          # (B, A)
    gt_index = pos.to(torch.uint8).argmax(1)                                      # (B, A) the one True row
    target_labels = gt_labels.gather(1, gt_index)                                 # (B, A)
    idx = gt_index[..., None].expand(-1, -1, 4)
    target_boxes = gt_boxes.gather(1, idx)                                        # (B, A, 4)
    score = (quality * pos).amax(1)                                               # (B, A)
    target_scores = torch.nn.functional.one_hot(target_labels, num_classes).float() * score[..., None]
    target_scores *= fg_mask[..., None]                                           # (B, A, C), 0 for background
    return Assignment(fg_mask, gt_index, target_labels, target_boxes, target_scores)


def _empty(pred_scores: torch.Tensor, pred_boxes: torch.Tensor) -> Assignment:
    """A batch without any GT: every anchor is background."""
    b, a, c = pred_scores.shape
    z = torch.zeros(b, a, dtype=torch.long, device=pred_scores.device)
    return Assignment(z.bool(), z, z, torch.zeros_like(pred_boxes), torch.zeros_like(pred_scores))


# --------------------------------------------------------------------------- TAL
class TaskAlignedAssigner:
    """TOOD's task-aligned assigner (sec. 3.2).

    t = s^alpha * u^beta  with  s = predicted probability of the GT's class, u = IoU(predicted box, GT).
    High t needs BOTH a confident score and a well-placed box, so the anchors the head already
    handles well for both tasks become positives, and training pulls the two tasks together.
    (``anchor_strides`` is in the call for the simple assigner's priors; TAL needs none.)
    """

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0):  # TOOD: 13, 1.0, 6.0
        self.topk, self.alpha, self.beta = topk, alpha, beta

    @torch.no_grad()
    def __call__(self, pred_scores, pred_boxes, anchor_points, anchor_strides, gt_labels, gt_boxes,
                 gt_mask) -> Assignment:
        if gt_boxes.shape[1] == 0 or not gt_mask.any():
            return _empty(pred_scores, pred_boxes)
        pred_scores, pred_boxes = pred_scores.float(), pred_boxes.float()
        cand = candidates_inside(anchor_points, gt_boxes, gt_mask)                # 1. (B, M, A)
        overlaps = box_iou(gt_boxes, pred_boxes).clamp(min=0) * cand              # u: (B, M, A)
        # s: probability that anchor a gives to GT m's class -> (B, M, A)
        cls_idx = gt_labels[..., None].expand(-1, -1, pred_scores.shape[1])
        s = pred_scores.transpose(1, 2).gather(1, cls_idx)
        align = s.pow(self.alpha) * overlaps.pow(self.beta) * cand                # 2. t = s^α u^β
        pos = select_topk(align, cand, self.topk)                                 # 3.
        pos = resolve_conflicts(pos, overlaps)                                    # 4.
        # TOOD's normalisation: t_hat = t / max_j(t_j) * max_j(u_j), max over the GT's positives, so the
        # best-aligned anchor of every GT targets that GT's best IoU (not 1, and not a tiny t).
        # No "+ eps" in the division: early in training t ~ s^alpha * u^6 is ~1e-8, and an eps would distort it;
        # clamping only guards the 0 / 0 of a GT whose positives all have t = 0 (target 0 then).
        align, overlaps = align * pos, overlaps * pos
        max_t = align.amax(-1, keepdim=True).clamp(min=torch.finfo(align.dtype).tiny)   # (B, M, 1)
        quality = align / max_t * overlaps.amax(-1, keepdim=True)
        return build_targets(pos, quality, gt_labels, gt_boxes, pred_scores.shape[-1])  # 5.


# --------------------------------------------------------------------------- warm-up assigner
class SimpleAssigner:
    """A prediction-free assigner for the first epochs (an ATSS-like stand-in).

    Every anchor point carries a fixed square prior box of side ``prior_size * stride``. Per GT the
    ``topk`` candidates (points inside the GT) whose prior overlaps it most become positives; a
    contested anchor goes to the GT its prior overlaps most. Because nothing here depends on the
    predictions, it gives stable positives while the untrained head's scores and boxes are noise,
    which is exactly when TAL's metric s^α u^β is meaningless.
    The soft target is still IoU(predicted box, GT), so the classifier learns the same quality
    score under both assigners.
    """

    def __init__(self, topk: int = 9, prior_size: float = 5.0):
        self.topk, self.prior_size = topk, prior_size

    def prior_boxes(self, anchor_points: torch.Tensor, anchor_strides: torch.Tensor) -> torch.Tensor:
        """(A, 2) points, (A,) strides -> (A, 4) xyxy square priors of side prior_size * stride."""
        half = (self.prior_size * anchor_strides / 2)[:, None]                    # (A, 1)
        return torch.cat([anchor_points - half, anchor_points + half], -1)

    @torch.no_grad()
    def __call__(self, pred_scores, pred_boxes, anchor_points, anchor_strides, gt_labels, gt_boxes,
                 gt_mask) -> Assignment:
        if gt_boxes.shape[1] == 0 or not gt_mask.any():
            return _empty(pred_scores, pred_boxes)
        pred_boxes = pred_boxes.float()
        cand = candidates_inside(anchor_points, gt_boxes, gt_mask)                # 1. (B, M, A)
        prior_iou = box_iou(gt_boxes, self.prior_boxes(anchor_points, anchor_strides)) * cand  # 2. (B, M, A)
        pos = select_topk(prior_iou, cand, self.topk)                             # 3.
        pos = resolve_conflicts(pos, prior_iou)                                   # 4.
        # quality: IoU of each anchor's predicted box with its GT, (B, M, A), 0 off the positives.
        quality = paired_iou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :]) * pos
        return build_targets(pos, quality, gt_labels, gt_boxes, pred_scores.shape[-1])  # 5.


# --------------------------------------------------------------------------- diagnostics
def target_stats(assignment: Assignment, gt_mask: torch.Tensor) -> dict:
    """How much each real GT teaches, summed over the GTs of a batch (divide by ``gts`` for means).

    Per GT m with positives P_m and soft targets t (the cls targets; the box loss weights its positives
    by the same t, see losses.DetectionLoss):
        positives  |P_m|
        mass       sum t over P_m                      how much the GT pulls on the classifier
        effective  (sum t)^2 / sum t^2 over P_m        positives that really count: |P_m| when all t are
                                                       equal, 1 when one positive holds all the weight
    """
    b, m = gt_mask.shape
    fg, gt_index = assignment.fg_mask, assignment.gt_index
    t = assignment.target_scores.amax(-1) * fg                                    # (B, A)
    index = gt_index.where(fg, torch.full_like(gt_index, m))                      # background -> bin m
    bins = lambda v: torch.zeros(b, m + 1, device=v.device).scatter_add_(1, index, v)[:, :m]  # noqa: E731
    count, mass, square = bins(fg.float()), bins(t), bins(t * t)                  # (B, M) each
    taught = gt_mask & (square > 0)
    return {"gts": int(gt_mask.sum()), "positives": float(count[gt_mask].sum()), "mass": float(mass[gt_mask].sum()),
            "effective": float((mass[taught] ** 2 / square[taught]).sum())}
