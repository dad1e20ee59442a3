"""All the pictures: the plotting functions every script uses, and the walkthrough's figures.

    python visualize.py --checkpoint runs/NAME/best.pt [--data DIR] --out figures/

The first half holds the drawing functions (train.py's curves, evaluate.py's PR curve, drawings and
IoU histogram, the augmentation grid); the second renders WALKTHROUGH.md's figures from a checkpoint and
prints what each assigner teaches per GT over the validation split (``assignment_table``):

    anchors.png               plot_anchor_points     anchor points of each FPN level + GT boxes
    assign_simple.png         plot_assignment        positives of the prediction-free assigner
    assign_tal_epoch0.png     plot_assignment        TAL's positives with an untrained head
    assign_tal_trained.png    plot_assignment        TAL's positives with the trained model
    tiny_gt.png               plot_assignment        the smallest GT box and the anchor it still gets
    augment.png               plot_augmentations     augmented training samples with their boxes
    predictions.png           plot_predictions       test images: predictions and ground truth
    score_maps.png            plot_score_maps        per-level class heat-maps for one image
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window: works on a headless machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np
import torch
from PIL import Image
from matplotlib.patches import Rectangle  # noqa: E402
from tqdm import tqdm

from assign import Assignment, SimpleAssigner, TaskAlignedAssigner, target_stats
from data import DataError, DetectionDataset, build_transforms, collate, pad_targets
from detector import build_detector
from evaluate import postprocess
from head import make_anchor_points
from metrics import ap_at_iou, precision_curve
from runtime import CheckpointError, load_checkpoint
from sources import load_class_names, resolve_data_root


# --------------------------------------------------------------------------- drawing functions
def to_uint8_image(image: torch.Tensor, mean, std) -> np.ndarray:
    """Undo ``Normalize``: (3,H,W) float -> (H,W,3) uint8 RGB, for drawing."""
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    return ((image.float().cpu() * s + m).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()



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
        ax.text(x1, y1 - 2, tag, color="white", fontsize=6, va="bottom", bbox=dict(fc=c, ec="none", pad=0.5, alpha=0.8))



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


def plot_assignment(image, anchor_points: torch.Tensor, a: Assignment, gt_boxes: torch.Tensor, title: str = "",
                    zoom_to: int | str | None = None):
    """The positives an assigner picked on one image: points coloured by their GT, sized by target score.

    image (H,W,3) uint8; ``a`` an Assignment for a batch of one; gt_boxes (M, 4) real GTs of the image.
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
    """loss.png and map.png of a run from its metrics.csv rows: training losses and validation mAP per epoch."""
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("loss", "loss_cls", "loss_box", "loss_dfl"):
        if key in rows[0]:
            ax.plot(ep, [r[key] for r in rows], label=key)
    ax.set(xlabel="epoch", ylabel="train loss (log scale)", title="training loss", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=100)
    plt.close(fig)
    val = [r for r in rows if r["val_map"] != ""]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("val_map", "mAP@[.5:.95]"), ("val_map50", "mAP50"), ("val_map75", "mAP75")):
        ax.plot([r["epoch"] for r in val], [r[key] for r in val], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="validation", title="validation mAP")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "map.png", dpi=100)
    plt.close(fig)


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


# --------------------------------------------------------------------------- the walkthrough's figures
def largest_area(boxes: np.ndarray) -> float:
    """Area of the largest xyxy box (0 for an image without boxes)."""
    return float(((boxes[:, 2:] - boxes[:, :2]).prod(1)).max()) if len(boxes) else 0.0


@torch.no_grad()
def outputs(model, images: torch.Tensor):
    """images (B,3,S,S) -> scores (B,A,C) probabilities, boxes (B,A,4), points (A,2), fp32, eval mode."""
    model.eval()
    cls_logits, boxes, points, *_ = model(images.contiguous(memory_format=torch.channels_last))
    return cls_logits.float().sigmoid(), boxes.float(), points


def assignments(models: dict, image: torch.Tensor, target: dict):
    """-> ({figure name: Assignment} for the simple assigner and TAL with each model, anchor points (A, 2))."""
    gt_boxes, gt_labels, gt_mask = pad_targets([target])
    out = {}
    scores, boxes, points = outputs(models["untrained"], image[None])
    out["assign_simple"] = SimpleAssigner()(scores, boxes, points, gt_labels, gt_boxes, gt_mask)
    out["assign_tal_epoch0"] = TaskAlignedAssigner()(scores, boxes, points, gt_labels, gt_boxes, gt_mask)
    scores, boxes, points = outputs(models["trained"], image[None])
    out["assign_tal_trained"] = TaskAlignedAssigner()(scores, boxes, points, gt_labels, gt_boxes, gt_mask)
    return out, points


