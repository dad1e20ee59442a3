"""Every plot: the drawing functions train.py, evaluate.py and the tools share. Not a course concept.

Each returns a matplotlib figure (``plot_history`` writes its two files itself): training curves, the
precision-recall curve, predictions and ground truth, the IoU histogram, augmented samples, anchor
points, score maps and an assigner's positives. ``python -m tools.visualize`` renders the walkthrough's
figures with them.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window: works on a headless machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from tools.metrics import ap_at_iou, precision_curve  # noqa: E402


def save(fig, path, dpi: int = 100) -> None:
    """Write a figure and close it (pyplot keeps every open figure alive until it is closed)."""
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """A dataset's image (3,H,W) uint8 -> (H,W,3) uint8 RGB, for drawing."""
    return image.cpu().permute(1, 2, 0).numpy()


def draw_boxes(ax, boxes, labels, class_names, scores=None, linestyle="-", colors=None, tags=True) -> None:
    """Draw xyxy ``boxes`` on a matplotlib axis, coloured by class, with name (and score) tags."""
    colors = colors or ["#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#af52de", "#ff9500"]
    for k, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1))):
        x1, y1, x2, y2 = box
        c = colors[int(label) % len(colors)]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5, ec=c, ls=linestyle))
        if not tags:
            continue
        tag = class_names[int(label)] + (f" {float(scores[k]):.2f}" if scores is not None else "")
        above = y1 > 8   # the tag sits above the box, or inside its top edge where the image ends above it
        ax.text(x1, y1 - 2 if above else y1 + 1, tag, color="white", fontsize=6, va="bottom" if above else "top",
                bbox=dict(fc=c, ec="none", pad=0.5, alpha=0.8))


def plot_augmentations(images: list[np.ndarray], targets: list[dict], class_names: list[str], cols: int = 4):
    """Grid of augmented samples (uint8 images) with their boxes; returns the matplotlib figure."""
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t in zip(axes.flat, images, targets):
        ax.imshow(img)
        draw_boxes(ax, t["boxes"], t["labels"], class_names)
        ax.set_title(f"image_id {t['image_id']}: {len(t['labels'])} boxes", fontsize=8)
    fig.tight_layout()
    return fig


LEVEL_COLOURS = {8: "#ff9500", 16: "#34c759", 32: "#0a84ff"}  # one colour per FPN stride


def plot_anchor_points(image, points: torch.Tensor, strides: torch.Tensor, gt_boxes=None):
    """The anchor points of every level on an image (H,W,3 uint8): one colour per stride, GT boxes in white.
    Returns the matplotlib figure."""
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(image)
    for s, colour in LEVEL_COLOURS.items():
        sel = strides == s
        if sel.any():
            ax.scatter(points[sel, 0], points[sel, 1], s=(2 if s == 8 else 6 if s == 16 else 14), c=colour,
                       label=f"stride {s}: {int(sel.sum())} points", alpha=0.8, linewidths=0)
    for x1, y1, x2, y2 in ([] if gt_boxes is None else gt_boxes.tolist()):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", lw=1.5))
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("anchor points: one per feature-map cell, at the cell centre")
    ax.axis("off")
    fig.tight_layout()
    return fig


def plot_score_maps(image, cls_scores: torch.Tensor, feature_shapes, class_names: list[str], strides=(8, 16, 32)):
    """Per-level classification heat-maps for one image: ``cls_scores`` (A, C) probabilities, levels
    concatenated as in ``make_anchor_points``. Rows: classes; columns: the image, then one map per level."""
    n_cls = cls_scores.shape[1]
    fig, axes = plt.subplots(n_cls, len(feature_shapes) + 1, figsize=(3 * (len(feature_shapes) + 1), 3 * n_cls),
                             squeeze=False)
    maps, start = [], 0
    for h, w in feature_shapes:
        maps.append(cls_scores[start:start + h * w].reshape(h, w, n_cls))
        start += h * w
    for c in range(n_cls):
        axes[c, 0].imshow(image)
        axes[c, 0].set_title(class_names[c], fontsize=9)
        vmax = max(0.05, max(float(m[..., c].max()) for m in maps))  # one colour scale per class row
        for j, (m, s) in enumerate(zip(maps, strides)):
            im = axes[c, j + 1].imshow(m[..., c].float(), vmin=0, vmax=vmax, cmap="magma")
            axes[c, j + 1].set_title(f"stride {s} ({m.shape[0]}x{m.shape[1]}), max {m[..., c].max():.2f}",
                                     fontsize=8)
        fig.colorbar(im, ax=axes[c].tolist(), shrink=0.8, label=f"P({class_names[c]})")
    for ax in axes.flat:
        ax.axis("off")
    return fig


