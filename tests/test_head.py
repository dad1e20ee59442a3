"""head.py and detector.py: anchor points, box decoding, the decoupled head's shapes and prior init, the
distribution head, and the composed detector."""
import pytest
import torch

from detector import Detector
from head import DecoupledHead, decode, distribution_to_distance, encode, make_anchor_points


def test_anchor_points_are_cell_centres():
    points, strides = make_anchor_points([(2, 3), (1, 2)], [8, 16])
    assert points.shape == (8, 2) and strides.tolist() == [8.0] * 6 + [16.0] * 2
    assert points[:3].tolist() == [[4, 4], [12, 4], [20, 4]]  # first row of the stride-8 map
    assert points[3].tolist() == [4, 12]                      # second row
    assert points[6:].tolist() == [[8, 8], [24, 8]]           # the stride-16 map


def test_decode_ltrb_to_xyxy():
    points = torch.tensor([[10.0, 20.0]])
    ltrb = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    assert decode(points, ltrb).tolist() == [[[9.0, 18.0, 13.0, 24.0]]]
    assert encode(points, decode(points, ltrb)).tolist() == ltrb.tolist()  # encode inverts decode


@pytest.mark.parametrize("box_bins", [16, 0])
def test_head_shapes_and_prior_init(box_bins):
    head = DecoupledHead(num_classes=3, in_channels=16, width=16, box_bins=box_bins)
    feats = [torch.randn(2, 16, s, s) for s in (8, 4, 2)]
    cls, ltrb, box_logits = head(feats)
    assert cls.shape == (2, 84, 3) and ltrb.shape == (2, 84, 4)
    assert box_logits is None if box_bins == 0 else box_logits.shape == (2, 84, 4, 16)
    assert (ltrb > 0).all()
    torch.testing.assert_close(head.cls_preds[0].bias.sigmoid(), torch.full((3,), 0.01))


def test_distribution_to_distance():
    one_hot = torch.full((3, 6), -30.0)
    one_hot[[0, 1, 2], [0, 2, 5]] = 30.0
    torch.testing.assert_close(distribution_to_distance(one_hot), torch.tensor([0.0, 2.0, 5.0]))
    # A uniform distribution over 0..5 has expectation 2.5; halfway mass on bins 1 and 3 gives 2.
    torch.testing.assert_close(distribution_to_distance(torch.zeros(6)), torch.tensor(2.5))
    two = torch.full((6,), -30.0)
    two[[1, 3]] = 0.0
    torch.testing.assert_close(distribution_to_distance(two), torch.tensor(2.0))
    # ``dim`` chooses the bin axis: (4, n, A) as the head lays it out.
    logits = torch.randn(4, 6, 10)
    torch.testing.assert_close(distribution_to_distance(logits, 1), distribution_to_distance(logits.transpose(1, 2)))


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
        torch.testing.assert_close(boxes, decode(points, ltrb))
    else:
        assert box_logits is None
