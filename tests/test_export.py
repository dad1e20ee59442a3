"""export.py: the shipped file is BN-folded float16 and gives the detections of the checkpoint it came from."""
import json
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from tools import benchmark
import evaluate
from tools import export
from tools import sources
from detector import Detector, model_from_checkpoint
from evaluate import postprocess
from tools.checkpoint import CheckpointError, read_checkpoint


def trained_like_checkpoint(seed: int = 0) -> dict:
    """A checkpoint as train.py writes it, with BN statistics and head weights that are not an init's."""
    torch.manual_seed(seed)
    model = Detector(num_classes=2, pretrained=False, unfreeze=1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    for p in model.head.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return {"model": model.state_dict(), "model_config": model.config, "class_names": ["a", "b"],
            "train_args": {"img_size": 128}, "epoch": 4, "best_map": 0.25, "optimizer": {"state": "big"}}


def test_exported_file_gives_the_checkpoints_detections(tmp_path):
    ckpt = trained_like_checkpoint()
    torch.save(ckpt, tmp_path / "best.pt")
    export.main([str(tmp_path / "best.pt"), str(tmp_path / "weights" / "d.pt")])
    shipped = read_checkpoint(tmp_path / "weights" / "d.pt")
    assert shipped["folded"] and "optimizer" not in shipped
    assert all(t.dtype == torch.float16 for t in shipped["model"].values() if t.is_floating_point())
    assert not any("bn" in k and "running_var" in k for k in shipped["model"])  # no BatchNorm left

    reference, loaded = model_from_checkpoint(ckpt), model_from_checkpoint(shipped)  # both fp32, BN folded
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        (cls_r, boxes_r, *_), (cls_l, boxes_l, *_) = reference(x), loaded(x)
    # float16 storage: about 3 significant digits per weight, so logits and pixel boxes move in the 3rd digit.
    torch.testing.assert_close(cls_l, cls_r, rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(boxes_l, boxes_r, rtol=1e-2, atol=0.2)
    assert not torch.equal(cls_l, cls_r), "float16 storage should round something"
    # The same detections after post-processing: each of the 20 best reference boxes is found again, same class.
    for r, l in zip(postprocess(cls_r, boxes_r), postprocess(cls_l, boxes_l)):
        top = r["boxes"][:20]
        assert len(top) == 20
        iou = box_iou(top, l["boxes"])                                     # (20, N)
        same_class = r["labels"][:20, None] == l["labels"][None, :]
        assert ((iou > 0.99) & same_class).any(dim=1).all()


def test_exported_file_is_a_fraction_of_the_checkpoint(tmp_path):
    ckpt = trained_like_checkpoint()
    torch.save({"model": ckpt["model"], "model_config": ckpt["model_config"]}, tmp_path / "fp32.pt")
    torch.save(export.export_weights(ckpt), tmp_path / "fp16.pt")
    # float16 halves every weight; folding drops the BN tensors on top of that.
    assert (tmp_path / "fp16.pt").stat().st_size < 0.5 * (tmp_path / "fp32.pt").stat().st_size


def test_evaluate_reads_the_exported_file(tmp_path, tiny_dataset):
    ckpt = trained_like_checkpoint()
    torch.save(export.export_weights(ckpt), tmp_path / "d.pt")
    evaluate.main(["--checkpoint", str(tmp_path / "d.pt"), "--data", str(tiny_dataset), "--img-size", "64",
                   "--pr", str(tmp_path / "pr.png")])
    assert (tmp_path / "pr.png").is_file()


def test_an_exported_file_cannot_be_unfolded():
    with pytest.raises(CheckpointError, match="only be evaluated"):
        model_from_checkpoint(export.export_weights(trained_like_checkpoint()), fuse=False)


def test_a_weight_beyond_float16_is_an_error_not_an_inf():
    ckpt = trained_like_checkpoint()
    key = next(k for k in ckpt["model"] if k.endswith("running_var"))
    ckpt["model"][key] = torch.full_like(ckpt["model"][key], 1e-14)  # gamma / sqrt(var + eps) becomes ~3e2..1e5
    ckpt["model"][key.replace("running_var", "weight")].fill_(1e4)
    with pytest.raises(CheckpointError, match="float16"):
        export.export_weights(ckpt)


def test_benchmark_refuses_an_exported_file_with_a_message(tmp_path, tiny_dataset):
    torch.save(export.export_weights(trained_like_checkpoint()), tmp_path / "d.pt")
    with pytest.raises(SystemExit, match="only be evaluated"):
        benchmark.main(["--checkpoint", str(tmp_path / "d.pt"), "--data", str(tiny_dataset), "--sizes", "64"])


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(not sources._is_dataset_root(sources.OFFLINE_STANDIN), reason="needs ../shared's stand-in dataset")
def test_the_shipped_file_gives_the_recorded_numbers(tmp_path):
    """The README's promise: `python evaluate.py --checkpoint weights/detector.pt` gives its row, on any machine."""
    evaluate.main(["--checkpoint", str(REPO / "weights" / "detector.pt"), "--data", str(sources.OFFLINE_STANDIN),
                   "--save-metrics", str(tmp_path / "m.json"), "--pr", str(tmp_path / "pr.png")])
    got = json.loads((tmp_path / "m.json").read_text())
    want = json.loads((REPO / "results" / "headline80" / "detector-test.json").read_text())
    # fp32 on another CPU may move the last digits, nothing more
    for key in ("map", "map_50", "map_75"):
        assert got[key] == pytest.approx(want[key], abs=2e-3), key
    for name, ap in want["ap_per_class"].items():
        assert got["ap_per_class"][name] == pytest.approx(ap, abs=2e-3), name
