"""End to end: train.py on synthetic rectangles learns to find them; --resume continues exactly."""
import csv
import json

import pytest
import torch

import train
from conftest import interrupt_then_resume, make_dataset
from tools.device import Precision
from tools.run import new_run_dir


def run_args(root, out, *extra):
    """No --workers: these runs take train.py's default (no loader workers on CPU, tools.device.default_workers).
    On the CPU even where a GPU is: the resume checks compare to the digit, and cuDNN may pick other kernels
    from run to run (tests/test_cuda.py covers the GPU)."""
    return ["--data", str(root), "--out", str(out), "--seed", "0", "--device", "cpu", *extra]


@pytest.mark.slow
def test_training_finds_rectangles(tiny_dataset, tmp_path):
    """~200 optimiser steps on 48 images: the loss must fall clearly and test mAP50 be far above chance."""
    res = train.main(run_args(tiny_dataset, tmp_path, "--epochs", "34", "--batch-size", "8", "--img-size", "128",
                              "--val-every", "17", "--name", "e2e"))
    rows = list(csv.DictReader(open(tmp_path / "e2e" / "metrics.csv")))
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.5 * first, f"loss fell only from {first} to {last}"
    assert res["map_50"] > 0.6, f"test mAP50 {res['map_50']:.3f}"
    for name in ("last.pt", "best.pt", "loss.png", "map.png", "pr.png"):
        assert (tmp_path / "e2e" / name).is_file()
    summary = json.loads((tmp_path / "e2e" / "test_results.json").read_text())
    assert summary["map_50"] == pytest.approx(float(res["map_50"])) and summary["epochs"] == 34
    assert set(summary["ap_per_class"]) == {"box-red", "box-blue"}


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", sizes={"train": 16, "validation": 4, "test": 4}, image_size=64)
    common = ["--epochs", "3", "--batch-size", "8", "--img-size", "64"]
    train.main(run_args(root, tmp_path, *common, "--name", "full"))
    # The same run, interrupted right after epoch 2 was saved, then resumed: epoch 3 must be exactly the
    # uninterrupted run's epoch 3 (LR schedule, data order, weights).
    saved = interrupt_then_resume(monkeypatch, run_args(root, tmp_path, *common, "--name", "cut"), stop_after=2)
    assert saved["epoch"] == 1
    full = list(csv.DictReader(open(tmp_path / "full" / "metrics.csv")))
    cut = list(csv.DictReader(open(tmp_path / "cut" / "metrics.csv")))
    assert len(cut) == 3
    for a, b in zip(full, cut):
        for key in ("lr", "loss", "loss_cls", "loss_box", "val_map"):
            assert a[key] == b[key], (key, a, b)


@pytest.mark.slow
def test_fp16_loss_scaler_state_resumes(tmp_path, monkeypatch):
    """A T4's path (fp16 autocast + GradScaler) forced on this CPU: the scaler's state is saved in last.pt and
    a resumed run goes on with it, to the same losses and the same scaler state as an uninterrupted run."""
    monkeypatch.setattr(train, "choose_precision", lambda *a, **k: Precision(torch.float16, None, "fp16 for the test"))
    root = make_dataset(tmp_path / "data", sizes={"train": 16, "validation": 4, "test": 4}, image_size=64)
    common = ["--epochs", "3", "--batch-size", "8", "--img-size", "64"]
    train.main(run_args(root, tmp_path, *common, "--name", "full"))
    saved = interrupt_then_resume(monkeypatch, run_args(root, tmp_path, *common, "--name", "cut"), stop_after=2)
    assert saved["scaler"] and saved["scaler"] != torch.amp.GradScaler("cpu").state_dict()  # 4 steps moved it
    full, cut = (torch.load(tmp_path / n / "last.pt", weights_only=False) for n in ("full", "cut"))
    assert cut["scaler"] == full["scaler"], "a fresh scaler would have restarted its growth count and scale"
    for a, b in zip(full["history"], cut["history"]):
        assert (a["loss"], a["loss_box"]) == (b["loss"], b["loss_box"])


def test_new_run_dir_never_overwrites(tmp_path):
    first = new_run_dir(str(tmp_path), "exp")
    second = new_run_dir(str(tmp_path), "exp")
    assert first.name == "exp" and second.name == "exp-2"


def test_backbone_steps_at_its_fraction_of_the_lr():
    from detector import Detector
    model = Detector(2, pretrained=False, unfreeze=2)
    opt = train.make_optimizer(model, lr=1e-3, weight_decay=0.05, backbone_lr=0.1)
    rates = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert rates[id(p)] == pytest.approx(1e-4 if name.startswith("backbone.") else 1e-3), name
            assert decays[id(p)] == (0.05 if p.ndim > 1 else 0.0), name
    assert len(rates) == sum(p.requires_grad for p in model.parameters())  # every trainable weight, once


def test_lr_warms_up_then_decays():
    lrs = [train.lr_at(it, total=100, warmup=10) for it in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(0.05, abs=1e-3)
    # Half-way through the cosine the factor is half-way between 1 and the floor: 0.05 + 0.95 / 2.
    assert train.lr_at(55, total=100, warmup=10) == pytest.approx(0.525)
    assert train.lr_at(100, total=100, warmup=10) == train.lr_at(500, total=100, warmup=10) == pytest.approx(0.05)
