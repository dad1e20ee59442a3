"""TAL and the simple assigner on hand-built cases."""
import pytest
import torch

from assign import SimpleAssigner, TaskAlignedAssigner, target_stats
from head import make_anchor_points
from assign import Assignment

# A 64x64 image: stride 8 (8x8), 16 (4x4) and 32 (2x2) points -> A = 84.
POINTS, STRIDES = make_anchor_points([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
A = len(POINTS)


def pred_boxes_around_points(half=6.0, batch=1):
    """Every anchor predicts a square box of side 2*half centred on itself."""
    return torch.cat([POINTS - half, POINTS + half], -1)[None].repeat(batch, 1, 1)


def gts(boxes, labels):
    """One image's GT list -> padded (1, M, ...) tensors."""
    return (torch.tensor([labels]), torch.tensor([boxes], dtype=torch.float), torch.ones(1, len(boxes), dtype=torch.bool))


def inside(box):
    x, y = POINTS[:, 0], POINTS[:, 1]
    return (x > box[0]) & (x < box[2]) & (y > box[1]) & (y < box[3])


ASSIGNERS = [TaskAlignedAssigner(topk=5), SimpleAssigner(topk=5)]


@pytest.mark.parametrize("assigner", ASSIGNERS)
def test_positives_lie_inside_their_gt_and_topk_is_respected(assigner):
    box = [4.0, 4.0, 44.0, 36.0]
    labels, boxes, mask = gts([box], [1])
    a = assigner(torch.full((1, A, 2), 0.5), pred_boxes_around_points(), POINTS, STRIDES, labels, boxes, mask)
    fg = a.fg_mask[0]
    assert 0 < fg.sum() <= 5
    assert not (fg & ~inside(box)).any(), "an anchor outside every GT became positive"
    assert (a.target_labels[0][fg] == 1).all()
    torch.testing.assert_close(a.target_boxes[0][fg], torch.tensor([box]).expand(int(fg.sum()), 4))
    assert (a.target_scores[0][~fg] == 0).all() and (a.target_scores[0][fg][:, 0] == 0).all()


@pytest.mark.parametrize("assigner", ASSIGNERS)
def test_padded_gts_get_nothing_and_empty_batch_is_background(assigner):
    labels, boxes, mask = gts([[0.0, 0, 64, 64]], [0])
    mask[:] = False  # the only GT is padding
    a = assigner(torch.rand(1, A, 2), pred_boxes_around_points(), POINTS, STRIDES, labels, boxes, mask)
    assert not a.fg_mask.any() and (a.target_scores == 0).all()
    a = assigner(torch.rand(1, A, 2), pred_boxes_around_points(), POINTS, STRIDES,
                 torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool))
    assert not a.fg_mask.any()


@pytest.mark.parametrize("assigner", ASSIGNERS)
def test_tiny_gt_gets_its_nearest_anchor(assigner):
    box = [9.0, 9.0, 11.0, 11.0]  # 2x2 px: no anchor point lies strictly inside
    assert not inside(box).any()
    labels, boxes, mask = gts([box], [0])
    a = assigner(torch.rand(1, A, 2), pred_boxes_around_points(), POINTS, STRIDES, labels, boxes, mask)
    fg = a.fg_mask[0]
    assert fg.sum() == 1
    nearest = (POINTS - 10).norm(dim=1).argmin()
    assert fg[nearest]


def test_4px_gt_gets_at_least_one_positive():
    labels, boxes, mask = gts([[30.0, 30.0, 34.0, 34.0]], [1])
    a = TaskAlignedAssigner()(torch.rand(1, A, 2), pred_boxes_around_points(), POINTS, STRIDES, labels, boxes, mask)
    assert a.fg_mask.sum() >= 1


def test_conflict_goes_to_the_higher_iou_gt_among_those_that_selected_it():
    # Anchor (20, 20) (stride 8) lies inside both GTs. Its predicted box equals GT 1 exactly.
    gt0, gt1 = [0.0, 0.0, 40.0, 40.0], [14.0, 14.0, 26.0, 26.0]
    labels, boxes, mask = gts([gt0, gt1], [0, 0])
    pred = pred_boxes_around_points(half=2.0)
    k = int(((POINTS - 20).norm(dim=1)).argmin())
    pred[0, k] = torch.tensor(gt1)
    scores = torch.full((1, A, 2), 0.5)
    a = TaskAlignedAssigner(topk=13)(scores, pred, POINTS, STRIDES, labels, boxes, mask)
    assert a.fg_mask[0, k] and a.gt_index[0, k] == 1
    # With GT 1 unable to select it (topk=1 and a better anchor for GT 1), anchor k must go to GT 0
    # even though its IoU with GT 1 is higher: only GTs that selected the anchor compete.
    pred2 = pred.clone()
    other = int(((POINTS - torch.tensor([20.0, 20.0])).norm(dim=1) + (STRIDES != 16) * 1e3).argmin())
    pred2[0, other] = torch.tensor(gt1)      # a second, equally good anchor for GT 1 ...
    scores2 = scores.clone()
    scores2[0, other] = 0.9                  # ... with a higher score, so GT 1's top-1 is `other`
    scores2[0, k] = 0.9
    pred2[0, k] = torch.tensor([1.0, 1.0, 39.0, 39.0])  # k fits GT 0 well, GT 1 still overlaps it
    a = TaskAlignedAssigner(topk=1)(scores2, pred2, POINTS, STRIDES, labels, boxes, mask)
    assert a.fg_mask[0, other] and a.gt_index[0, other] == 1
    assert a.fg_mask[0, k] and a.gt_index[0, k] == 0


def test_conflict_uses_iou_not_order():
    # Same two GTs in the opposite order: the winner is decided by IoU, not by GT index.
    gt0, gt1 = [14.0, 14.0, 26.0, 26.0], [0.0, 0.0, 40.0, 40.0]
    labels, boxes, mask = gts([gt0, gt1], [0, 0])
    pred = pred_boxes_around_points(half=2.0)
    k = int(((POINTS - 20).norm(dim=1)).argmin())
    pred[0, k] = torch.tensor(gt0)
    a = TaskAlignedAssigner(topk=13)(torch.full((1, A, 2), 0.5), pred, POINTS, STRIDES, labels, boxes, mask)
    assert a.fg_mask[0, k] and a.gt_index[0, k] == 0


def test_alpha_beta_roles():
    """Two candidates: one with a high score but a poor box, one with a low score but a good box.
    A large beta (IoU exponent) must prefer the good box; a large alpha (score exponent) the high score."""
    box = [0.0, 0.0, 32.0, 32.0]
    labels, boxes, mask = gts([box], [0])
    pred = pred_boxes_around_points(half=1.0)
    i_good = int((POINTS - 12).norm(dim=1).argmin())
    i_conf = int((POINTS - 20).norm(dim=1).argmin())
    pred[0, i_good] = torch.tensor([1.0, 1.0, 31.0, 31.0])   # IoU ~0.88
    pred[0, i_conf] = torch.tensor([8.0, 8.0, 24.0, 24.0])   # IoU 0.25
    scores = torch.full((1, A, 2), 0.01)
    scores[0, i_good, 0], scores[0, i_conf, 0] = 0.2, 0.9
    by_iou = TaskAlignedAssigner(topk=1, alpha=1.0, beta=6.0)(scores, pred, POINTS, STRIDES, labels, boxes, mask)
    by_score = TaskAlignedAssigner(topk=1, alpha=6.0, beta=1.0)(scores, pred, POINTS, STRIDES, labels, boxes, mask)
    assert by_iou.fg_mask[0, i_good] and not by_iou.fg_mask[0, i_conf]
    assert by_score.fg_mask[0, i_conf] and not by_score.fg_mask[0, i_good]


def test_target_score_is_normalised_alignment():
    """t_hat = t / max t * max IoU per GT: the best-aligned positive targets the GT's best IoU."""
    box = [0.0, 0.0, 32.0, 32.0]
    labels, boxes, mask = gts([box], [1])
    pred = pred_boxes_around_points(half=4.0)
    scores = torch.rand(1, A, 2, generator=torch.Generator().manual_seed(0))
    a = TaskAlignedAssigner(topk=4, alpha=0.5)(scores, pred, POINTS, STRIDES, labels, boxes, mask)
    fg = a.fg_mask[0]
    from losses import box_iou
    iou = box_iou(boxes[0], pred[0])[0][fg]
    t = scores[0, fg, 1] ** 0.5 * iou ** 6
    torch.testing.assert_close(a.target_scores[0, fg, 1], t / t.max() * iou.max())


def test_batch_of_two_images_with_different_gt_counts():
    boxes = torch.tensor([[[0.0, 0, 32, 32], [32, 32, 64, 64]], [[8.0, 8, 56, 56], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 1], [1, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    scores = torch.rand(2, A, 2, generator=torch.Generator().manual_seed(1))
    a = TaskAlignedAssigner(topk=3)(scores, pred_boxes_around_points(batch=2), POINTS, STRIDES, labels, boxes, mask)
    # Same result as assigning each image alone (no leakage across the batch).
    for i in range(2):
        m = int(mask[i].sum())
        single = TaskAlignedAssigner(topk=3)(scores[i:i + 1], pred_boxes_around_points(), POINTS, STRIDES,
                                             labels[i:i + 1, :m], boxes[i:i + 1, :m], mask[i:i + 1, :m])
        assert torch.equal(single.fg_mask[0], a.fg_mask[i])
        torch.testing.assert_close(single.target_scores[0], a.target_scores[i])
    assert set(a.gt_index[1][a.fg_mask[1]].tolist()) == {0}
    assert a.fg_mask[0].sum() <= 6 and a.fg_mask[1].sum() <= 3


def test_simple_assigner_priors_are_squares_of_five_strides_on_their_points():
    priors = SimpleAssigner().prior_boxes(POINTS, STRIDES)                    # (A, 4)
    torch.testing.assert_close(priors[:, 2:] - priors[:, :2], 5 * STRIDES[:, None].expand(-1, 2))
    torch.testing.assert_close((priors[:, :2] + priors[:, 2:]) / 2, POINTS)


def test_target_stats_hand_computed():
    # image 0: GT 0 has positives with targets 0.5, 0.5, 0 (3 positives, mass 1, effective (1)^2 / 0.5 = 2);
    #          GT 1 is padding. image 1: GT 0 has one positive with target 0.3 (effective 1), GT 1 none.
    fg = torch.tensor([[True, True, True, False], [False, True, False, False]])
    gt_index = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 0]])
    scores = torch.tensor([[0.5, 0.5, 0.0, 0.9], [0.0, 0.3, 0.0, 0.0]])[..., None]  # (B, A, C=1); bg 0.9 ignored
    a = Assignment(fg, gt_index, torch.zeros_like(gt_index), torch.zeros(2, 4, 4), scores * fg[..., None])
    gt_mask = torch.tensor([[True, False], [True, True]])
    stats = target_stats(a, gt_mask)
    assert stats == {"gts": 3, "positives": 4.0, "mass": pytest.approx(1.3), "effective": pytest.approx(3.0)}
