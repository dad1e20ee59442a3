"""The improvement switches: PAN/CSP neck, QFL/VFL, Soft-NMS/WBF/TTA, Mosaic, multi-scale, EMA, assigner warm-up."""
import argparse
import csv
import json
import math

import pytest
import torch
import torchvision

import data
import evaluate
import train
from backbone import Backbone
from conftest import make_dataset
from detector import Detector
from evaluate import box_voting, detect, fuse_passes, postprocess, soft_nms
from losses import bce_loss, quality_focal_loss, varifocal_loss
from neck import PAN, CSPBlock, build_neck
from tools.augment import multi_scale
from tools.plots import to_uint8_image
from tools.run import iters_that_fit


# --------------------------------------------------------------------------- neck
@pytest.mark.parametrize("kind", ["fpn", "pan"])
@pytest.mark.parametrize("block", ["conv", "csp"])
@pytest.mark.parametrize("channels, size", [([40, 112, 320], 128), ([24, 48, 96], 96), ([64, 128, 256], 320)])
def test_neck_shapes(kind, block, channels, size):
    neck = build_neck(kind, channels, 32, block)
    feats = [torch.randn(2, c, size // s, size // s) for c, s in zip(channels, (8, 16, 32))]
    assert [o.shape for o in neck(feats)] == [torch.Size([2, 32, size // s, size // s]) for s in (8, 16, 32)]


@pytest.mark.parametrize("block", ["conv", "csp"])
def test_pan_gradients_reach_every_level_both_ways(block):
    """PAN's bottom-up path: the coarsest output depends on the finest input (FPN's does not)."""
    neck = PAN([8, 16, 32], 16, block)
    feats = [torch.randn(1, c, s, s, requires_grad=True) for c, s in zip([8, 16, 32], [8, 4, 2])]
    outs = neck(feats)
    for out in outs:
        for f in feats:
            assert torch.autograd.grad(out.sum(), f, retain_graph=True)[0].abs().sum() > 0
    for name, p in neck.named_parameters():
        assert torch.autograd.grad(sum(o.sum() for o in neck(feats)), p)[0] is not None, name


def test_csp_block_splits_and_fuses():
    block = CSPBlock(16, 32)
    assert block(torch.randn(1, 16, 5, 5)).shape == (1, 32, 5, 5)
    assert block.deep[0][0].out_channels == 16 and block.skip[0].out_channels == 16


# --------------------------------------------------------------------------- classification losses
def test_qfl_hand_computed_and_beta0_is_bce():
    x, q = torch.tensor([0.0, 2.0]), torch.tensor([0.5, 0.0])
    p = torch.sigmoid(x)
    expected = torch.stack([-(0.5 * torch.log(p[0]) + 0.5 * torch.log(1 - p[0])) * (0.5 - p[0]).abs() ** 2,
                            -torch.log(1 - p[1]) * p[1] ** 2])
    torch.testing.assert_close(quality_focal_loss(x, q), expected)
    assert quality_focal_loss(torch.tensor([0.0]), torch.tensor([0.5]))[0] == 0  # p = q: nothing to learn
    x, q = torch.randn(50), torch.rand(50)
    torch.testing.assert_close(quality_focal_loss(x, q, beta=0.0), bce_loss(x, q))


def test_vfl_hand_computed():
    x, q = torch.tensor([1.0, -1.0]), torch.tensor([0.8, 0.0])
    p = torch.sigmoid(x)
    pos = -0.8 * (0.8 * torch.log(p[0]) + 0.2 * torch.log(1 - p[0]))
    neg = -0.75 * p[1] ** 2 * torch.log(1 - p[1])
    torch.testing.assert_close(varifocal_loss(x, q), torch.stack([pos, neg]))
    # Negatives with alpha = 1, gamma = 0 are plain BCE.
    x = torch.randn(20)
    torch.testing.assert_close(varifocal_loss(x, torch.zeros(20), alpha=1.0, gamma=0.0), bce_loss(x, torch.zeros(20)))


# --------------------------------------------------------------------------- post-processing
def test_soft_nms_gaussian_decay():
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]])
    scores, labels = torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long)
    keep, new = soft_nms(boxes, scores, labels, sigma=0.5)
    iou = torchvision.ops.box_iou(boxes[:1], boxes[1:2])[0, 0]
    out = dict(zip(keep.tolist(), new.tolist()))
    assert out[0] == pytest.approx(0.9) and out[2] == pytest.approx(0.7)  # disjoint box untouched
    assert out[1] == pytest.approx(0.8 * math.exp(-iou.item() ** 2 / 0.5))


def test_soft_nms_is_class_aware():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    keep, new = soft_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]))
    assert new.tolist() == pytest.approx([0.9, 0.8])


