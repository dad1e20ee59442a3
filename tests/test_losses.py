"""The hand-written IoU family against torchvision.ops, and the detection loss's normalisation."""
import pytest
import torch
import torchvision.ops as tvo

from losses import (Assignment, DetectionLoss, box_iou, ciou_loss, diou_loss, giou_loss, iou_loss)


def random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 50 + 1
    return torch.cat([xy, xy + wh], 1).double()


def test_box_iou_matches_torchvision():
    a, b = random_boxes(30, 0), random_boxes(20, 1)
    torch.testing.assert_close(box_iou(a, b), tvo.box_iou(a, b))


def test_box_iou_is_batched():
    a, b = random_boxes(12, 2).view(3, 4, 4), random_boxes(15, 3).view(3, 5, 4)
    out = box_iou(a, b)
    assert out.shape == (3, 4, 5)
    for i in range(3):
        torch.testing.assert_close(out[i], tvo.box_iou(a[i], b[i]))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("ours, theirs", [
    (giou_loss, tvo.generalized_box_iou_loss),
    (diou_loss, tvo.distance_box_iou_loss),
    (ciou_loss, tvo.complete_box_iou_loss),
])
def test_losses_match_torchvision(ours, theirs, reduction):
    pred, target = random_boxes(64, 4), random_boxes(64, 5)
    torch.testing.assert_close(ours(pred, target, reduction), theirs(pred, target, reduction))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_iou_loss_is_one_minus_torchvision_iou(reduction):
    pred, target = random_boxes(64, 6), random_boxes(64, 7)
    expected = 1 - tvo.box_iou(pred, target).diagonal()
    expected = {"none": expected, "mean": expected.mean(), "sum": expected.sum()}[reduction]
    torch.testing.assert_close(iou_loss(pred, target, reduction), expected)


def test_hand_computed_values():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 0, 3, 2]])  # overlap 2, union 6, enclosing box 3x2 = 6
    torch.testing.assert_close(iou_loss(a, b), torch.tensor(1 - 2 / 6))
    torch.testing.assert_close(giou_loss(a, b), torch.tensor(1 - 2 / 6 + 0.0))
    # centres 1 apart, enclosing diagonal^2 = 9 + 4 = 13
    torch.testing.assert_close(diou_loss(a, b), torch.tensor(1 - 2 / 6 + 1 / 13))


@pytest.mark.parametrize("fn", [iou_loss, giou_loss, diou_loss, ciou_loss])
def test_identical_boxes_give_zero(fn):
    boxes = random_boxes(10, 8).float()
    torch.testing.assert_close(fn(boxes, boxes, "none"), torch.zeros(10), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fn", [iou_loss, giou_loss, diou_loss, ciou_loss])
def test_zero_area_boxes_are_finite(fn):
    pred = torch.tensor([[5.0, 5, 5, 5], [0, 0, 0, 10], [3, 3, 3, 3]], requires_grad=True)
    target = torch.tensor([[5.0, 5, 5, 5], [0, 0, 10, 10], [4, 4, 9, 4]])
    loss = fn(pred, target, "sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


def test_bad_reduction_is_rejected():
    with pytest.raises(ValueError, match="reduction"):
        iou_loss(random_boxes(2, 0), random_boxes(2, 1), "avg")


def _assignment(fg, boxes, scores):
    b, a = fg.shape
    return Assignment(fg, torch.zeros(b, a, dtype=torch.long), torch.zeros(b, a, dtype=torch.long), boxes, scores)


def test_detection_loss_empty_image_gives_only_cls_term():
    logits = torch.randn(1, 5, 2, requires_grad=True)
    boxes = torch.rand(1, 5, 4).sort(-1).values
    a = _assignment(torch.zeros(1, 5, dtype=torch.bool), torch.zeros(1, 5, 4), torch.zeros(1, 5, 2))
    out = DetectionLoss()(logits, boxes, a)
    assert out["box"] == 0
    # Nothing to normalise by: divided by max(0, 1) = 1, i.e. the plain BCE sum against zeros.
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="sum")
    torch.testing.assert_close(out["cls"], expected)


def test_detection_loss_weights_box_term_by_target_score():
    pred = torch.tensor([[[0.0, 0, 2, 2], [0, 0, 2, 2]]])
    target = torch.tensor([[[1.0, 0, 3, 2], [0, 0, 2, 2]]])   # IoU loss 2/3 for the first, 0 for the second
    scores = torch.tensor([[[0.5, 0.0], [0.0, 0.0]]])        # only the first is a positive, target score 0.5
    a = _assignment(torch.tensor([[True, False]]), target, scores)
    out = DetectionLoss(box_loss="iou")(torch.zeros(1, 2, 2), pred, a)
    # Σ (loss * weight) / max(Σ targets, 1) = (2/3 * 0.5) / 1
    torch.testing.assert_close(out["box"], torch.tensor(2 / 3 * 0.5))
