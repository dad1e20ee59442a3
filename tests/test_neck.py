"""neck.py: FPN, PAN and CSP blocks keep the levels' sizes, set the channels, and pass information the
way each path promises."""
import pytest
import torch

import torch.nn as nn

from neck import FPN, PAN, CSPBlock, build_neck


def upsample2x(x):
    """Nearest-neighbour 2x upsampling written out: every pixel becomes a 2x2 block."""
    return x.repeat_interleave(2, -2).repeat_interleave(2, -1)


def test_fpn_computes_the_papers_top_down_pathway():
    """FPN sec. 3 by hand, with the module's own convs: L_i = lateral_i(C_i); T5 = L5, T_i = L_i + up2(T_{i+1})
    (nearest neighbour, then element-wise sum); P_i = smooth_i(T_i)."""
    torch.manual_seed(0)
    fpn = FPN([8, 16, 32], 8).eval()
    c3, c4, c5 = (torch.randn(1, c, s, s) for c, s in zip([8, 16, 32], [8, 4, 2]))
    l3, l4, l5 = (lat(c) for lat, c in zip(fpn.laterals, (c3, c4, c5)))
    t5 = l5
    t4 = l4 + upsample2x(t5)
    t3 = l3 + upsample2x(t4)
    expected = [s(t) for s, t in zip(fpn.smooth, (t3, t4, t5))]
    for level, got, want in zip((3, 4, 5), fpn([c3, c4, c5]), expected):
        torch.testing.assert_close(got, want, msg=lambda m: (
            f"P{level} differs from smooth(L{level} + nearest_upsample_2x(T{level + 1})), computed top-down from "
            f"P5: check the order of the pathway, the sum, the nearest upsampling and the 3x3 smoothing\n{m}"))


def test_pan_computes_the_bottom_up_path():
    """PANet sec. 3.1 on top of the FPN: N3 = P3, N_{i+1} = fuse_i(P_{i+1} + down_i(N_i))."""
    torch.manual_seed(0)
    pan = PAN([8, 16, 32], 8).eval()
    feats = [torch.randn(1, c, s, s) for c, s in zip([8, 16, 32], [8, 4, 2])]
    p3, p4, p5 = FPN.forward(pan, feats)
    n3 = p3
    n4 = pan.fuses[0](p4 + pan.downs[0](n3))
    n5 = pan.fuses[1](p5 + pan.downs[1](n4))
    for level, got, want in zip((3, 4, 5), pan(feats), (n3, n4, n5)):
        torch.testing.assert_close(got, want, msg=lambda m: (
            f"N{level} differs from fuse(P{level} + down(N{level - 1})): the bottom-up path adds the "
            f"downsampled finer level to the top-down one\n{m}"))


def test_fpn_laterals_are_linear_1x1_convs_and_smoothing_3x3():
    """FPN sec. 3: a 1x1 lateral only matches the channels (no activation: the sum is linear); the 3x3
    smoothing conv after the sum reduces the upsampling's aliasing."""
    fpn = FPN([8, 16, 32], 8)
    for lateral in fpn.laterals:
        conv = next(m for m in lateral.modules() if isinstance(m, nn.Conv2d))
        assert conv.kernel_size == (1, 1), f"a lateral conv is {conv.kernel_size}: FPN's laterals are 1x1"
        assert not any(isinstance(m, (nn.SiLU, nn.ReLU)) for m in lateral.modules()), "a lateral has an activation"
    for smooth in fpn.smooth:
        assert next(m for m in smooth.modules() if isinstance(m, nn.Conv2d)).kernel_size == (3, 3)


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
    for k, out in enumerate(outs):
        for j, f in enumerate(feats):
            g = torch.autograd.grad(out.sum(), f, retain_graph=True, allow_unused=True)[0]
            assert g is not None and g.abs().sum() > 0, f"output level {k} does not depend on input level {j}"
    total = sum(o.sum() for o in neck(feats))
    grads = torch.autograd.grad(total, list(neck.parameters()), allow_unused=True)
    for (name, _), g in zip(neck.named_parameters(), grads):
        assert g is not None and g.abs().sum() > 0, f"{name} does not reach the outputs"


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
    assert torch.autograd.grad(p3.sum(), feats[2], retain_graph=True)[0].abs().sum() > 0, \
        "C5 does not reach P3: the top-down pathway must start at the coarsest level and run down to the finest"
    assert torch.autograd.grad(p5.sum(), feats[0], allow_unused=True)[0] is None, "C3 reaches P5: FPN has no bottom-up path"
