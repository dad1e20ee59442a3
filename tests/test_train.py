"""train.py: the schedules (LR, assigner warm-up, close mosaic, --time), the optimizer's groups, the loaders, the
step itself; end to end, that it learns synthetic rectangles and that --resume continues exactly."""
import argparse
import csv
import itertools
import json

import pytest
import torch

import data
import train
from conftest import interrupt_then_resume, make_dataset
from detector import Detector
from losses import DetectionLoss
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


# --------------------------------------------------------------------------- schedules
def test_warmup_assigner_switch():
    args = argparse.Namespace(assigner="tal", warmup_assigner_epochs=3, tal_topk=13, tal_alpha=1.0, tal_beta=6.0)
    assert [type(train.assigner_for_epoch(e, args)).__name__ for e in (2, 3)] == [
        "SimpleAssigner", "TaskAlignedAssigner"], "--warmup-assigner-epochs 3: epochs 0, 1, 2 simple, TAL from epoch 3"
    args.assigner = "simple"
    assert type(train.assigner_for_epoch(10, args)).__name__ == "SimpleAssigner"


def test_close_mosaic():
    args = argparse.Namespace(aug="strong", close_mosaic=2, copy_paste=3)
    assert [train.aug_for_epoch(e, 10, args) for e in (0, 7, 8, 9)] == [("strong", 3), ("strong", 3),
                                                                      ("basic", 0), ("basic", 0)], \
        "--close-mosaic 2 of 10 epochs: epochs 8 and 9 (0-based) train without mosaic and copy-paste"
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
    assert train.iters_that_fit(10.0, 100, budget_s=100, max_iters=8000) == 1000
    assert train.iters_that_fit(40.0, 200, budget_s=100, max_iters=8000) == 500    # slower: fewer fit
    assert train.iters_that_fit(70.0, 700, budget_s=50, max_iters=8000) == 700     # never fewer than done
    assert train.iters_that_fit(1.0, 100, budget_s=1000, max_iters=8000) == 8000, "a --time plan never exceeds --epochs"
    assert train.iters_that_fit(10.0, 100, budget_s=105, max_iters=8000) == 1050   # not rounded to epochs


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
            assert decays[id(p)] == (0.05 if p.ndim > 1 else 0.0), \
                f"{name}: weight decay only on conv / linear weights, never on BN weights or biases"
    assert len(rates) == sum(p.requires_grad for p in model.parameters())  # every trainable weight, once


def test_lr_warms_up_then_decays():
    lrs = [train.lr_at(it, total=100, warmup=10) for it in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0), \
        f"warm-up over 10 iterations must give factors 0.1, 0.2, ..., 1.0 ((it + 1) / warmup), got {lrs[:3]} ..."
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(0.05, abs=1e-3), \
        f"the cosine must fall from 1 to final_ratio 0.05, not to 0 (last factor {lrs[-1]:.4f})"
    # Half-way through the cosine the factor is half-way between 1 and the floor: 0.05 + 0.95 / 2.
    assert train.lr_at(55, total=100, warmup=10) == pytest.approx(0.525)
    assert train.lr_at(100, total=100, warmup=10) == train.lr_at(500, total=100, warmup=10) == pytest.approx(0.05)


def test_the_training_loader_shuffles_and_the_others_do_not(tiny_dataset):
    ds = data.DetectionDataset(tiny_dataset, "validation", data.build_transforms(64, False))
    args = train.parse_args(["--batch-size", "4"])
    order = lambda loader: [t["image_id"] for _, targets in loader for t in targets]  # noqa: E731
    shuffled = order(train.make_loader(ds, args, torch.device("cpu"), 0, shuffle_with=torch.Generator().manual_seed(0)))
    plain = order(train.make_loader(ds, args, torch.device("cpu"), 0))
    assert plain == sorted(plain), "validation and test loaders keep the split's order"
    assert sorted(shuffled) == plain and shuffled != plain, "the training loader must shuffle the images every epoch"


