"""Every picture function renders from tensors with a tiny model (Agg backend, no display); the anchor and
assignment figures draw exactly the points they claim."""
import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from tools import visualize  # noqa: E402
from assign import TaskAlignedAssigner  # noqa: E402
from detector import Detector  # noqa: E402
from evaluate import postprocess  # noqa: E402
from head import make_anchor_points  # noqa: E402
from tools.plots import (plot_anchor_points, plot_assignment, plot_augmentations, plot_pr_curves,  # noqa: E402
                       plot_predictions, plot_score_maps)


@pytest.fixture(scope="module")
def scene():
    torch.manual_seed(0)
    model = Detector(2, pretrained=False).eval()
    image = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)                 # pixels, as a dataset gives
    with torch.no_grad():
        cls_logits, boxes, points, *_ = model(image)
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0], [30.0, 30.0, 34.0, 35.0]])
    return model, image, cls_logits, boxes, points, gt, image[0].permute(1, 2, 0).numpy()


def rendered(fig):
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())
    assert pixels.shape[0] > 100 and pixels.std() > 0  # drew something, not a blank canvas
    matplotlib.pyplot.close(fig)


def test_anchor_points_figure(scene):
    _, _, _, _, _, gt, img = scene
    points, strides = make_anchor_points([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    fig = plot_anchor_points(img, points, strides, gt)
    drawn = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    assert sorted(map(tuple, drawn.tolist())) == sorted(map(tuple, points.tolist())), "every anchor point, once, where it is"
    assert len(fig.axes[0].patches) == len(gt), "one rectangle per GT box"
    rendered(fig)


@pytest.mark.parametrize("zoom", [None, "all", 1])
def test_assignment_figure(scene, zoom):
    _, _, cls_logits, boxes, points, gt, img = scene
    _, strides = make_anchor_points([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    a = TaskAlignedAssigner()(cls_logits.sigmoid(), boxes, points, strides, torch.tensor([[0, 1]]), gt[None],
                              torch.ones(1, 2, dtype=torch.bool))
    fig = plot_assignment(img, points, a, gt, "tal", zoom_to=zoom)
    for m, positives in enumerate(fig.axes[0].collections[1:]):  # after the grey dots of every point
        expected = points[a.fg_mask[0] & (a.gt_index[0] == m)]
        assert sorted(map(tuple, positives.get_offsets().tolist())) == sorted(map(tuple, expected.tolist())), \
            f"the dots drawn for GT {m} are not its positives"
    rendered(fig)


def test_score_maps_figure(scene):
    _, _, cls_logits, _, _, _, img = scene
    rendered(plot_score_maps(img, cls_logits[0].sigmoid(), [(8, 8), (4, 4), (2, 2)], ["a", "b"]))


def test_predictions_and_augment_figures(scene):
    _, _, cls_logits, boxes, _, gt, img = scene
    preds = postprocess(cls_logits, boxes.clamp(0, img.shape[0]))  # inside the (square) image, as mapped-back ones are
    targets = [{"boxes": gt, "labels": torch.tensor([0, 1]), "image_id": 0}]
    rendered(plot_predictions([img], preds, ["a", "b"], targets, min_score=0.0))
    rendered(plot_augmentations([img, img], targets * 2, ["a", "b"]))


def test_pr_figure():
    from torchmetrics.detection import MeanAveragePrecision
    metric = MeanAveragePrecision(class_metrics=True, extended_summary=True)
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    metric.update([{"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])}],
                  [{"boxes": boxes, "labels": torch.tensor([0, 1])}])
    rendered(plot_pr_curves(metric.compute(), ["a", "b"]))


@pytest.mark.slow
def test_visualize_script_writes_every_figure(tmp_path):
    from conftest import make_dataset
    import train
    root = make_dataset(tmp_path / "d", sizes={"train": 8, "validation": 4, "test": 4}, image_size=64)
    train.main(["--data", str(root), "--out", str(tmp_path), "--name", "v", "--workers", "0", "--epochs", "1",
                "--batch-size", "4", "--img-size", "64"])
    visualize.main(["--checkpoint", str(tmp_path / "v" / "best.pt"), "--data", str(root), "--out",
                    str(tmp_path / "fig"), "--num", "2"])
    names = {p.stem for p in (tmp_path / "fig").glob("*.png")}
    assert names == {"anchors", "assign_simple", "assign_tal_epoch0", "assign_tal_trained", "tiny_gt", "augment",
                     "predictions", "score_maps"}


def _detections_near_gts(seed: int, images: int, gts: int, dets: int, max_extra_side: float):
    """Random GT boxes (sides 8 .. 8 + max_extra_side px, two classes) and detections that copy a GT with each
    side moved by up to ±20 % of the box, so their IoUs spread over 0.5 .. 1, with random scores."""
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(images):
        xy = torch.rand(gts, 2, generator=g) * 80
        gt = torch.cat([xy, xy + 8 + torch.rand(gts, 2, generator=g) * max_extra_side], 1)   # (gts, 4) xyxy
        idx = torch.randint(0, gts, (dets,), generator=g)
        wh = gt[idx, 2:] - gt[idx, :2]
        jitter = (torch.rand(dets, 4, generator=g) - 0.5) * 0.4 * wh.repeat(1, 2)           # (dets, 4) px
        labels = torch.randint(0, 2, (gts,), generator=g)
        preds.append({"boxes": gt[idx] + jitter, "scores": torch.rand(dets, generator=g), "labels": labels[idx]})
        targets.append({"boxes": gt, "labels": labels})
    return preds, targets


def test_per_class_ap50_and_ap75_match_torchmetrics_at_that_threshold():
    """ap_at_iou reads one IoU threshold out of the 10-threshold extended summary; torchmetrics run with
    only that threshold must give the same per-class AP (a wrong index or axis gives another number)."""
    from torchmetrics.detection import MeanAveragePrecision
    from tools.metrics import per_class_ap_at_iou
    preds, targets = _detections_near_gts(seed=0, images=6, gts=5, dets=8, max_extra_side=20)
    full = MeanAveragePrecision(class_metrics=True, extended_summary=True)
    full.update(preds, targets)
    res = full.compute()
    for iou_index, thr in ((0, 0.5), (5, 0.75)):
        single = MeanAveragePrecision(class_metrics=True, iou_thresholds=[thr])
        single.update(preds, targets)
        ref = single.compute()["map_per_class"].tolist()
        ours = list(per_class_ap_at_iou(res, ["a", "b"], iou_index).values())
        assert ours == pytest.approx(ref, abs=1e-6)
    assert per_class_ap_at_iou(res, ["a", "b"], 0) != per_class_ap_at_iou(res, ["a", "b"], 5)


def test_per_size_ap50_and_ap75_match_torchmetrics_at_that_threshold():
    """per_size_ap_at_iou reads one IoU threshold and one area range: torchmetrics run with only that threshold
    gives the same AP small / medium / large, and over the ten thresholds they average to its map_small etc."""
    from torchmetrics.detection import MeanAveragePrecision
    from tools.metrics import per_size_ap_at_iou
    preds, targets = _detections_near_gts(seed=1, images=8, gts=6, dets=10, max_extra_side=140)  # < 32² to > 96²
    full = MeanAveragePrecision(class_metrics=True, extended_summary=True)
    full.update(preds, targets)
    res = full.compute()
    for iou_index, thr in ((0, 0.5), (5, 0.75)):
        single = MeanAveragePrecision(iou_thresholds=[thr])
        single.update(preds, targets)
        ref = single.compute()
        ours = per_size_ap_at_iou(res, iou_index)
        assert [ours[k] for k in ("small", "medium", "large")] == pytest.approx(
            [ref[f"map_{k}"].item() for k in ("small", "medium", "large")], abs=1e-6)
    every = [per_size_ap_at_iou(res, t) for t in range(10)]
    for k in ("small", "medium", "large"):
        assert sum(e[k] for e in every) / 10 == pytest.approx(res[f"map_{k}"].item(), abs=1e-6)
    assert per_size_ap_at_iou(res, 0) != per_size_ap_at_iou(res, 5)
