"""Reading COCO mAP beyond one number: per class, at one IoU threshold, and how tight the boxes are.

``evaluate.py`` prints these; ``train.py`` writes them to ``test_results.json``. torchmetrics'
``MeanAveragePrecision`` (with ``extended_summary=True``) computes the precision arrays; these functions
only index into them, and ``best_match_ious`` looks at the detections themselves.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_iou  # losses.box_iou's twin (tests/test_losses.py): tools import no course module


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


def per_size_ap_at_iou(res: dict, iou_index: int) -> dict[str, float]:
    """{"small" / "medium" / "large": AP at one IoU threshold over the classes} in COCO's area ranges (the
    extended summary's area axis: 0 all, 1 small, 2 medium, 3 large). As COCO's own summary: the mean of
    the precisions that are not -1, the entries of classes with no GT of that size; -1 where none is left."""
    out = {}
    for a, size in enumerate(("small", "medium", "large"), start=1):
        p = res["precision"][iou_index, :, :, a, -1]                   # (101 recall points, K classes)
        out[size] = p[p > -1].mean().item() if (p > -1).any() else -1.0
    return out


def metrics_summary(res: dict, class_names: list[str]) -> dict:
    """The numbers a run reports, as plain floats: mAP, mAP50, mAP75, AP of small / medium / large objects
    (COCO's areas in the image's own pixels: < 32², 32²..96², > 96²; -1 where a split has none) and, per
    class, AP@[.5:.95], AP50 and AP75, and per size AP50 and AP75 (these need ``evaluate``'s extended summary)."""
    return {"map": float(res["map"]), "map_50": float(res["map_50"]), "map_75": float(res["map_75"]),
            "map_small": float(res["map_small"]), "map_medium": float(res["map_medium"]),
            "map_large": float(res["map_large"]),
            "ap_per_class": per_class_ap(res, class_names),
            "ap50_per_class": per_class_ap_at_iou(res, class_names, 0),
            "ap75_per_class": per_class_ap_at_iou(res, class_names, 5),
            "ap50_per_size": per_size_ap_at_iou(res, 0), "ap75_per_size": per_size_ap_at_iou(res, 5)}


def format_results(s: dict) -> str:
    """``metrics_summary``'s numbers as a small text table."""
    lines = [f"mAP@[.5:.95] {s['map']:.4f}   mAP50 {s['map_50']:.4f}   mAP75 {s['map_75']:.4f}",
             f"AP small {s['map_small']:.4f}   medium {s['map_medium']:.4f}   large {s['map_large']:.4f}",
             "AP50 / AP75 small {small}   medium {medium}   large {large}".format(
                 **{k: f"{s['ap50_per_size'][k]:.4f} / {s['ap75_per_size'][k]:.4f}" for k in s["ap50_per_size"]}),
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