def test_soft_nms_hard_limit_equals_nms():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 40 + 2], 1)
    scores, labels = torch.rand(200, generator=g), torch.randint(0, 3, (200,), generator=g)
    keep, _ = soft_nms(boxes, scores, labels, iou_thresh=0.5, method="hard", score_thresh=0.0, max_det=1000)
    ref = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)
    assert keep.tolist() == ref.tolist()


def test_wbf_fuses_two_passes_to_score_weighted_mean():
    # Pass 1 finds the object at score 0.9 and a second box; pass 2 finds only the object, at 0.6.
    first = {"boxes": torch.tensor([[10.0, 10, 30, 30], [60, 60, 70, 70]]), "scores": torch.tensor([0.9, 0.5]),
             "labels": torch.tensor([0, 0])}
    second = {"boxes": torch.tensor([[12.0, 12, 32, 32]]), "scores": torch.tensor([0.6]), "labels": torch.tensor([0])}
    fused = fuse_passes([first, second], (100, 100))
    mean = (0.9 * first["boxes"][0] + 0.6 * second["boxes"][0]) / 1.5
    torch.testing.assert_close(fused["boxes"][0], mean)
    assert fused["scores"][0].item() == pytest.approx(0.75) and len(fused["boxes"]) == 2
    # Found by one pass of two: same corners, half the score.
    torch.testing.assert_close(fused["boxes"][1], first["boxes"][1])
    assert fused["scores"][1].item() == pytest.approx(0.25)


def test_box_voting_moves_corners_not_scores():
    kept, kept_labels = torch.tensor([[10.0, 10, 30, 30]]), torch.tensor([0])
    boxes = torch.tensor([[10.0, 10, 30, 30], [12, 12, 32, 32], [10, 10, 30, 30], [50, 50, 60, 60]])
    scores, labels = torch.tensor([0.9, 0.3, 0.8, 0.7]), torch.tensor([0, 0, 1, 0])
    # Only same-class overlapping candidates vote: the class-1 twin and the far box do not.
    torch.testing.assert_close(box_voting(kept, kept_labels, boxes, scores, labels),
                               ((0.9 * boxes[0] + 0.3 * boxes[1]) / 1.2)[None])


def test_wbf_keeps_a_strong_object_above_an_isolated_weak_pair():
    """The raw-candidate trap: a 0.8 box with 29 weak neighbours (0.3 -> 0.02) averaged by WBF would
    score 0.18, below an isolated 0.5 / 0.45 pair (0.475). NMS first keeps the ranking, with and without TTA."""
    g = torch.Generator().manual_seed(0)
    strong = torch.tensor([100.0, 100, 200, 200])
    cloud = strong + torch.randint(-6, 7, (29, 4), generator=g).float()         # IoU > 0.8 with the strong box
    pair = torch.tensor([[300.0, 300, 340, 340], [302, 301, 341, 342]])
    boxes = torch.cat([strong[None], cloud, pair])[None]                       # (1, 32, 4)
    scores = torch.cat([torch.tensor([0.8]), torch.linspace(0.3, 0.02, 29), torch.tensor([0.5, 0.45])])
    logits = torch.full((1, 32, 2), -20.0)
    logits[0, :, 0] = torch.logit(scores)
    det = postprocess(logits, boxes, method="vote")[0]
    assert det["scores"][:2].tolist() == pytest.approx([0.8, 0.5])
    assert torchvision.ops.box_iou(det["boxes"][:1], strong[None]).item() > 0.9

    class Cloud(torch.nn.Module):
        """The same outputs in both TTA passes (a flip-symmetric scene)."""
        def forward(self, images):
            w = images.shape[-1]
            flipped = torch.stack([w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0], boxes[..., 3]], -1)
            return logits, boxes if images[0, 0, 0, 0] == 0 else flipped

    images = torch.zeros(1, 3, 512, 512)
    images[..., -1] = 1.0  # marks the flipped pass (its first column is 1)
    det = detect(Cloud(), images, method="wbf", tta=True)[0]
    assert det["scores"][:2].tolist() == pytest.approx([0.8, 0.5])
    torch.testing.assert_close(det["boxes"][0], strong, atol=1e-3, rtol=0)


