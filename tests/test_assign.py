"""TAL and the simple assigner on hand-built cases, each with the exact positives it must produce.

A 64x64 image with anchor points at strides 8, 16 and 32. Predicted boxes and scores are set by hand, so
every step's expected outcome can be worked out on paper (the comments do it)."""
import pytest
import torch

from assign import (SimpleAssigner, TaskAlignedAssigner, build_targets, candidates_inside, resolve_conflicts, select_topk,
                    target_stats)
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


def at(x, y, stride=8):
    """Index of the anchor point (x, y) of the given stride."""
    return int(((POINTS - torch.tensor([x, y], dtype=torch.float)).norm(dim=1) + (STRIDES != stride) * 1e3).argmin())


def positives(a, gt=None, image=0):
    """Set of positive anchor indices (of one GT when ``gt`` is given)."""
    fg = a.fg_mask[image] if gt is None else a.fg_mask[image] & (a.gt_index[image] == gt)
    return set(fg.nonzero().flatten().tolist())


def inside(box):
    x, y = POINTS[:, 0], POINTS[:, 1]
    return (x > box[0]) & (x < box[2]) & (y > box[1]) & (y < box[3])


ASSIGNERS = [TaskAlignedAssigner(topk=5), SimpleAssigner(topk=5)]


# --------------------------------------------------------------------------- the five steps, one at a time
def test_step1_candidates_are_points_strictly_inside_a_real_gt():
    points = torch.tensor([[5.0, 5.0], [10.0, 5.0], [15.0, 5.0], [30.0, 30.0]])
    boxes = torch.tensor([[[0.0, 0, 10, 10], [28.0, 28, 29, 29]]])     # GT 1: 1 px, no point inside
    got = candidates_inside(points, boxes, torch.tensor([[True, True]]))
    assert got[0, 0].tolist() == [True, False, False, False], "a point on the box edge (x = 10) is not inside"
    assert got[0, 1].tolist() == [False, False, False, True], "a GT with no point inside gets its nearest point"
    assert not candidates_inside(points, boxes, torch.tensor([[False, False]])).any(), "padded GTs have no candidate"


def test_step3_topk_takes_the_largest_metric_among_candidates_only():
    metric = torch.tensor([[[0.1, 0.5, 0.3, 0.9, 0.2, 0.0]]])
    cand = torch.tensor([[[True, True, True, False, True, True]]])
    assert select_topk(metric, cand, 2)[0, 0].nonzero().flatten().tolist() == [1, 2], \
        "top-2 of the candidates' metric: anchors 1 (0.5) and 2 (0.3); anchor 3 (0.9) is not a candidate"
    assert select_topk(metric[..., :2], cand[..., :2] & torch.tensor([True, False]), 2)[0, 0].tolist() == [True, False], \
        "a GT with fewer candidates than k keeps only its candidates"


def test_step4_conflicts_go_to_the_highest_iou_among_the_selecting_gts():
    pos = torch.tensor([[[True, True, False], [True, False, True]]])       # anchor 0 picked by both GTs
    overlaps = torch.tensor([[[0.3, 0.9, 0.1], [0.6, 0.95, 0.8]]])       # anchor 1: GT 1 did not pick it
    got = resolve_conflicts(pos, overlaps)[0]
    assert got[:, 0].tolist() == [False, True], "anchor 0 overlaps GT 1 more (0.6 > 0.3): GT 1 keeps it"
    assert got[:, 1].tolist() == [True, False], "anchor 1 was picked by GT 0 only: it stays GT 0's"
    assert got[:, 2].tolist() == [False, True]


def test_step5_targets_carry_the_gts_label_box_and_soft_score():
    pos = torch.tensor([[[False, True, False], [False, False, True]]])
    quality = torch.tensor([[[0.0, 0.7, 0.0], [0.0, 0.0, 0.4]]])
    a = build_targets(pos, quality, torch.tensor([[2, 0]]), torch.tensor([[[0.0, 0, 4, 4], [5.0, 5, 9, 9]]]), 3)
    assert a.fg_mask[0].tolist() == [False, True, True] and a.gt_index[0, 1:].tolist() == [0, 1]
    assert a.target_labels[0, 1:].tolist() == [2, 0] and a.target_boxes[0, 2].tolist() == [5.0, 5, 9, 9]
    torch.testing.assert_close(a.target_scores[0], torch.tensor([[0, 0, 0], [0, 0, 0.7], [0.4, 0, 0]]), msg=lambda m: (
        "the class target is one-hot on the GT's class, times the anchor's soft score; 0 for background\n" + m))


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
    """A batch pads every image's GT list to M; a padded slot (mask False) is no object, even where its
    stale box lies."""
    labels, boxes, mask = gts([[0.0, 0, 24, 24], [32.0, 32, 64, 64]], [0, 1])
    mask[0, 1] = False  # slot 1 is padding
    a = assigner(torch.rand(1, A, 2), pred_boxes_around_points(), POINTS, STRIDES, labels, boxes, mask)
    assert positives(a), "the real GT got no positive"
    assert positives(a) == positives(a, gt=0), ("a padded GT slot (gt_mask False) took positives: every step must "
                                                "ignore the padding")
    assert not (a.fg_mask[0] & ~inside([0.0, 0, 24, 24])).any()
    mask[:] = False  # only padding
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
    assert fg.sum() == 1, (f"a 2x2 px GT with no anchor point inside got {int(fg.sum())} positives: it must get "
                           "exactly one, its nearest point (and top-k must never reach outside the candidates)")
    nearest = (POINTS - 10).norm(dim=1).argmin()
    assert fg[nearest]


