"""Crashes, resumes, repeatability, numerical trouble and clear errors for the user."""
import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import torch

import evaluate
from tools.checkpoint import read_checkpoint
from tools.checks import round_to_stride
import train
from conftest import make_dataset

REPO = Path(__file__).resolve().parent.parent


def tiny_args(root, out, name, *extra):
    """On the CPU even where a GPU is: resumes and repeats are compared to the digit (tests/test_cuda.py: GPU)."""
    return ["--data", str(root), "--out", str(out), "--name", name, "--workers", "0", "--img-size", "64",
            "--batch-size", "4", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("small"), sizes={"train": 12, "validation": 4, "test": 4},
                        image_size=64)


@pytest.fixture(scope="module")
def checkpoint(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    train.main(tiny_args(small_data, out, "ck", "--epochs", "1"))
    return out / "ck" / "best.pt"


def read_rows(path):
    return list(csv.DictReader(open(path)))


@pytest.mark.slow
def test_sigkill_mid_training_then_resume(small_data, tmp_path):
    cmd = [sys.executable, "train.py", *tiny_args(small_data, tmp_path, "killed", "--epochs", "8")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(read_rows(metrics)) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: mid-epoch or mid-write
    proc.wait()
    done = len(read_rows(metrics))
    assert 2 <= done < 8, "the run should have been killed part-way"
    # Written atomically: whatever moment the kill hit, last.pt is a complete checkpoint.
    # (metrics.csv is written just after last.pt, so the kill may fall between the two.)
    assert read_checkpoint(str(tmp_path / "killed" / "last.pt"))["epoch"] in (done - 1, done)
    train.main(["--resume", str(tmp_path / "killed" / "last.pt")])
    rows = read_rows(metrics)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    lrs = [float(r["lr"]) for r in rows]
    # One cosine from start to end: LR at the end of each epoch only goes down (a restart would jump back up).
    assert all(a > b for a, b in zip(lrs, lrs[1:])), lrs


@pytest.mark.slow
def test_same_seed_same_losses(small_data, tmp_path):
    for name in ("a", "b"):
        train.main(tiny_args(small_data, tmp_path, name, "--epochs", "2", "--seed", "3"))
    a, b = read_rows(tmp_path / "a" / "metrics.csv"), read_rows(tmp_path / "b" / "metrics.csv")
    assert [(r["loss"], r["loss_cls"], r["loss_box"]) for r in a] == [(r["loss"], r["loss_cls"], r["loss_box"]) for r in b]
    train.main(tiny_args(small_data, tmp_path, "c", "--epochs", "2", "--seed", "4"))
    assert read_rows(tmp_path / "c" / "metrics.csv")[0]["loss"] != a[0]["loss"]


@pytest.mark.slow
def test_non_finite_loss_skips_then_stops(small_data, tmp_path, monkeypatch, capsys):
    class NanLoss(train.DetectionLoss):
        def forward(self, *a):
            out = super().forward(*a)
            return {**out, "total": out["total"] * float("nan")}

    monkeypatch.setattr(train, "DetectionLoss", NanLoss)
    with pytest.raises(SystemExit, match="2 consecutive steps had a non-finite loss.*--no-amp"):
        train.main(tiny_args(small_data, tmp_path, "nan", "--epochs", "1", "--max-bad-steps", "2"))
    assert "step skipped (image ids" in capsys.readouterr().out


@pytest.mark.slow
def test_checkpoint_holds_everything_to_resume(checkpoint):
    ckpt = torch.load(checkpoint, weights_only=False)
    for key in ("model", "train_model", "optimizer", "scaler", "epoch", "step", "rng", "model_config", "class_names",
                "train_args", "best_map", "history"):
        assert key in ckpt, key
    assert not list(checkpoint.parent.glob("*.tmp"))


@pytest.mark.slow
def test_checkpoint_of_another_version_is_a_clear_error_on_resume(checkpoint, tmp_path):
    old = torch.load(checkpoint.parent / "last.pt", weights_only=False)
    del old["planned_iters"], old["train_args"]["box_bins"]  # as a last.pt written before these existed
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(SystemExit, match="cannot be resumed by this train.py .*planned_iters, box_bins"):
        train.main(["--resume", str(tmp_path / "old.pt")])


@pytest.mark.slow
def test_run_dir_not_overwritten(small_data, tmp_path):
    (tmp_path / "exp").mkdir()
    train.main(tiny_args(small_data, tmp_path, "exp", "--epochs", "1"))
    assert (tmp_path / "exp-2" / "last.pt").exists() and not (tmp_path / "exp" / "last.pt").exists()


@pytest.mark.slow
# --------------------------------------------------------------------------- evaluate.py for users
def test_evaluate_cli_metrics_pr_json_and_drawings(checkpoint, small_data, tmp_path, capsys):
    evaluate.main(["--checkpoint", str(checkpoint), "--data", str(small_data), "--save-json", str(tmp_path / "d.json"),
                   "--pr", str(tmp_path / "pr.png"), "--save-images", str(tmp_path / "draw"), "--num", "3"])
    out = capsys.readouterr().out
    assert "mAP@[.5:.95]" in out and "box-red" in out and "box-blue" in out
    assert (tmp_path / "pr.png").stat().st_size > 0 and (tmp_path / "d.json").stat().st_size > 0
    assert "median IoU" in out and (tmp_path / "iou_test.png").stat().st_size > 0
    assert len(list((tmp_path / "draw").glob("*.png"))) == 1


@pytest.mark.slow
def test_evaluate_on_own_image_files(checkpoint, tmp_path, capsys):
    img = (torch.rand(90, 150, 3) * 255).byte().numpy()
    (tmp_path / "a_broken.png").write_bytes(b"not an image")  # unreadable: skipped with a warning
    cv2.imwrite(str(tmp_path / "shot.png"), img)
    evaluate.main(["--checkpoint", str(checkpoint), "--images", str(tmp_path), "--save-images", str(tmp_path / "o")])
    assert [p.name for p in (tmp_path / "o").glob("*.png")] == ["shot_pred.png"]
    assert "a_broken.png is not a readable image" in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.pt", "does not exist"),
    (lambda p: (p / "bad.pt").write_bytes(b"garbage") and p / "bad.pt", "corrupt"),
    (lambda p: torch.save({"x": 1}, p / "other.pt") or p / "other.pt", "not a checkpoint written by train.py"),
])
def test_bad_checkpoint_is_a_clear_error(tmp_path, make, message, small_data):
    with pytest.raises(SystemExit, match=message):
        evaluate.main(["--checkpoint", str(make(tmp_path)), "--data", str(small_data)])


@pytest.mark.slow
def test_checkpoint_from_other_class_count(checkpoint, tmp_path):
    other = make_dataset(tmp_path, sizes={"train": 1, "validation": 1, "test": 1}, image_size=64)
    (other / "README.md").unlink()  # no card: falls back to Halo's 4 classes
    with pytest.raises(SystemExit, match="trained for 2 classes"):
        evaluate.main(["--checkpoint", str(checkpoint), "--data", str(other)])


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(checkpoint, small_data, tmp_path):
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        evaluate.main(["--checkpoint", str(checkpoint), "--device", "cuda"])
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        train.main(tiny_args(small_data, tmp_path, "cuda", "--device", "cuda"))


def test_image_size_rounded_up_with_a_message(capsys):
    assert round_to_stride(100) == 128 and round_to_stride(416) == 416
    assert "not a multiple" in capsys.readouterr().out