def test_wbf_without_tta_is_a_clear_error():
    # WBF fuses the outputs of two passes; one pass has nothing to fuse (--nms vote is NMS + box voting).
    with pytest.raises(ValueError, match="flip TTA"):
        detect(torch.nn.Identity(), torch.zeros(1, 3, 32, 32), method="wbf")


@pytest.mark.parametrize("method", ["nms", "soft-nms", "vote"])
def test_postprocess_methods_keep_the_obvious_detection(method):
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 0, 1], logits[0, 1, 1] = 3.0, 2.0  # two overlapping class-1 boxes
    boxes = torch.tensor([[[10.0, 10, 50, 50], [11, 11, 51, 51], [0, 0, 5, 5]]])
    det = postprocess(logits, boxes, method=method)[0]
    assert det["labels"][0] == 1 and det["scores"][0] > 0.85
    assert torchvision.ops.box_iou(det["boxes"][:1], boxes[0, :1])[0, 0] > 0.95


@pytest.mark.parametrize("method", ["nms", "soft-nms", "vote"])
def test_postprocess_methods_with_no_candidate_return_empty(method):
    # An early checkpoint can score every anchor below the threshold on an image: no detection, no crash.
    logits = torch.full((2, 3, 2), -10.0)
    logits[1, 0, 0] = 3.0  # the second image has one detection
    boxes = torch.tensor([[[10.0, 10, 50, 50], [11, 11, 51, 51], [0, 0, 5, 5]]]).repeat(2, 1, 1)
    empty, one = postprocess(logits, boxes, method=method)
    assert [len(empty[k]) for k in ("boxes", "scores", "labels")] == [0, 0, 0]
    assert len(one["boxes"]) == 1 and one["labels"][0] == 0


