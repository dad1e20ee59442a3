"""The hand-written IoU family against torchvision.ops, QFL and VFL by hand, and the detection loss."""
import pytest
import torch
import torchvision.ops as tvo

from assign import Assignment
from head import distribution_to_distance
from losses import (DetectionLoss, bce_loss, box_iou, ciou_loss, diou_loss, distribution_focal_loss, giou_loss, iou_loss,
                    quality_focal_loss, varifocal_loss)


def random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 50 + 1
    return torch.cat([xy, xy + wh], 1).double()


def test_box_iou_matches_torchvision():
    a, b = random_boxes(30, 0), random_boxes(20, 1)
    torch.testing.assert_close(box_iou(a, b), tvo.box_iou(a, b), msg=lambda m: (
        "box_iou differs from torchvision.ops.box_iou: IoU = |A n B| / (|A| + |B| - |A n B|), the overlap clamped "
        "at 0 on each axis\n" + m))


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
    torch.testing.assert_close(ours(pred, target, reduction), theirs(pred, target, reduction), msg=lambda m: (
        f"{ours.__name__} differs from torchvision's {theirs.__name__} on random boxes: check the enclosing box C "
        "(min of the top-lefts, max of the bottom-rights), rho^2 / c^2 and the aspect term against the paper\n" + m))


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
    torch.testing.assert_close(out["cls"], expected, msg=lambda m: (
        f"every anchor is classified, background included (target 0): the cls loss runs over all anchors\n{m}"))


def test_detection_loss_weights_box_term_by_target_score():
    pred = torch.tensor([[[0.0, 0, 2, 2], [0, 0, 2, 2]]])
    target = torch.tensor([[[1.0, 0, 3, 2], [0, 0, 2, 2]]])   # IoU loss 2/3 for the first, 0 for the second
    scores = torch.tensor([[[0.5, 0.0], [0.0, 0.0]]])        # only the first is a positive, target score 0.5
    a = _assignment(torch.tensor([[True, False]]), target, scores)
    out = DetectionLoss(box_loss="iou")(torch.zeros(1, 2, 2), pred, a)
    # Σ (loss * weight) / max(Σ targets, 1) = (2/3 * 0.5) / 1
    torch.testing.assert_close(out["box"], torch.tensor(2 / 3 * 0.5), msg=lambda m: (
        f"each positive's box loss is weighted by its soft target (0.5 here)\n{m}"))


def test_dfl_hand_computed():
    # Uniform over 4 bins: every log S_i = -log 4, so the loss is log 4 whatever the target.
    torch.testing.assert_close(distribution_focal_loss(torch.zeros(3, 4), torch.tensor([0.0, 1.3, 2.5])),
                               torch.full((3,), torch.tensor(4.0).log().item()))
    # y = 1.3 sits between bins 1 and 2: -(0.7 log S_1 + 0.3 log S_2).
    logits = torch.tensor([0.5, 2.0, 1.0, -1.0])
    log_p = logits.log_softmax(-1)
    torch.testing.assert_close(distribution_focal_loss(logits, torch.tensor(1.3)), -(0.7 * log_p[1] + 0.3 * log_p[2]),
                               msg=lambda m: f"y = 1.3: the left bin 1 weighs 2 - 1.3 = 0.7, the right bin 2 weighs 0.3\n{m}")
    # Targets beyond the last bin are clamped to n - 1.01: almost all weight on the last bin.
    torch.testing.assert_close(distribution_focal_loss(logits, torch.tensor(9.0)),
                               -(0.01 * log_p[2] + 0.99 * log_p[3]), rtol=1e-5, atol=1e-5)


