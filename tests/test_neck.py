"""neck.py: FPN, PAN and CSP blocks keep the levels' sizes, set the channels, and pass information the
way each path promises."""
import pytest
import torch

from neck import FPN, PAN, CSPBlock, build_neck


@pytest.mark.parametrize("kind", ["fpn", "pan"])
@pytest.mark.parametrize("block", ["conv", "csp"])
@pytest.mark.parametrize("channels, size", [([40, 112, 320], 128), ([24, 48, 96], 96), ([64, 128, 256], 320)])
def test_neck_shapes(kind, block, channels, size):
    neck = build_neck(kind, channels, 32, block)
    feats = [torch.randn(2, c, size // s, size // s) for c, s in zip(channels, (8, 16, 32))]
    assert [o.shape for o in neck(feats)] == [torch.Size([2, 32, size // s, size // s]) for s in (8, 16, 32)]


@pytest.mark.parametrize("block", ["conv", "csp"])
def test_pan_gradients_reach_every_level_both_ways(block):
    """PAN's bottom-up path: the coarsest output depends on the finest input (FPN's does not)."""
    neck = PAN([8, 16, 32], 16, block)
    feats = [torch.randn(1, c, s, s, requires_grad=True) for c, s in zip([8, 16, 32], [8, 4, 2])]
    outs = neck(feats)
    for out in outs:
        for f in feats:
            assert torch.autograd.grad(out.sum(), f, retain_graph=True)[0].abs().sum() > 0
    for name, p in neck.named_parameters():
        assert torch.autograd.grad(sum(o.sum() for o in neck(feats)), p)[0] is not None, name


def test_csp_block_splits_and_fuses():
    block = CSPBlock(16, 32)
    assert block(torch.randn(1, 16, 5, 5)).shape == (1, 32, 5, 5)
    assert block.deep[0][0].out_channels == 16 and block.skip[0].out_channels == 16


@pytest.mark.parametrize("channels", [[40, 112, 320], [16, 32, 64]])
@pytest.mark.parametrize("size", [64, 96, 416])
def test_fpn_keeps_sizes_and_sets_channels(channels, size):
    feats = [torch.randn(2, c, size // s, size // s) for c, s in zip(channels, (8, 16, 32))]
    outs = FPN(channels, 48)(feats)
    assert [o.shape for o in outs] == [torch.Size([2, 48, size // s, size // s]) for s in (8, 16, 32)]


def test_fpn_top_down_reaches_finest_level():
    """C5 must influence P3 (top-down path), and C3 must not influence P5 (no bottom-up path in FPN)."""
    fpn = FPN([8, 8, 8], 8).eval()
    feats = [torch.randn(1, 8, s, s, requires_grad=True) for s in (8, 4, 2)]
    p3, _, p5 = fpn(feats)
    assert torch.autograd.grad(p3.sum(), feats[2], retain_graph=True)[0].abs().sum() > 0
    assert torch.autograd.grad(p5.sum(), feats[0], allow_unused=True)[0] is None