def test_best_match_ious_hand_computed():
    from tools.metrics import best_match_ious
    det = {"boxes": torch.tensor([[0.0, 0, 10, 5], [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]),
           "scores": torch.tensor([0.9, 0.1, 0.8, 0.9]),  # the exact box scores below min_score: not counted
           "labels": torch.tensor([0, 0, 1, 0]),
           "gt_boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [52, 50, 62, 60], [80, 80, 90, 90]]),
           "gt_labels": torch.tensor([0, 0, 0, 1])}
    per_class = best_match_ious([det], num_classes=2, min_score=0.3)
    # GT 0: half-height box, IoU 0.5. GT 1: only a class-1 box matches it: 0. GT 2: shifted by 2 px, 80/120.
    torch.testing.assert_close(per_class[0], torch.tensor([0.5, 0.0, 80 / 120]))
    torch.testing.assert_close(per_class[1], torch.tensor([0.0]))  # the class-1 box lies elsewhere


def test_tta_flips_boxes_back():
    class Fixed(torch.nn.Module):
        """Predicts the pixel span of the brightest column: a flip-equivariant "detector"."""
        def forward(self, images):
            col = images[0, 0].sum(0).argmax().float()
            return torch.zeros(1, 1, 1), torch.stack([col, col * 0, col + 1, col * 0 + 4])[None, None], None

    images = torch.zeros(1, 3, 8, 32)
    images[..., 5] = 1.0
    # The flipped pass sees the column at 26, predicts [26, 0, 27, 4] and maps it back to [5, 0, 6, 4]: the
    # same box as the plain pass, so NMS leaves one (a box not flipped back would stand apart as a second).
    det = detect(Fixed(), images, tta=True)[0]
    torch.testing.assert_close(det["boxes"], torch.tensor([[5.0, 0, 6, 4]]))


# --------------------------------------------------------------------------- schedules
def test_warmup_assigner_switch():
    args = argparse.Namespace(assigner="tal", warmup_assigner_epochs=3, tal_topk=13, tal_alpha=1.0, tal_beta=6.0)
    assert type(train.assigner_for_epoch(2, args)).__name__ == "SimpleAssigner"
    assert type(train.assigner_for_epoch(3, args)).__name__ == "TaskAlignedAssigner"
    args.assigner = "simple"
    assert type(train.assigner_for_epoch(10, args)).__name__ == "SimpleAssigner"


def test_close_mosaic():
    args = argparse.Namespace(aug="strong", close_mosaic=2, copy_paste=3)
    assert [train.aug_for_epoch(e, 10, args) for e in (0, 7, 8, 9)] == [("strong", 3), ("strong", 3),
                                                                      ("basic", 0), ("basic", 0)]
    args.aug = "basic"  # nothing to close without mosaic: copy-paste stays on to the end
    assert train.aug_for_epoch(9, 10, args) == ("basic", 3)


def test_close_mosaic_default_is_the_last_eighth():
    args = argparse.Namespace(aug="strong", close_mosaic=None, copy_paste=0)
    def first_basic(total):
        return next(e for e in range(total) if train.aug_for_epoch(e, total, args)[0] == "basic")
    assert first_basic(80) == 70    # 10 closing epochs, YOLOv8's value for a long run
    assert first_basic(14) == 12    # a 20-minute run: 2, rounded up from 1.75
    assert first_basic(16) == 14
    assert first_basic(7) == 6      # a 10-minute run still ends on one realistic epoch


def test_time_budget_replans_iterations():
    # 10 s for 100 iterations = 0.1 s each: a 100 s budget holds 1000.
    assert iters_that_fit(10.0, 100, budget_s=100, max_iters=8000) == 1000
    assert iters_that_fit(40.0, 200, budget_s=100, max_iters=8000) == 500    # slower: fewer fit
    assert iters_that_fit(70.0, 700, budget_s=50, max_iters=8000) == 700     # never fewer than done
    assert iters_that_fit(1.0, 100, budget_s=1000, max_iters=8000) == 8000   # never more than --epochs
    assert iters_that_fit(10.0, 100, budget_s=105, max_iters=8000) == 1050   # not rounded to epochs


@pytest.mark.slow
class TickingClock:
    """Stands in for train.py's ``time`` module: every ``time.time()`` call moves 0.1 s on, so a ``--time`` run's
    plan depends on the calls (one per step plus two per epoch), not on how busy the machine is."""

    def __init__(self):
        self.now = 0.0

    def time(self) -> float:
        self.now += 0.1
        return self.now


def test_time_flag_stops_within_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "time", TickingClock())
    root = make_dataset(tmp_path / "d", sizes={"train": 24, "validation": 2, "test": 2}, image_size=64)
    train.main(["--data", str(root), "--out", str(tmp_path), "--name", "t", "--workers", "0", "--epochs", "50",
                "--batch-size", "4", "--img-size", "64", "--time", "0.05"])  # 3 s of training
    ckpt = torch.load(tmp_path / "t" / "last.pt", weights_only=False)
    rows, iters = ckpt["history"], 6  # 24 images / batch 4
    # An epoch is 8 ticks (0.8 s) of training: 3 s hold 6 * 3 / 0.8 = 22.5 -> 22 iterations, 3 whole epochs + 4 steps.
    assert [r["steps"] for r in rows] == [6, 6, 6, 4] and ckpt["planned_iters"] == 22
    assert sum(r["train_s"] for r in rows) <= 3 + max(r["train_s"] for r in rows) and rows[-1]["val_map"] != ""
    # The cosine was re-planned to end at the last iteration: the final LR is at the schedule's floor.
    assert rows[-1]["lr"] == pytest.approx(2e-3 * 0.05), [r["lr"] for r in rows]
    summary = json.loads((tmp_path / "t" / "test_results.json").read_text())
    assert summary["epochs"] == round(22 / iters, 1)