def assignment_table(models: dict, dataset, batch_size: int = 16) -> str:
    """What each assigner teaches per GT over a whole split (``assign.target_stats``): the simple
    assigner and TAL with the untrained head (epoch 0), and TAL with the trained model."""
    setups = {"simple, untrained head": (SimpleAssigner(), "untrained"),
              "TAL, untrained head": (TaskAlignedAssigner(), "untrained"),
              "TAL, trained model": (TaskAlignedAssigner(), "trained")}
    totals = {name: Counter() for name in setups}
    loader = torch.utils.data.DataLoader(dataset, batch_size, collate_fn=collate)
    for images, targets in tqdm(loader, desc="assignment statistics", leave=False):
        gt_boxes, gt_labels, gt_mask = pad_targets(targets)
        outs = {which: outputs(models[which], images) for which in ("untrained", "trained")}
        for name, (assigner, which) in setups.items():
            scores, boxes, points = outs[which]
            totals[name].update(target_stats(assigner(scores, boxes, points, gt_labels, gt_boxes, gt_mask), gt_mask))
    lines = [f"{'per GT, mean over the split':28s} {'positives':>9} {'target mass':>11} {'effective positives':>19}"]
    for name, t in totals.items():
        n = max(t["gts"], 1)
        lines.append(f"{name:28s} {t['positives'] / n:9.1f} {t['mass'] / n:11.2f} {t['effective'] / n:19.1f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Render the walkthrough's figures from a trained checkpoint.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default="figures")
    p.add_argument("--num", type=int, default=6, help="test images in predictions.png")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        trained, ckpt = load_checkpoint(args.checkpoint)
        root = resolve_data_root(args.data)
        names = ckpt["class_names"]
        if len(load_class_names(root)) != len(names):
            raise CheckpointError(f"the checkpoint's classes {names} do not match the dataset at {root}")
        size = ckpt["train_args"]["img_size"]
        mean, std = trained.backbone.mean, trained.backbone.std
        val = DetectionDataset(root, "validation", build_transforms(size, False, mean, std), names)
        test = DetectionDataset(root, "test", build_transforms(size, False, mean, std), names)
        train = DetectionDataset(root, "train", build_transforms(size, True, mean, std, "strong"), names,
                                 seed=args.seed)
    except (CheckpointError, DataError) as e:
        sys.exit(f"error: {e}")
    torch.manual_seed(args.seed)
    # The same architecture with ImageNet backbone weights and a fresh head: the model at epoch 0.
    untrained = build_detector(ckpt["model_config"], pretrained=True).to(memory_format=torch.channels_last)
    models = {"trained": trained, "untrained": untrained}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(fig, name):
        path = out / f"{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        # 256-colour palette: photos as PNG shrink ~3x, small enough to commit (the walkthrough embeds them).
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")

    # The validation image holding the largest box: it has many more candidate points than top-k,
    # so the assigners really have to choose (small boxes hold fewer points than k: all become positives).
    biggest = int(np.argmax([largest_area(r.boxes) for r in val.records]))
    image, target = val[biggest]
    picture = to_uint8_image(image, mean, std)
    feats_shapes = [(size // s, size // s) for s in trained.strides]
    points, strides = make_anchor_points(feats_shapes, trained.strides)
    save(plot_anchor_points(picture, points, strides, target["boxes"]), "anchors")
    result, points = assignments(models, image, target)
    titles = {"assign_simple": "simple assigner (prior-box IoU, top-9): prediction-free",
              "assign_tal_epoch0": "TAL, untrained head: t = s * IoU^6 from random boxes",
              "assign_tal_trained": "TAL, trained model: positives where score and box are both good"}
    for name, a in result.items():
        save(plot_assignment(picture, points, a, target["boxes"], titles[name], zoom_to="all"), name)
    print(f"\nlabel assignment on the validation split ({len(val)} images):\n{assignment_table(models, val)}\n")

    # The smallest GT with no anchor point strictly inside it: without the nearest-point fallback in
    # candidates_inside it could never become anyone's target. (No such GT: the smallest GT of all.)
    smallest = []  # (no point inside?, smallest side, image index, GT index)
    for i, rec in enumerate(val.records):
        for m, box in enumerate(torch.as_tensor(rec.boxes)):
            inside = bool(((points > box[:2]) & (points < box[2:])).all(1).any())
            smallest.append((inside, float((box[2:] - box[:2]).min()), i, m))
    inside, _, i, m = min(smallest)  # False sorts first: GTs without a point inside win
    image, target = val[i]
    result, points = assignments(models, image, target)
    w, h = (target["boxes"][m, 2:] - target["boxes"][m, :2]).tolist()
    note = "has anchor points inside" if inside else "no anchor point inside; it still gets its nearest point"
    save(plot_assignment(to_uint8_image(image, mean, std), points, result["assign_tal_trained"], target["boxes"],
                         f"GT {m}: {w:.0f}x{h:.0f} px, {note}", zoom_to=m), "tiny_gt")

    picks = np.random.default_rng(args.seed).choice(len(train), 8, replace=False)
    samples = [train[int(i)] for i in picks]
    save(plot_augmentations([to_uint8_image(x, mean, std) for x, _ in samples], [t for _, t in samples], names),
         "augment")

    images, targets = collate([test[i] for i in range(min(args.num, len(test)))])
    with torch.no_grad():
        cls_logits, boxes, *_ = trained(images.contiguous(memory_format=torch.channels_last))
    preds = postprocess(cls_logits, boxes)
    save(plot_predictions([to_uint8_image(x, mean, std) for x in images], preds, names, targets), "predictions")

    # Score maps of the test image the trained model is most sure about (its best score, summed over classes).
    confidence = [outputs(trained, test[i][0][None])[0][0].amax(0).sum().item() for i in range(len(test))]
    image, _ = test[int(np.argmax(confidence))]
    scores, _, _ = outputs(trained, image[None])
    save(plot_score_maps(to_uint8_image(image, mean, std), scores[0], feats_shapes, names, trained.strides),
         "score_maps")


if __name__ == "__main__":
    main()
