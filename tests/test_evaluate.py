"""evaluate.py: post-processing (NMS, Soft-NMS against its hard limit (= NMS), box voting, flip TTA and WBF) on
hand-built cases; the outputs other tools read (COCO JSON scored by pycocotools against the dataset's own
annotations, boxes drawn on the user's own non-square files, both in the image's own pixels); and the
localisation readings of tools/metrics.py and tools/diagnose.py."""
import json
import math
from collections import Counter

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

import evaluate
from conftest import CARD, write_split
from data import DetectionDataset, build_transforms
from evaluate import box_voting, detect, fuse_passes, postprocess, soft_nms, to_coco_json
from tools import coco_check
from tools.outputs import read_images


def test_coco_json_is_xywh_with_the_datasets_category_ids():
    """One detection of model class 0 at xyxy [10, 20, 40, 60] in image 1007: COCO's results format wants
    bbox [x, y, w, h] = [10, 20, 30, 40] and the dataset's 1-based category id 1."""
    det = {"image_id": 1007, "boxes": torch.tensor([[10.0, 20, 40, 60]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([0])}
    (row,) = to_coco_json([det])
    assert row["bbox"] == [10, 20, 30, 40], f"COCO bbox must be [x, y, w, h], got {row['bbox']} for xyxy [10, 20, 40, 60]"
    assert row["category_id"] == 1, (f"model class 0 is the dataset's category 1 (RF100 categories are 1-based), "
                                     f"got {row['category_id']}")
    assert row["image_id"] == 1007 and row["score"] == pytest.approx(0.9)


def test_nms_is_class_aware():
    """Two boxes overlapping at IoU 0.8: of different classes both stay (a head and a body may overlap), of the
    same class the weaker one goes. As torchvision's batched_nms."""
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 8]]])
    for labels, kept in (((0, 1), 2), ((1, 1), 1)):
        logits = torch.full((1, 2, 2), -20.0)
        logits[0, 0, labels[0]], logits[0, 1, labels[1]] = 3.0, 2.0
        det = postprocess(logits, boxes, iou_thresh=0.6)[0]
        assert len(det["boxes"]) == kept, (
            f"classes {labels}: {len(det['boxes'])} boxes kept, expected {kept}: NMS must only suppress boxes of "
            "the same class (torchvision.ops.batched_nms)")


def test_every_anchor_class_pair_above_the_threshold_is_a_candidate():
    """One anchor scoring 0.9 for class 0 and 0.6 for class 1 gives two detections, one per class (COCO
    practice: the second class can still be right, and it only adds recall below the first)."""
    logits = torch.full((1, 3, 2), -20.0)
    logits[0, 1] = torch.logit(torch.tensor([0.9, 0.6]))
    det = postprocess(logits, torch.tensor([[[0.0, 0, 4, 4], [10, 10, 30, 30], [50, 50, 60, 60]]]))[0]
    assert sorted(zip(det["labels"].tolist(), det["scores"].tolist())) == [(0, pytest.approx(0.9)), (1, pytest.approx(0.6))], \
        "each (anchor, class) pair above score_thresh is a candidate, not only each anchor's best class"


def test_soft_nms_gaussian_decay():
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]])
    scores, labels = torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long)
    keep, new = soft_nms(boxes, scores, labels, sigma=0.5)
    iou = torchvision.ops.box_iou(boxes[:1], boxes[1:2])[0, 0]
    out = dict(zip(keep.tolist(), new.tolist()))
    assert out[0] == pytest.approx(0.9) and out[2] == pytest.approx(0.7)  # disjoint box untouched
    assert out[1] == pytest.approx(0.8 * math.exp(-iou.item() ** 2 / 0.5)), \
        "Gaussian Soft-NMS decays an overlapping score by exp(-IoU^2 / sigma) (Soft-NMS eq. 3)"


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
    torch.testing.assert_close(det["boxes"], torch.tensor([[5.0, 0, 6, 4]]), msg=lambda m: (
        "a box of the flipped pass maps back as x1' = W - x2, x2' = W - x1 (corners swap sides)\n" + m))


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
                               ((0.9 * boxes[0] + 0.3 * boxes[1]) / 1.2)[None], msg=lambda m: (
        "a kept box moves to the score-weighted mean of the same-class candidates overlapping it\n" + m))


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