def plot_assignment(image, anchor_points: torch.Tensor, a, gt_boxes: torch.Tensor, title: str = "",
                    zoom_to: int | str | None = None):
    """The positives an assigner picked on one image: points coloured by their GT, sized by target score.

    image (H,W,3) uint8; ``a`` an ``assign.Assignment`` for a batch of one; gt_boxes (M, 4) real GTs of the image.
    ``zoom_to``: index of a GT to zoom the view onto (e.g. a tiny head box), or "all" for the region
    holding every GT. Returns the figure."""
    colours = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(image)
    ax.scatter(anchor_points[:, 0], anchor_points[:, 1], s=1, c="white", alpha=0.25, linewidths=0)
    fg, gt_index, score = a.fg_mask[0], a.gt_index[0], a.target_scores[0].amax(-1)
    for m, (x1, y1, x2, y2) in enumerate(gt_boxes.tolist()):
        c = colours[m % len(colours)]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=c, lw=1.5))
        sel = fg & (gt_index == m)
        ax.scatter(anchor_points[sel, 0], anchor_points[sel, 1], s=10 + 150 * score[sel].clamp(min=0.02),
                   color=c, edgecolors="black", linewidths=0.5, label=f"GT {m}: {int(sel.sum())} positives")
    if zoom_to is not None:
        region = gt_boxes if zoom_to == "all" else gt_boxes[zoom_to][None]
        x1, y1 = region[:, :2].amin(0).tolist()
        x2, y2 = region[:, 2:].amax(0).tolist()
        pad = max(x2 - x1, y2 - y1, 16) * (0.3 if zoom_to == "all" else 2)
        ax.set_xlim(x1 - pad, x2 + pad)
        ax.set_ylim(y2 + pad, y1 - pad)
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    return fig


def plot_history(rows: list[dict], run_dir: Path) -> None:
    """loss.png, map.png and ap_per_class.png of a run from its metrics.csv rows: training losses, validation mAP
    and validation AP of each class, per epoch."""
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("loss", "loss_cls", "loss_box", "loss_dfl"):
        if key in rows[0]:
            ax.plot(ep, [r[key] for r in rows], label=key)
    ax.set(xlabel="epoch", ylabel="train loss (log scale)", title="training loss", yscale="log")
    ax.legend()
    fig.tight_layout()
    save(fig, run_dir / "loss.png")
    val = [r for r in rows if r["val_map"] != ""]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("val_map", "mAP@[.5:.95]"), ("val_map50", "mAP50"), ("val_map75", "mAP75")):
        ax.plot([r["epoch"] for r in val], [r[key] for r in val], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="validation", title="validation mAP")
    ax.legend()
    fig.tight_layout()
    save(fig, run_dir / "map.png")
    classes = [key for key in rows[0] if key.startswith("val_ap_")]
    if classes:  # a class that stays at 0 while the others climb is not being learned
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in classes:
            ax.plot([r["epoch"] for r in val], [r[key] for r in val], marker="o", label=key[len("val_ap_"):])
        ax.set(xlabel="epoch", ylabel="validation AP@[.5:.95]", title="validation AP per class")
        ax.legend()
        fig.tight_layout()
        save(fig, run_dir / "ap_per_class.png")


def plot_pr_curves(res: dict, class_names: list[str], iou_index: int = 0):
    """Precision-recall curve per class at IoU 0.5 (``iou_index`` 0 of COCO's 0.50:0.05:0.95),
    from torchmetrics' extended summary. Returns the matplotlib figure."""
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


def plot_iou_histogram(ious: list[torch.Tensor], class_names: list[str], min_score: float = 0.3):
    """Histogram per class of ``best_match_ious``, with COCO's 0.5 and 0.75 thresholds marked."""
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


def plot_side_errors(rows: list[dict], class_names: list[str]):
    """``tools.diagnose.side_errors`` as one figure: per side (left, top, right, bottom), the histogram of each
    class's error as a fraction of the box, positive where the prediction reaches beyond the GT."""
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4), sharey=True)
    for k, (ax, side) in enumerate(zip(axes, ("left", "top", "right", "bottom"))):
        for c, name in enumerate(class_names):
            v = np.array([r["frac"][k] for r in rows if r["label"] == c])
            if len(v):
                ax.hist(v, bins=24, range=(-0.3, 0.3), histtype="step", lw=2,
                        label=f"{name}: {v.mean():+.3f} ± {v.std():.3f}")
        ax.axvline(0, color="grey", ls="--", lw=1)
        ax.set(title=f"{side} side", xlabel="error / box side (+: beyond the GT)")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("GT boxes matched at IoU >= 0.5")
    fig.tight_layout()
    return fig
