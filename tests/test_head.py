"""head.py and detector.py: anchor points, box decoding, the decoupled head's shapes and prior init, the
distribution head, and the composed detector."""
import pytest
import torch

from detector import Detector
from head import DecoupledHead, decode, distribution_to_distance, encode, make_anchor_points


def test_anchor_points_are_cell_centres():
    points, strides = make_anchor_points([(2, 3), (1, 2)], [8, 16])
    assert points.shape == (8, 2) and strides.tolist() == [8.0] * 6 + [16.0] * 2
    assert points[:3].tolist() == [[4, 4], [12, 4], [20, 4]], (  # first row of the stride-8 map
        f"the first row of a 2x3 stride-8 map must be (x, y) = (4, 4), (12, 4), (20, 4): cell centres "
        f"((c + 0.5) s, (r + 0.5) s), x first; got {points[:3].tolist()}")
    assert points[3].tolist() == [4, 12]                      # second row
    assert points[6:].tolist() == [[8, 8], [24, 8]]           # the stride-16 map


def test_decode_ltrb_to_xyxy():
    points = torch.tensor([[10.0, 20.0]])
    ltrb = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    assert decode(points, ltrb).tolist() == [[[9.0, 18.0, 13.0, 24.0]]], \
        "point (10, 20) with (l, t, r, b) = (1, 2, 3, 4) is the box x1 = x - l, y1 = y - t, x2 = x + r, y2 = y + b"
    assert encode(points, decode(points, ltrb)).tolist() == ltrb.tolist(), \
        "encode must invert decode: (x - x1, y - y1, x2 - x, y2 - y)"


@pytest.mark.parametrize("box_bins", [16, 0])
def test_head_shapes_and_prior_init(box_bins):
    head = DecoupledHead(num_classes=3, in_channels=16, width=16, box_bins=box_bins)
    feats = [torch.randn(2, 16, s, s) for s in (8, 4, 2)]
    cls, ltrb, box_logits = head(feats)
    assert cls.shape == (2, 84, 3) and ltrb.shape == (2, 84, 4)
    assert box_logits is None if box_bins == 0 else box_logits.shape == (2, 84, 4, 16)
    assert (ltrb > 0).all()
    torch.testing.assert_close(head.cls_preds[0].bias.sigmoid(), torch.full((3,), 0.01), msg=lambda m: (
        "every class score must start at the prior probability 0.01: bias = -log((1 - 0.01) / 0.01)\n" + m))


def test_distribution_to_distance():
    one_hot = torch.full((3, 6), -30.0)
    one_hot[[0, 1, 2], [0, 2, 5]] = 30.0
    torch.testing.assert_close(distribution_to_distance(one_hot), torch.tensor([0.0, 2.0, 5.0]), msg=lambda m: (
        "all the mass on bin i must give distance i: the expectation sum_i softmax_i * i over bins 0..n-1\n" + m))
    # A uniform distribution over 0..5 has expectation 2.5; halfway mass on bins 1 and 3 gives 2.
    torch.testing.assert_close(distribution_to_distance(torch.zeros(6)), torch.tensor(2.5))
    two = torch.full((6,), -30.0)
    two[[1, 3]] = 0.0
    torch.testing.assert_close(distribution_to_distance(two), torch.tensor(2.0))
    # ``dim`` chooses the bin axis: (4, n, A) as the head lays it out.
    logits = torch.randn(4, 6, 10)
    torch.testing.assert_close(distribution_to_distance(logits, 1), distribution_to_distance(logits.transpose(1, 2)),
                               msg=lambda m: f"the softmax and the sum must both run over the bins' axis ``dim``\n{m}")


@pytest.mark.parametrize("size", [(128, 128), (96, 160)])
@pytest.mark.parametrize("box_bins, levels", [(0, (8, 16, 32)), (16, (8, 16, 32)), (0, (4, 8, 16, 32))])
def test_detector_outputs_and_box_centres(size, box_bins, levels):
    model = Detector(num_classes=2, pretrained=False, box_bins=box_bins, strides=levels).eval()
    cls, boxes, points, strides, box_logits = model(torch.zeros(2, 3, *size))
    a = sum((size[0] // s) * (size[1] // s) for s in levels)
    assert sorted(set(strides.tolist())) == list(levels)
    assert cls.shape == (2, a, 2) and boxes.shape == (2, a, 4) and points.shape == (a, 2) and strides.shape == (a,)
    # Every decoded box contains its own anchor point (distances are positive).
    assert (boxes[..., :2] < points).all() and (boxes[..., 2:] > points).all()
    if box_bins:  # the boxes are the expectations of the distributions, in strides
        assert box_logits.shape == (2, a, 4, box_bins)
        ltrb = distribution_to_distance(box_logits) * strides[:, None]
        torch.testing.assert_close(boxes, decode(points, ltrb), rtol=1e-5, atol=1e-4, msg=lambda m: (  # pixels
            f"the boxes must be the expected distances in bins times each level's stride, in pixels\n{m}"))
    else:
        assert box_logits is None


@pytest.mark.parametrize("box_bins", [16, 0])
def test_head_is_decoupled(box_bins):
    """YOLOX's decoupled head: the class logits depend only on the stem and the classification branch, the
    boxes only on the stem and the box branch."""
    head = DecoupledHead(num_classes=2, in_channels=8, width=8, box_bins=box_bins)
    cls, ltrb, _ = head([torch.randn(2, 8, s, s) for s in (8, 4, 2)])
    cls_params, box_params = list(head.cls_branches.parameters()), list(head.box_branches.parameters())
    box_grads = torch.autograd.grad(ltrb.sum(), cls_params + box_params, retain_graph=True, allow_unused=True)
    cls_grads = torch.autograd.grad(cls.sum(), cls_params + box_params, allow_unused=True)
    n = len(cls_params)
    assert all(g is None or not g.any() for g in box_grads[:n]), \
        "the boxes depend on the classification branch: the box predictor must read the box branch"
    assert all(g is None or not g.any() for g in cls_grads[n:]), \
        "the class logits depend on the box branch: the class predictor must read the classification branch"
    assert any(g is not None and g.any() for g in box_grads[n:]) and any(g is not None and g.any() for g in cls_grads[:n])


@pytest.mark.parametrize("box_prior", [2.0, 1.0])
def test_box_distributions_start_at_the_prior_size(box_prior):
    """Before any training every side is ~``box_prior`` strides (a geometric distribution over the bins), not
    the uniform distribution's (n - 1) / 2 = 7.5: boxes 15 strides wide overlap a small GT with IoU ~0.01, and
    TAL's targets (a GT's best IoU) would teach a small class to be background."""
    torch.manual_seed(0)
    head = DecoupledHead(num_classes=3, in_channels=16, width=16, box_bins=16, box_prior=box_prior)
    _, ltrb, _ = head([torch.randn(2, 16, s, s) for s in (8, 4, 2)])               # (2, 84, 4) pixels
    strides = torch.tensor([8.0] * 64 + [16.0] * 16 + [32.0] * 4)                  # (84,)
    sides = ltrb / strides[None, :, None]                                           # (2, 84, 4) strides
    torch.testing.assert_close(sides.mean(), torch.tensor(box_prior), atol=0.1, rtol=0, msg=lambda m: (
        f"the first boxes must have sides of ~{box_prior} strides: bias of bin i = i * log(m / (1 + m))\n{m}"))