# --------------------------------------------------------------------------- mosaic
def test_mosaic_boxes_inside_and_labels_follow_their_boxes(tmp_path):
    # One rectangle per source image, so a box's centre pixel always shows its own class colour.
    root = make_dataset(tmp_path, sizes={"train": 12, "validation": 1, "test": 1}, image_size=96, max_boxes=1)
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    ds = data.DetectionDataset(root, "train", data.build_transforms(96, True, mean, std, "strong"))
    seen = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            image, t = ds[i]
            img = to_uint8_image(image, mean, std).astype(int)
            for box, label in zip(t["boxes"].tolist(), t["labels"].tolist()):
                x1, y1, x2, y2 = box
                assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
                # The centre pixel of a box carries its class colour (red 0 / blue 1), up to colour jitter.
                r, _, b = img[int((y1 + y2) / 2), int((x1 + x2) / 2)]
                assert (r > b) == (label == 0), (box, label, r, b)
                seen += 1
    assert seen > 20


# --------------------------------------------------------------------------- multi-scale training
def test_multi_scale_boxes_follow_the_pixels():
    """A white square on black: after the resize its box still frames exactly the bright pixels."""
    torch.manual_seed(0)
    images, boxes = torch.zeros(2, 3, 128, 128), torch.tensor([[[32.0, 64.0, 96.0, 96.0]], [[0.0, 0.0, 64.0, 32.0]]])
    for b, (x1, y1, x2, y2) in enumerate(boxes[:, 0].int().tolist()):
        images[b, :, y1:y2, x1:x2] = 1.0
    sides = set()
    for _ in range(20):
        out, out_boxes = multi_scale(images, boxes, 0.5)
        side = out.shape[-1]
        sides.add(side)
        assert out.shape[:2] == (2, 3) and out.shape[-2] == side and side % 32 == 0 and 64 <= side <= 192
        for b in range(2):
            rows, cols = torch.nonzero(out[b, 0] > 0.5, as_tuple=True)   # the square's pixels, threshold at half
            bright = torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()
            torch.testing.assert_close(out_boxes[b, 0], boxes[b, 0] * side / 128)
            assert (bright - out_boxes[b, 0]).abs().max() <= 1, (side, bright, out_boxes[b, 0])
    assert sides == {64, 96, 128, 160, 192}     # every multiple of 32 in [0.5 S, 1.5 S], nothing else


def test_multi_scale_off_and_resumable():
    images, boxes = torch.rand(1, 3, 96, 96), torch.tensor([[[1.0, 2.0, 30.0, 40.0]]])
    assert multi_scale(images, boxes, 0.0) == (images, boxes)
    torch.manual_seed(3)
    state = torch.get_rng_state()          # last.pt saves this generator, so a resumed run draws the same sides
    first = [multi_scale(images, boxes, 0.5)[0].shape[-1] for _ in range(8)]
    torch.set_rng_state(state)
    assert [multi_scale(images, boxes, 0.5)[0].shape[-1] for _ in range(8)] == first and len(set(first)) > 1


