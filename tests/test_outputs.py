"""Outputs other tools read: COCO json scored by pycocotools against the dataset's own annotations,
and boxes drawn on the user's own (non-square) image files, both in the image's own pixels."""
import json
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

import evaluate
from conftest import CARD, write_split
from data import DetectionDataset, build_transforms
from tools import coco_check
from tools.outputs import read_images

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Two non-square frame sizes (W, H); at 64 px both letterboxes round a side (42.67 -> 43, 38.4 -> 38).
FRAMES = [(96, 64), (48, 80)]


def grey_of(image: torch.Tensor) -> int:
    """The background grey level of a normalised (3, S, S) network input, read at its top-left pixel
    (the letterbox pads bottom/right, so that pixel is always the image's own)."""
    return round(float(image[0, 0, 0] * STD[0] + MEAN[0]) * 255)


def parquet_dataset(root, n_images: int = 6):
    """Non-square PNG frames of two sizes, each with a unique background grey (so a model can tell which
    image it sees), 1-3 boxes of categories 1/2, and image ids that are not 0..n-1."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_images):
        w, h = FRAMES[i % 2]
        img = np.full((h, w, 3), 40 + 30 * i, np.uint8)
        boxes, cats = [], []
        for _ in range(rng.integers(1, 4)):
            bw, bh = rng.integers(8, w // 2), rng.integers(8, h // 2)
            x, y = rng.integers(2, w - bw), rng.integers(2, h - bh)
            boxes.append([float(x), float(y), float(bw), float(bh)])
            cats.append(int(rng.integers(1, 3)))
        png = cv2.imencode(".png", img)[1].tobytes()
        rows.append({"image_id": 1000 + 7 * i, "image": {"bytes": png, "path": f"{i}.png"}, "width": w, "height": h,
                     "objects": {"id": list(range(len(boxes))), "area": [b[2] * b[3] for b in boxes], "bbox": boxes,
                                 "category": cats}})
    for split in ("train", "validation", "test"):
        write_split(root, split, rows)
    (root / "README.md").write_text(CARD)
    return root


class Oracle(torch.nn.Module):
    """A "detector" whose outputs are the ground truth as the network sees it: the evaluation dataset's
    own letterboxed target boxes, looked up by the image's background grey. ``shift`` moves the first box
    of the first image by that many network pixels in x."""

    def __init__(self, dataset, num_classes: int = 2, shift: float = 0.0):
        super().__init__()
        self.backbone = SimpleNamespace(mean=MEAN, std=STD)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.num_classes, self.truth = num_classes, {}
        for i in range(len(dataset)):
            image, t = dataset[i]
            boxes = t["boxes"].clone()                                        # (N, 4) xyxy, network frame
            if i == 0:
                boxes[0, 0::2] += shift
            self.truth[grey_of(image)] = (boxes, t["labels"])

    def forward(self, images):
        anchors = 8  # more than any image has boxes; unused anchors score ~0
        logits = torch.full((len(images), anchors, self.num_classes), -20.0)
        boxes = torch.zeros(len(images), anchors, 4)
        for b, image in enumerate(images):
            gt_boxes, gt_labels = self.truth[grey_of(image)]
            n = len(gt_labels)
            logits[b, torch.arange(n), gt_labels] = 10.0
            boxes[b, :n] = gt_boxes
        return logits, boxes


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return parquet_dataset(tmp_path_factory.mktemp("frames"))


def run_evaluate(frames, tmp_path, monkeypatch, shift: float, name: str):
    """evaluate.py's CLI on the test split at a non-native 64 px with the oracle as the checkpoint's model.
    -> (printed/saved mAP, pycocotools' mAP on the --save-json output)."""
    ds = DetectionDataset(frames, "test", build_transforms(64, False, MEAN, STD))
    oracle = Oracle(ds, shift=shift)
    monkeypatch.setattr(evaluate, "model_from_checkpoint", lambda *a, **k: oracle)
    ckpt = tmp_path / "oracle.pt"
    torch.save({"model_config": {}, "model": {}, "class_names": ["box-red", "box-blue"],
                "train_args": {"img_size": 64}}, ckpt)
    dets, metrics = tmp_path / f"{name}.json", tmp_path / f"{name}-metrics.json"
    evaluate.main(["--checkpoint", str(ckpt), "--data", str(frames), "--save-json", str(dets),
                   "--save-metrics", str(metrics), "--pr", str(tmp_path / "pr.png"),
                   "--save-images", str(tmp_path / f"{name}-draw"), "--num", "2"])
    return json.loads(metrics.read_text())["map"], coco_check.main([str(dets), "--data", str(frames)])[0], dets


def test_save_json_is_scored_by_pycocotools_against_the_datasets_own_boxes(frames, tmp_path, monkeypatch):
    ours, theirs, dets = run_evaluate(frames, tmp_path, monkeypatch, shift=0.0, name="exact")
    assert theirs == pytest.approx(1.0) and ours == pytest.approx(1.0)
    rows = json.loads(dets.read_text())
    parquet = pd.read_parquet(next((frames / "data").glob("test-*.parquet")))
    assert {r["image_id"] for r in rows} == set(parquet["image_id"].tolist())          # the dataset's own ids
    assert {r["category_id"] for r in rows} <= {1, 2}                                  # its own 1-based categories
    assert len(list((tmp_path / "exact-draw").glob("*.png"))) == 1


def test_printed_map_agrees_with_pycocotools_when_a_box_is_off(frames, tmp_path, monkeypatch):
    ours, theirs, _ = run_evaluate(frames, tmp_path, monkeypatch, shift=3.0, name="shifted")
    assert theirs < 0.99, "the shifted box should cost AP at the strict IoU thresholds"
    assert ours == pytest.approx(theirs, abs=0.005)


class RedFinder(torch.nn.Module):
    """Detects the red rectangle in the network input: the bounding box of its red pixels."""

    def __init__(self):
        super().__init__()
        self.backbone = SimpleNamespace(mean=MEAN, std=STD)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        rgb = images[0] * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]   # (3, S, S)
        ys, xs = torch.nonzero((rgb[0] > 0.6) & (rgb[1] < 0.35), as_tuple=True)
        box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        return torch.tensor([[[10.0]]]), box[None, None]


def test_images_boxes_land_on_the_object_in_a_non_square_file(tmp_path):
    bgr = np.full((90, 150, 3), 120, np.uint8)                  # H 90, W 150
    bgr[30:70, 100:130] = (40, 40, 220)                         # red (BGR) rectangle: xyxy [100, 30, 130, 70]
    cv2.imwrite(str(tmp_path / "shot.png"), bgr)
    [(_, rgb)] = read_images([str(tmp_path)])
    det = evaluate.detect_image(RedFinder(), rgb, img_size=128)
    assert rgb.shape == (90, 150, 3)
    torch.testing.assert_close(det["boxes"][0], torch.tensor([100.0, 30, 130, 70]), atol=1.5, rtol=0)
