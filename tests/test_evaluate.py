"""evaluate.py's post-processing: NMS, Soft-NMS against its hard limit (= NMS), box voting, flip TTA and
WBF, each on hand-built cases; and the localisation readings of tools/metrics.py and tools/diagnose.py."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision

from evaluate import box_voting, detect, fuse_passes, postprocess, soft_nms


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
    ds = DetectionDataset(tiny_dataset, "validation", build_transforms(256, False, (0.5,) * 3, (0.5,) * 3))
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