def test_dfl_minimum_puts_the_expectation_on_the_target():
    """Minimising DFL moves all mass onto the two bins around y = 2.3, 0.7 on bin 2 and 0.3 on bin 3,
    so the expectation is y."""
    logits = torch.zeros(8, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        distribution_focal_loss(logits, torch.tensor(2.3)).backward()
        opt.step()
    p = logits.detach().softmax(-1)
    assert p[2].item() == pytest.approx(0.7, abs=0.01) and p[3].item() == pytest.approx(0.3, abs=0.01)
    assert distribution_to_distance(logits.detach()).item() == pytest.approx(2.3, abs=0.01)


def test_detection_loss_dfl_term():
    """One positive: anchor point (10, 10) at stride 4, target box (6, 8, 14, 20) -> distances (1, 0.5, 1, 2.5) bins."""
    logits = torch.randn(1, 2, 4, 5)
    points, strides = torch.tensor([[10.0, 10.0], [30.0, 30.0]]), torch.tensor([4.0, 4.0])
    target = torch.tensor([[[6.0, 8, 14, 20], [0, 0, 0, 0]]])
    scores = torch.tensor([[[0.5, 0.0], [0.0, 0.0]]])
    a = _assignment(torch.tensor([[True, False]]), target, scores)
    pred = torch.tensor([[[6.0, 8, 14, 20], [0, 0, 1, 1]]])
    out = DetectionLoss(box_weight=3.0, dfl_weight=2.0)(torch.zeros(1, 2, 2), pred, a, logits, points, strides)
    expected = distribution_focal_loss(logits[0, 0], torch.tensor([1.0, 0.5, 1.0, 2.5])).mean() * 0.5 / 1
    torch.testing.assert_close(out["dfl"], expected, msg=lambda m: (
        "the DFL targets are the distances from the anchor point to the box sides in bins, i.e. divided by the "
        f"stride (here 4)\n{m}"))
    torch.testing.assert_close(out["total"], out["cls"] + 3.0 * out["box"] + 2.0 * out["dfl"])
    assert "dfl" not in DetectionLoss()(torch.zeros(1, 2, 2), pred, a)


def test_qfl_hand_computed_and_beta0_is_bce():
    x, q = torch.tensor([0.0, 2.0]), torch.tensor([0.5, 0.0])
    p = torch.sigmoid(x)
    expected = torch.stack([-(0.5 * torch.log(p[0]) + 0.5 * torch.log(1 - p[0])) * (0.5 - p[0]).abs() ** 2,
                            -torch.log(1 - p[1]) * p[1] ** 2])
    torch.testing.assert_close(quality_focal_loss(x, q), expected)
    assert quality_focal_loss(torch.tensor([0.0]), torch.tensor([0.5]))[0] == 0  # p = q: nothing to learn
    x, q = torch.randn(50), torch.rand(50)
    torch.testing.assert_close(quality_focal_loss(x, q, beta=0.0), bce_loss(x, q))


def test_vfl_hand_computed():
    x, q = torch.tensor([1.0, -1.0]), torch.tensor([0.8, 0.0])
    p = torch.sigmoid(x)
    pos = -0.8 * (0.8 * torch.log(p[0]) + 0.2 * torch.log(1 - p[0]))
    neg = -0.75 * p[1] ** 2 * torch.log(1 - p[1])
    torch.testing.assert_close(varifocal_loss(x, q), torch.stack([pos, neg]), msg=lambda m: (
        f"VFL weighs a positive by its quality q and a negative by alpha * p^gamma\n{m}"))
    # Negatives with alpha = 1, gamma = 0 are plain BCE.
    x = torch.randn(20)
    torch.testing.assert_close(varifocal_loss(x, torch.zeros(20), alpha=1.0, gamma=0.0), bce_loss(x, torch.zeros(20)))


def test_detection_loss_is_normalised_by_the_sum_of_soft_targets():
    """Three positives with soft targets 0.9, 0.8 and 0.7: both terms are divided by their sum, 2.4 (YOLOv8,
    PP-YOLOE), not by the number of positives, 3."""
    pred = torch.tensor([[[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2]]])
    target = torch.tensor([[[1.0, 0, 3, 2], [1.0, 0, 3, 2], [1.0, 0, 3, 2]]])    # IoU loss 2/3 each
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.0], [0.7, 0.0]]])
    a = _assignment(torch.tensor([[True, True, True]]), target, scores)
    logits = torch.zeros(1, 3, 2)
    out = DetectionLoss(box_loss="iou")(logits, pred, a)
    expected_box = 2 / 3 * (0.9 + 0.8 + 0.7) / 2.4
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, scores, reduction="sum") / 2.4
    torch.testing.assert_close(out["box"], torch.tensor(expected_box), msg=lambda m: (
        "the box term must be sum(loss * t) / sum(t): normalised by the sum of soft targets (2.4), "
        f"not the number of positives (3)\n{m}"))
    torch.testing.assert_close(out["cls"], bce, msg=lambda m: f"the cls term must be BCE sum / sum(t) = / 2.4\n{m}")