def test_side_errors_hand_computed():
    from tools.diagnose import side_errors
    gt = torch.tensor([[10.0, 10, 30, 50], [100, 100, 110, 110]])
    det = {"gt_boxes": gt, "gt_labels": torch.tensor([0, 1]),
           "boxes": torch.tensor([[8.0, 12, 31, 50], [10, 10, 30, 50], [100, 100, 110, 110], [60, 60, 70, 70]]),
           "scores": torch.tensor([0.9, 0.2, 0.9, 0.9]),       # the exact twin of GT 0 scores below min_score
           "labels": torch.tensor([0, 0, 0, 1])}               # GT 1's only class-1 detection does not overlap it
    (row,) = side_errors([det], min_score=0.3)
    assert row["label"] == 0 and row["size"] == "small"
    # outward positive: left 10 - 8, top 10 - 12, right 31 - 30, bottom 50 - 50; over w = 20, h = 40
    np.testing.assert_allclose(row["px"], [2, -2, 1, 0])
    np.testing.assert_allclose(row["frac"], [0.1, -0.05, 0.05, 0.0])
    assert row["iou"] == pytest.approx(torchvision.ops.box_iou(gt[:1], det["boxes"][:1]).item())


def test_level_counts_cover_every_gt(tiny_dataset):
    from data import DetectionDataset, build_transforms, collate
    from detector import Detector
    from assign import TaskAlignedAssigner
    from tools.diagnose import level_counts, size_name
    torch.manual_seed(0)
    model = Detector(2, pretrained=False).eval()
    names = ["box-red", "box-blue"]
    # A 256 px network frame for 128 px images: each box's area grows 4x, so sizes taken in the network frame
    # would move some GTs up a COCO size; the counts must use the image's own pixels, as COCO does.
    ds = DetectionDataset(tiny_dataset, "validation", build_transforms(256, False))
    expected = Counter((names[label], size_name(torch.from_numpy(box)))
                       for r in ds.records for box, label in zip(r.boxes, r.labels))
    doubled = Counter((names[label], size_name(torch.from_numpy(box) * 2))
                      for r in ds.records for box, label in zip(r.boxes, r.labels))
    assert doubled != expected                 # the case tells the two frames apart
    counts, positives, survivors = level_counts(model, torch.utils.data.DataLoader(ds, 4, collate_fn=collate),
                                                names, TaskAlignedAssigner(topk=5))
    assert counts == expected
    for key, n in counts.items():
        assert set(positives[key]) <= {8, 16, 32} and 0 < sum(positives[key].values()) <= 5 * n  # the given top-k
        assert sum(survivors[key].values()) <= n  # at most one matched survivor per GT


# Two non-square frame sizes (W, H); at 64 px both letterboxes round a side (42.67 -> 43, 38.4 -> 38).
FRAMES = [(96, 64), (48, 80)]


def grey_of(image: torch.Tensor) -> int:
    """The background grey level of a (3, S, S) network input, read at its top-left pixel
    (the letterbox pads bottom/right, so that pixel is always the image's own)."""
    return int(image[0, 0, 0])


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
    ds = DetectionDataset(frames, "test", build_transforms(64, False))
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
    assert ours == pytest.approx(1.0), (f"a perfect detector scored mAP {ours:.3f}: evaluate must map the boxes "
                                        "back to each image's own pixels (data.boxes_to_image) before scoring")
    rows = json.loads(dets.read_text())
    parquet = pd.read_parquet(next((frames / "data").glob("test-*.parquet")))
    assert {r["image_id"] for r in rows} == set(parquet["image_id"].tolist())          # the dataset's own ids
    assert {r["category_id"] for r in rows} <= {1, 2}, \
        "COCO results must carry the dataset's own 1-based category ids (model class + FIRST_CATEGORY_ID)"
    assert theirs == pytest.approx(1.0), (f"pycocotools scored the --save-json of a perfect detector {theirs:.3f}: "
                                          "COCO results boxes are [x, y, w, h] in the image's own pixels")
    assert len(list((tmp_path / "exact-draw").glob("*.png"))) == 1


def test_printed_map_agrees_with_pycocotools_when_a_box_is_off(frames, tmp_path, monkeypatch):
    ours, theirs, _ = run_evaluate(frames, tmp_path, monkeypatch, shift=3.0, name="shifted")
    assert theirs < 0.99, "the shifted box should cost AP at the strict IoU thresholds"
    assert ours == pytest.approx(theirs, abs=0.005)


class RedFinder(torch.nn.Module):
    """Detects the red rectangle in the network input: the bounding box of its red pixels."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        rgb = images[0].float()                                                  # (3, S, S) pixels 0..255
        ys, xs = torch.nonzero((rgb[0] > 153) & (rgb[1] < 89), as_tuple=True)
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