def test_persistent_workers_augment_each_epoch_as_the_main_process_does(tiny_dataset):
    """Workers live through the run (``persistent_workers``) and keep the dataset they started with; the epoch
    reaches them with each index (``data.EpochSampler``), so 2 workers give the batches the main process gives,
    epoch after epoch (workers prefetch past an epoch's end: the order must not depend on it), and epoch 2 is
    augmented anew."""
    ds = data.DetectionDataset(tiny_dataset, "train", data.build_transforms(64, True),
                               seed=3)
    args = train.parse_args(["--batch-size", "4"])

    def epochs(workers: int) -> list[list[torch.Tensor]]:
        gen = torch.Generator().manual_seed(0)
        loader = train.make_loader(ds, args, torch.device("cpu"), workers, shuffle_with=gen)
        out = []
        for epoch in range(3):
            loader.sampler.set_epoch(epoch)
            out.append([images for images, _ in itertools.islice(loader, len(loader))])  # as train_one_epoch
        return out

    here, workers = epochs(0), epochs(2)
    for epoch in range(3):
        assert all(torch.equal(a, b) for a, b in zip(here[epoch], workers[epoch])), (
            f"epoch {epoch}: persistent workers augmented differently from the main process; the epoch must travel "
            "with the index ((epoch, i) from EpochSampler), not be set on the dataset the workers copied")
    first, second = (torch.cat(e).sum(dim=(1, 2, 3)).sort().values for e in workers[:2])
    assert not torch.equal(first, second), "epoch 2 in the workers repeated epoch 1's augmentation"