@pytest.mark.parametrize("bad", ["1", "-0.1", "x"])
def test_multi_scale_flag_rejects_a_side_that_could_reach_zero(bad, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--multi-scale", bad])
    assert "--multi-scale" in capsys.readouterr().err


def test_multi_scale_flag_trains_at_several_sides(tmp_path, monkeypatch):
    seen = []
    real = train.multi_scale
    def spy(images, boxes, frac):
        out = real(images, boxes, frac)
        seen.append(out[0].shape[-1])      # the side the model trained on
        return out
    monkeypatch.setattr(train, "multi_scale", spy)
    root = make_dataset(tmp_path / "d", sizes={"train": 16, "validation": 2, "test": 2}, image_size=64)
    train.main(["--data", str(root), "--out", str(tmp_path), "--name", "ms", "--workers", "0", "--epochs", "1",
                "--batch-size", "4", "--img-size", "64", "--multi-scale", "0.5"])
    assert len(seen) == 4 and set(seen) <= {32, 64, 96} and len(set(seen)) > 1, seen
    rows = torch.load(tmp_path / "ms" / "last.pt", weights_only=False)["history"]
    assert rows[0]["steps"] == 4 and rows[0]["skipped"] == 0 and rows[0]["val_map"] != ""


@pytest.mark.slow
# --------------------------------------------------------------------------- EMA, other backbones
def test_ema_weights_are_evaluated_and_saved(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", sizes={"train": 8, "validation": 2, "test": 2}, image_size=64)
    train.main(["--data", str(root), "--out", str(tmp_path), "--name", "ema", "--workers", "0", "--epochs", "1",
                "--batch-size", "4", "--img-size", "64", "--ema"])
    ckpt = torch.load(tmp_path / "ema" / "last.pt", weights_only=False)
    key = "head.cls_preds.0.weight"
    torch.testing.assert_close(ckpt["model"][key], ckpt["ema"][key])
    assert not torch.equal(ckpt["model"][key], ckpt["train_model"][key])
    # evaluate.py --raw scores the raw weights instead: the model it builds carries train_model's tensors.
    built = []
    real = evaluate.model_from_checkpoint
    monkeypatch.setattr(evaluate, "model_from_checkpoint", lambda c, *a, **k: built.append(c) or real(c, *a, **k))
    for flags in ([], ["--raw"]):
        evaluate.main(["--checkpoint", str(tmp_path / "ema" / "last.pt"), "--data", str(root),
                       "--pr", str(tmp_path / "pr.png"), *flags])
    assert torch.equal(built[0]["model"][key], ckpt["ema"][key])
    assert torch.equal(built[1]["model"][key], ckpt["train_model"][key])


@pytest.mark.slow
def test_head_switches_train_and_reload(tmp_path):
    """--box-bins trains a distribution head and --head-conv depthwise depthwise-separable branch convs; the
    checkpoint rebuilds the same head for evaluation."""
    from tools.checkpoint import load_checkpoint
    root = make_dataset(tmp_path / "data", sizes={"train": 8, "validation": 2, "test": 2}, image_size=64)
    res = train.main(["--data", str(root), "--out", str(tmp_path), "--name", "dfl", "--workers", "0", "--epochs", "1",
                      "--batch-size", "4", "--img-size", "64", "--box-bins", "8", "--head-conv", "depthwise"])
    assert math.isfinite(res["map"])
    row = next(csv.DictReader(open(tmp_path / "dfl" / "metrics.csv")))
    assert float(row["loss_dfl"]) > 0  # the DFL term is trained and logged
    model, ckpt = load_checkpoint(str(tmp_path / "dfl" / "best.pt"))
    assert ckpt["model_config"]["box_bins"] == 8 and model.head.box_preds[0].out_channels == 4 * 8
    # Depthwise-separable branches: a grouped 3x3 conv, then a 1x1; the default head has only full 3x3 convs.
    def branch_convs(m):
        return [c for c in m.head.box_branches.modules() if isinstance(c, torch.nn.Conv2d)]
    assert ckpt["model_config"]["depthwise_head"] and any(c.groups == c.in_channels > 1 for c in branch_convs(model))
    assert all(c.groups == 1 and c.kernel_size == (3, 3) for c in branch_convs(Detector(num_classes=2, pretrained=False)))
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    assert out.box_logits.shape == (1, 84, 4, 8)


@pytest.mark.parametrize("name, channels", [("efficientnet_b0", [40, 112, 320]), ("resnet18", [128, 256, 512])])
def test_other_backbones_work_offline(name, channels):
    # conftest's ``offline`` fixture: the hub probe says no, so timm is not asked and the init is random.
    with pytest.warns(UserWarning, match="RANDOM INIT"):
        bb = Backbone(name, pretrained=True, unfreeze_last=1)
    assert [f.shape[1] for f in bb(torch.zeros(1, 3, 64, 64))] == channels


def test_other_backbones_load_timms_download_online(monkeypatch):
    """Online, a timm name without a weights file gets timm's own download; the download is replaced here
    by a model whose weights are all 0.5, so the test needs no network and sees where the weights came from."""
    import timm
    from tools import sources
    real = timm.create_model

    def fake_create_model(name, pretrained=False, **kwargs):
        model = real(name, pretrained=False, **kwargs)
        if pretrained:
            for p in model.parameters():
                torch.nn.init.constant_(p, 0.5)
        return model

    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(timm, "create_model", fake_create_model)
    bb = Backbone("resnet18", pretrained=True, unfreeze_last=1)
    assert bb.weights_source == "ImageNet weights from timm's download"
    assert all((p == 0.5).all() for p in bb.body.parameters())
