"""The walkthrough's figures, rendered from a trained checkpoint.

    python -m tools.visualize --checkpoint runs/NAME/best.pt [--data DIR] --out figures/

It also prints what each assigner teaches per GT over the validation split (``assignment_table``):

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

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from assign import SimpleAssigner, TaskAlignedAssigner, target_stats
from data import DataError, DetectionDataset, build_transforms, collate, pad_targets
from detector import build_detector, load_checkpoint
from evaluate import postprocess
from head import make_anchor_points
from tools.checkpoint import CheckpointError
from tools.device import DeviceError, resolve_device
from tools.plots import (plot_anchor_points, plot_assignment, plot_augmentations, plot_predictions, plot_score_maps,
                         save, to_uint8_image)
from tools.sources import load_class_names, resolve_data_root


def largest_area(boxes: np.ndarray) -> float:
    """Area of the largest xyxy box (0 for an image without boxes)."""
    return float(((boxes[:, 2:] - boxes[:, :2]).prod(1)).max()) if len(boxes) else 0.0


@torch.no_grad()
def outputs(model, images: torch.Tensor):
    """images (B,3,S,S) -> scores (B,A,C) probabilities, boxes (B,A,4), points (A,2), strides (A,): fp32, on
    the CPU, the model in eval mode on its own device. The first four arguments of an assigner."""
    model.eval()
    cls_logits, boxes, points, strides, _ = model(images.to(next(model.parameters()).device,
                                                           memory_format=torch.channels_last))
    return cls_logits.float().sigmoid().cpu(), boxes.float().cpu(), points.cpu(), strides.cpu()


def assignments(models: dict, image: torch.Tensor, target: dict, tal: TaskAlignedAssigner):
    """-> ({figure name: Assignment} for the simple assigner and TAL with each model, anchor points (A, 2))."""
    gt_boxes, gt_labels, gt_mask = pad_targets([target])
    untrained, trained = outputs(models["untrained"], image[None]), outputs(models["trained"], image[None])
    out = {"assign_simple": SimpleAssigner()(*untrained, gt_labels, gt_boxes, gt_mask),
           "assign_tal_epoch0": tal(*untrained, gt_labels, gt_boxes, gt_mask),
           "assign_tal_trained": tal(*trained, gt_labels, gt_boxes, gt_mask)}
    return out, trained[2]


def assignment_table(models: dict, dataset, tal: TaskAlignedAssigner, batch_size: int = 16) -> str:
    """What each assigner teaches per GT over a whole split (``assign.target_stats``): the simple
    assigner and TAL with the untrained head (epoch 0), and TAL with the trained model."""
    setups = {"simple, untrained head": (SimpleAssigner(), "untrained"),
              "TAL, untrained head": (tal, "untrained"),
              "TAL, trained model": (tal, "trained")}
    totals = {name: Counter() for name in setups}
    loader = torch.utils.data.DataLoader(dataset, batch_size, collate_fn=collate)
    for images, targets in tqdm(loader, desc="assignment statistics", leave=False):
        gt_boxes, gt_labels, gt_mask = pad_targets(targets)
        outs = {which: outputs(models[which], images) for which in ("untrained", "trained")}
        for name, (assigner, which) in setups.items():
            totals[name].update(target_stats(assigner(*outs[which], gt_labels, gt_boxes, gt_mask), gt_mask))
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
    p.add_argument("--device", default="auto", help="auto: the first CUDA GPU if there is one, else the CPU")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        trained, ckpt = load_checkpoint(args.checkpoint, device)
        root = resolve_data_root(args.data)
        names = ckpt["class_names"]
        if len(load_class_names(root)) != len(names):
            raise CheckpointError(f"the checkpoint's classes {names} do not match the dataset at {root}")
        size = ckpt["train_args"]["img_size"]
        val = DetectionDataset(root, "validation", build_transforms(size, False), names)
        test = DetectionDataset(root, "test", build_transforms(size, False), names)
        train = DetectionDataset(root, "train", build_transforms(size, True, "strong"), names,
                                 seed=args.seed)
    except (CheckpointError, DataError, DeviceError) as e:
        sys.exit(f"error: {e}")
    torch.manual_seed(args.seed)
    # The same architecture with ImageNet backbone weights and a fresh head: the model at epoch 0.
    untrained = build_detector(ckpt["model_config"], pretrained=True).to(device, memory_format=torch.channels_last)
    models = {"trained": trained, "untrained": untrained}
    ta = ckpt["train_args"]  # TAL as the checkpoint's run trained with it
    tal = TaskAlignedAssigner(topk=ta["tal_topk"], alpha=ta["tal_alpha"], beta=ta["tal_beta"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save_png(fig, name):
        path = out / f"{name}.png"
        save(fig, path, dpi=80)
        # 256-colour palette: photos as PNG shrink ~3x, small enough to commit (the walkthrough embeds them).
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")

    # The validation image holding the largest box: it has many more candidate points than top-k,
    # so the assigners really have to choose (small boxes hold fewer points than k: all become positives).
    biggest = int(np.argmax([largest_area(r.boxes) for r in val.records]))
    image, target = val[biggest]
    picture = to_uint8_image(image)
    feats_shapes = [(size // s, size // s) for s in trained.strides]
    points, strides = make_anchor_points(feats_shapes, trained.strides)
    save_png(plot_anchor_points(picture, points, strides, target["boxes"]), "anchors")
    result, points = assignments(models, image, target, tal)
    titles = {"assign_simple": "simple assigner (prior-box IoU, top-9): prediction-free",
              "assign_tal_epoch0": f"TAL, untrained head: t = s^{tal.alpha:g} * IoU^{tal.beta:g} from random boxes",
              "assign_tal_trained": "TAL, trained model: positives where score and box are both good"}
    for name, a in result.items():
        save_png(plot_assignment(picture, points, a, target["boxes"], titles[name], zoom_to="all"), name)
    print(f"\nlabel assignment on the validation split ({len(val)} images):\n{assignment_table(models, val, tal)}\n")

    # The smallest GT with no anchor point strictly inside it: without the nearest-point fallback in
    # candidates_inside it could never become anyone's target. (No such GT: the smallest GT of all.)
    smallest = []  # (no point inside?, smallest side, image index, GT index)
    for i, rec in enumerate(val.records):
        for m, box in enumerate(torch.as_tensor(rec.boxes)):
            inside = bool(((points > box[:2]) & (points < box[2:])).all(1).any())
            smallest.append((inside, float((box[2:] - box[:2]).min()), i, m))
    inside, _, i, m = min(smallest)  # False sorts first: GTs without a point inside win
    image, target = val[i]
    result, points = assignments(models, image, target, tal)
    w, h = (target["boxes"][m, 2:] - target["boxes"][m, :2]).tolist()
    note = "has anchor points inside" if inside else "no anchor point inside; it still gets its nearest point"
    save_png(plot_assignment(to_uint8_image(image), points, result["assign_tal_trained"], target["boxes"],
                         f"GT {m}: {w:.0f}x{h:.0f} px, {note}", zoom_to=m), "tiny_gt")

    picks = np.random.default_rng(args.seed).choice(len(train), 8, replace=False)
    samples = [train[int(i)] for i in picks]
    save_png(plot_augmentations([to_uint8_image(x) for x, _ in samples], [t for _, t in samples], names),
         "augment")

    images, targets = collate([test[i] for i in range(min(args.num, len(test)))])
    with torch.no_grad():
        cls_logits, boxes, *_ = trained(images.to(device, memory_format=torch.channels_last))
    preds = postprocess(cls_logits.cpu(), boxes.cpu())
    save_png(plot_predictions([to_uint8_image(x) for x in images], preds, names, targets), "predictions")

    # Score maps of the test image the trained model is most sure about (its best score, summed over classes).
    confidence = [outputs(trained, test[i][0][None])[0][0].amax(0).sum().item() for i in range(len(test))]
    image, _ = test[int(np.argmax(confidence))]
    scores, *_ = outputs(trained, image[None])
    save_png(plot_score_maps(to_uint8_image(image), scores[0], feats_shapes, names, trained.strides),
         "score_maps")


if __name__ == "__main__":
    main()