def test_4px_gt_gets_at_least_one_positive():
    labels, boxes, mask = gts([[30.0, 30.0, 34.0, 34.0]], [1])
    a = TaskAlignedAssigner()(torch.rand(1, A, 2), pred_boxes_around_points(), POINTS, STRIDES, labels, boxes, mask)
    assert a.fg_mask.sum() >= 1


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
    assert by_iou.fg_mask[0, i_good] and not by_iou.fg_mask[0, i_conf], (
        "with beta = 6 on the IoU, the good box must win: t = s^alpha * u^beta, alpha on the score, beta on the IoU")
    assert by_score.fg_mask[0, i_conf] and not by_score.fg_mask[0, i_good], (
        "with alpha = 6 on the score, the confident anchor must win: t = s^alpha * u^beta")


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
    torch.testing.assert_close(a.target_scores[0, fg, 1], t / t.max() * iou.max(), msg=lambda m: (
        "the soft class targets must be TOOD's t_hat = t / max t * max IoU on the GT's class (not 1, not raw t)\n" + m))


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


def test_topk_keeps_exactly_k_candidates_with_the_largest_metric():
    """GT [0, 0, 40, 40] holds 30 anchor points. Each predicts a box shrunk around the GT by its own
    margin, so their IoUs are all different; with equal scores TAL must take exactly the 5 best IoUs."""
    box = [0.0, 0.0, 40.0, 40.0]
    labels, boxes, mask = gts([box], [0])
    cand = inside(box).nonzero().flatten()
    margins = torch.linspace(0.5, 12.0, len(cand))[torch.randperm(len(cand), generator=torch.Generator().manual_seed(0))]
    pred = pred_boxes_around_points(half=1.0)
    pred[0, cand] = torch.tensor(box) + torch.stack([margins, margins, -margins, -margins], 1)
    a = TaskAlignedAssigner(topk=5)(torch.full((1, A, 2), 0.5), pred, POINTS, STRIDES, labels, boxes, mask)
    expected = set(cand[margins.argsort()[:5]].tolist())  # the 5 smallest margins = the 5 largest IoUs
    assert len(positives(a)) == 5, f"top-k 5 gave {len(positives(a))} positives: each GT keeps exactly k candidates"
    assert positives(a) == expected, "the positives are not the 5 candidates with the largest t = s^a u^b"


def test_an_anchor_only_one_gt_selected_goes_to_that_gt():
    """Anchor k (28, 28) lies inside GT 0 [0, 0, 40, 40] and GT 1 [20, 20, 40, 40]. Its box [18, 18, 40, 40]
    overlaps GT 1 more (IoU 0.83) than GT 0 (0.30). With top-1, GT 0 selects k (every other box is a 4 px
    dot), but GT 1 selects anchor (36, 36), whose box is GT 1 exactly. Only GT 0 selected k: it is GT 0's."""
    gt0, gt1 = [0.0, 0.0, 40.0, 40.0], [20.0, 20.0, 40.0, 40.0]
    labels, boxes, mask = gts([gt0, gt1], [0, 0])
    k, other = at(28, 28), at(36, 36)
    pred, scores = pred_boxes_around_points(half=2.0), torch.full((1, A, 2), 0.01)
    pred[0, k], pred[0, other] = torch.tensor([18.0, 18, 40, 40]), torch.tensor(gt1)
    scores[0, [k, other], 0] = 0.9
    a = TaskAlignedAssigner(topk=1)(scores, pred, POINTS, STRIDES, labels, boxes, mask)
    assert positives(a, gt=1) == {other}, "GT 1's top-1 is the anchor whose box is GT 1 exactly"
    assert k in positives(a), (f"anchor {k} was dropped: GT 0 selected it, and a conflict is settled among the "
                               "GTs that selected the anchor only (GT 1 did not select it)")
    assert positives(a, gt=0) == {k}, (f"anchor {k} went to GT {int(a.gt_index[0, k])}, which did not select it; "
                                       "it belongs to GT 0, the only GT that selected it")


