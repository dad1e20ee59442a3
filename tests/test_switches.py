"""The improvement switches end to end: the --time budget, mosaic, multi-scale, EMA, the head switches, other
backbones (the schedules' own functions are tested in test_train.py)."""
import csv
import json
import math

import pytest
import torch

import data
import evaluate
import train
from backbone import Backbone
from conftest import make_dataset
from detector import Detector
from tools.augment import multi_scale
from tools.plots import to_uint8_image


class TickingClock:
    """Stands in for train.py's ``time`` module: every ``time.time()`` call moves 0.1 s on, so a ``--time`` run's
    plan depends on the calls (one per step plus two per epoch), not on how busy the machine is."""

    def __init__(self):
        self.now = 0.0

    def time(self) -> float:
        self.now += 0.1
        return self.now


@pytest.mark.slow
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
    ds = data.DetectionDataset(root, "train", data.build_transforms(96, True, "strong"))
    seen = 0
    for epoch in range(3):
        for i in range(len(ds)):
            image, t = ds[epoch, i]
            img = to_uint8_image(image).astype(int)
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


def test_jitter_flag_reaches_every_epoch_and_outlasts_mosaic(tmp_path, monkeypatch):
    built = []
    real = train.build_transforms
    def spy(size, is_train, aug="basic", jitter="light"):
        built.append((is_train, aug, jitter))
        return real(size, is_train, aug, jitter)
    monkeypatch.setattr(train, "build_transforms", spy)
    root = make_dataset(tmp_path / "d", sizes={"train": 8, "validation": 2, "test": 2}, image_size=64)
    train.main(["--data", str(root), "--out", str(tmp_path), "--name", "j", "--workers", "0", "--epochs", "2",
                "--batch-size", "4", "--img-size", "64", "--close-mosaic", "1", "--jitter", "yolov8"])
    per_epoch = [b for b in built if b[0]][1:]   # the first is the loader's placeholder, replaced at epoch 1
    assert per_epoch == [(True, "strong", "yolov8"), (True, "basic", "yolov8")]


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
    """--box-bins trains a distribution head, --head-conv depthwise depthwise-separable branch convs and
    --strides 4 8 16 32 a stride-4 level; the checkpoint rebuilds the same model for evaluation."""
    from detector import load_checkpoint
    root = make_dataset(tmp_path / "data", sizes={"train": 8, "validation": 2, "test": 2}, image_size=64)
    res = train.main(["--data", str(root), "--out", str(tmp_path), "--name", "dfl", "--workers", "0", "--epochs", "1",
                      "--batch-size", "4", "--img-size", "64", "--box-bins", "8", "--head-conv", "depthwise",
                      "--strides", "4", "8", "16", "32"])
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
    assert out.box_logits.shape == (1, 16 * 16 + 84, 4, 8)  # the stride-4 level's 16x16 points come first
    assert model.config["strides"] == (4, 8, 16, 32) and out.strides[:256].eq(4).all()


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