def test_each_step_uses_only_its_own_batchs_gradients(tiny_dataset):
    """Two steps at LR 0 (the weights stay put): the gradient the optimizer sees at step 2 must be batch 2's
    alone, as computed from scratch. Without zero_grad it would be the sum of both batches'."""
    torch.manual_seed(0)
    args = train.parse_args(["--batch-size", "4", "--img-size", "64"])
    model = Detector(2, pretrained=False)
    ds = data.DetectionDataset(tiny_dataset, "validation", data.build_transforms(64, False))
    loader = torch.utils.data.DataLoader(ds, 4, collate_fn=data.collate)   # 4 batches; the plan stops after 2
    batches = list(itertools.islice(loader, 2))
    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(model.head.cls_preds[0].weight.grad.clone())
            return super().step(closure)

    optimizer = Recording([{"params": [p for p in model.parameters() if p.requires_grad], "initial_lr": 0.0}], lr=0.0)
    assigner, criterion = train.assigner_for_epoch(0, args), DetectionLoss()
    update = train.Update(optimizer, torch.amp.GradScaler("cpu", enabled=False), None)
    train.train_one_epoch(model, loader, assigner, criterion, update, train.Plan(0, 2, 1, 4), args, None)
    # Batch 2's gradient from scratch, clipped as the step clips it.
    model.zero_grad()
    images, gt_boxes, gt_labels, gt_mask = train.batch_to(torch.device("cpu"), *batches[1], 0.0)
    out = model(images)
    a = assigner(out.cls_logits.detach().sigmoid(), out.boxes.detach(), out.points, out.strides, gt_labels, gt_boxes,
                 gt_mask)
    criterion(out.cls_logits, out.boxes, a, out.box_logits, out.points, out.strides)["total"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
    assert len(seen) == 2
    torch.testing.assert_close(seen[1], model.head.cls_preds[0].weight.grad, msg=lambda m: (
        "the gradient of step 2 is not batch 2's own: zero the gradients before each backward\n" + m))


def test_a_class_still_at_ap_0_is_named_after_the_first_epochs():
    row = {"epoch": 3, "val_map": 0.2, "val_ap_enemyBody": 0.31, "val_ap_enemyHead": 0.0, "val_ap_rare": -1.0}
    assert train.classes_not_learning(row) == ["enemyHead"], "AP exactly 0 after 3 epochs: named (-1: no box)"
    assert train.classes_not_learning({**row, "epoch": 2}) == [], "the first epochs are not judged"
    assert train.classes_not_learning({**row, "val_ap_enemyHead": 0.01}) == []


@pytest.mark.slow
def test_a_gpu_run_resumes_on_the_cpu(tmp_path, capsys):
    """A last.pt saved by a run on a CUDA GPU (its settings say --device cuda:0) continues on a machine without
    one when --device cpu is given with --resume; the first line says what changed and what was ignored."""
    root = make_dataset(tmp_path / "data", sizes={"train": 8, "validation": 4, "test": 4}, image_size=64)
    train.main(run_args(root, tmp_path, "--epochs", "2", "--batch-size", "4", "--img-size", "64", "--name", "gpu"))
    last = tmp_path / "gpu" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    ckpt["train_args"] |= {"device": "cuda:0", "workers": 4}   # as the GPU run saved it
    ckpt["epoch"], ckpt["step"], ckpt["history"] = 0, 2, ckpt["history"][:1]  # stopped after epoch 1
    torch.save(ckpt, last)
    capsys.readouterr()
    train.main(["--resume", str(last), "--device", "cpu", "--workers", "0", "--lr", "0.1"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("[device] cpu: training "), first
    assert "resumed with --device cpu (was cuda:0), --workers 0 (was 4)" in first and "ignored --lr" in first, first
    rows = list(csv.DictReader(open(tmp_path / "gpu" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_steps_the_fp16_scaler_skips_are_counted_and_leave_the_ema_alone(tiny_dataset):
    """A loss scale of 2^127 makes every fp16 gradient overflow: the scaler skips both steps (and halves its
    scale each time). They must be counted as skipped, and the EMA must not average a step that did not happen."""
    torch.manual_seed(0)
    args = train.parse_args(["--batch-size", "4", "--img-size", "64"])
    model = Detector(2, pretrained=False)
    ds = data.DetectionDataset(tiny_dataset, "validation", data.build_transforms(64, False))
    loader = torch.utils.data.DataLoader(ds, 4, collate_fn=data.collate)
    ema = train.ModelEmaV3(model, decay=0.5)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
    update = train.Update(train.make_optimizer(model, 1e-3, 0.05), scaler, ema)
    stats = train.train_one_epoch(model, loader, train.assigner_for_epoch(0, args), DetectionLoss(), update,
                                  train.Plan(0, 2, 1, 4), args, torch.float16)
    assert scaler.get_scale() == 2.0 ** 125, "both steps overflowed"
    assert stats["skipped"] == 2 and stats["steps"] == 2, f"skipped steps not counted: {stats}"
    for k, v in ema.module.state_dict().items():
        assert torch.equal(v, before[k]), f"the EMA moved on a skipped step ({k})"


def test_the_gradient_clip_sees_the_true_gradients_under_fp16(tiny_dataset, monkeypatch):
    """With the fp16 loss scaler on, the clip must see the unscaled gradients (scaler.unscale_ first): the norm it
    measures equals the norm of the same step without a scaler, not 2^10 times it."""
    norms, real = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, **kw: norms.append(real(params, **kw)))
    args = train.parse_args(["--batch-size", "4", "--img-size", "64"])
    ds = data.DetectionDataset(tiny_dataset, "validation", data.build_transforms(64, False))
    loader = torch.utils.data.DataLoader(ds, 4, collate_fn=data.collate)
    for enabled in (False, True):
        torch.manual_seed(0)
        model = Detector(2, pretrained=False)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, enabled=enabled)
        update = train.Update(train.make_optimizer(model, 1e-3, 0.05), scaler, None)
        train.train_one_epoch(model, loader, train.assigner_for_epoch(0, args), DetectionLoss(), update,
                              train.Plan(0, 1, 1, 4), args, torch.float16)
    plain, scaled = (float(n) for n in norms)
    assert scaled == pytest.approx(plain, rel=1e-3), (f"the clip saw a gradient norm of {scaled:.4g} with the scaler "
                                                      f"and {plain:.4g} without: unscale_ before clipping")
