"""The GPU's path, on a GPU: training steps, an evaluation and a resume with CUDA tensors, in the precision the
policy picks for this card and in the T4's fp16 + GradScaler. Skipped on a machine without CUDA."""
import csv

import pytest
import torch

import evaluate
import train
from conftest import interrupt_then_resume, make_dataset
from tools import device as dev

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory):
    # 8 training images at batch 4: two steps per epoch.
    return make_dataset(tmp_path_factory.mktemp("gpu"), sizes={"train": 8, "validation": 4, "test": 4}, image_size=64)


def run(root, out, name, *extra):
    return ["--data", str(root), "--out", str(out), "--name", name, "--batch-size", "4", "--img-size", "64",
            "--workers", "2", *extra]


@pytest.mark.parametrize("card", ["this GPU", "T4 (fp16 + GradScaler)"])
def test_train_evaluate_resume_on_cuda(gpu_data, tmp_path, monkeypatch, capsys, card):
    if card.startswith("T4"):  # the policy of a capability-7.5 card, run on this one: fp16 kernels, loss scaling
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    expected = dev.choose_precision(torch.device("cuda:0"))
    res = train.main(run(gpu_data, tmp_path, "full", "--epochs", "2"))
    assert capsys.readouterr().out.startswith("[device] cuda:0")
    assert 0 <= float(res["map"]) <= 1
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    assert full["trained_on"].startswith("[device] cuda:0") and ("GradScaler" in full["trained_on"]) == expected.scaler
    assert ("scale" in full["scaler"]) == expected.scaler  # a disabled scaler saves an empty state

    # The same run stopped after epoch 1, then resumed: epoch 2 continues from last.pt on the GPU.
    interrupt_then_resume(monkeypatch, run(gpu_data, tmp_path, "cut", "--epochs", "2"), stop_after=1)
    rows = list(csv.DictReader(open(tmp_path / "cut" / "metrics.csv")))
    full_rows = list(csv.DictReader(open(tmp_path / "full" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [r["steps"] for r in rows] == ["2", "2"]
    # cuDNN may pick other kernels run to run: the same to about 1 %, not to the digit.
    for a, b in zip(rows, full_rows):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-2)

    # evaluate.py on the GPU, BN folded, in the inference precision of the policy.
    evaluate.main(["--checkpoint", str(tmp_path / "cut" / "best.pt"), "--data", str(gpu_data),
                   "--pr", str(tmp_path / "pr.png")])
    out = capsys.readouterr().out
    assert "[device] cuda:0" in out and "mAP@[.5:.95]" in out


@pytest.mark.parametrize("card", ["this GPU", "T4 (fp16 + GradScaler)"])
def test_training_on_cuda_finds_rectangles(tiny_dataset, tmp_path, monkeypatch, card):
    """The CPU end-to-end run of test_train.py (~200 steps on 48 images), on the GPU in its precision: a broken
    half-precision path (NaN, overflow, inference far from fp32) would end near mAP 0, below the CPU run's floor."""
    if card.startswith("T4"):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    res = train.main(["--data", str(tiny_dataset), "--out", str(tmp_path), "--name", "e2e", "--seed", "0",
                      "--epochs", "34", "--batch-size", "8", "--img-size", "128", "--val-every", "17", "--workers", "2"])
    assert res["map_50"] > 0.6, f"test mAP50 {res['map_50']:.3f} on the GPU; the same run on the CPU clears 0.6"