def test_an_anchor_both_gts_selected_goes_to_the_higher_iou():
    """Only anchor k (28, 28) scores well and predicts GT 1 [20, 20, 40, 40] exactly: both GTs' top-1 is k.
    IoU(k, GT 1) = 1 > IoU(k, GT 0 [0, 0, 40, 40]) = 0.25, so k is GT 1's, whatever the GT order."""
    gt0, gt1 = [0.0, 0.0, 40.0, 40.0], [20.0, 20.0, 40.0, 40.0]
    k = at(28, 28)
    for order in ([gt0, gt1], [gt1, gt0]):
        labels, boxes, mask = gts(order, [0, 0])
        pred, scores = pred_boxes_around_points(half=2.0), torch.full((1, A, 2), 0.01)
        pred[0, k], scores[0, k, 0] = torch.tensor(gt1), 0.9
        a = TaskAlignedAssigner(topk=1)(scores, pred, POINTS, STRIDES, labels, boxes, mask)
        winner = order.index(gt1)
        assert positives(a) == {k}, f"both GTs selected anchor {k}; it must stay a positive, once"
        assert int(a.gt_index[0, k]) == winner, (f"anchor {k} went to GT {int(a.gt_index[0, k])} (IoU 0.25); the "
                                                 f"conflict goes to the GT it overlaps most, GT {winner} (IoU 1)")


def test_the_metric_uses_the_score_of_the_gts_own_class():
    """GT of class 0. Anchor a1 predicts class 1 with 0.95 but class 0 with only 0.05; anchor a2 class 0 with
    0.6. Both boxes have the same IoU, so TAL (top-1) must pick a2: s is the score of the GT's class."""
    box = [0.0, 0.0, 32.0, 32.0]
    labels, boxes, mask = gts([box], [0])
    a1, a2 = at(12, 12), at(20, 20)
    pred, scores = pred_boxes_around_points(half=1.0), torch.full((1, A, 2), 0.01)
    pred[0, a1] = pred[0, a2] = torch.tensor([2.0, 2, 30, 30])
    scores[0, a1] = torch.tensor([0.05, 0.95])
    scores[0, a2] = torch.tensor([0.6, 0.01])
    a = TaskAlignedAssigner(topk=1)(scores, pred, POINTS, STRIDES, labels, boxes, mask)
    assert positives(a) == {a2}, "TAL ranked by a score that is not the GT's class: s must be p(GT class)"


def test_normalisation_is_over_the_gts_positives_only():
    """TOOD eq. 7: t_hat = t / max t * max u, the maxima over the GT's *positives*. Candidate n has the best box
    (IoU 0.94) but a score of 1e-4, so it is not among the top-2; the best positive has IoU 0.77, and that,
    not 0.94, is the largest target."""
    box = [0.0, 0.0, 32.0, 32.0]
    labels, boxes, mask = gts([box], [0])
    p1, p2, n = at(12, 12), at(20, 20), at(12, 20)
    pred, scores = pred_boxes_around_points(half=1.0), torch.full((1, A, 2), 0.01)
    pred[0, p1], pred[0, p2], pred[0, n] = (torch.tensor(b) for b in
                                            ([2.0, 2, 30, 30], [3.0, 3, 29, 29], [0.5, 0.5, 31.5, 31.5]))
    scores[0, [p1, p2], 0], scores[0, n, 0] = 0.9, 1e-4
    a = TaskAlignedAssigner(topk=2, alpha=0.5, beta=6.0)(scores, pred, POINTS, STRIDES, labels, boxes, mask)
    assert positives(a) == {p1, p2}
    u1, u2 = (28 * 28) / (32 * 32), (26 * 26) / (32 * 32)
    t1, t2 = 0.9 ** 0.5 * u1 ** 6, 0.9 ** 0.5 * u2 ** 6
    got = a.target_scores[0, [p1, p2], 0]
    torch.testing.assert_close(got, torch.tensor([u1, t2 / t1 * u1]), msg=lambda m: (
        f"soft targets {got.tolist()}, expected [{u1:.4f}, {t2 / t1 * u1:.4f}]: t_hat = t / max(t) * max(IoU), "
        f"both maxima over the GT's positives only\n{m}"))
