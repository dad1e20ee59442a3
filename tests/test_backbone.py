"""backbone.py (shapes, strides, freezing, weight loading) and tools/speed.py (BN folding and fp32 depthwise convs
change no output)."""
import pytest
import torch

from backbone import Backbone
from detector import Detector
from tools.speed import depthwise_in_fp32, fuse_conv_bn
from tools.weights import lukemelas_to_timm, package_weights


@pytest.fixture(scope="module")
def lite0():
    return Backbone("tf_efficientnet_lite0", pretrained=True, unfreeze_last=2)


def test_lite0_package_weights_load_strictly(lite0):
    state = torch.load(package_weights("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    mapped = lukemelas_to_timm(state, lite0.body)
    result = lite0.body.load_state_dict(mapped, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    # The loaded tensors really are the package's (not a random init that happens to have the same keys).
    torch.testing.assert_close(lite0.body.state_dict()["blocks.6.0.conv_pwl.weight"], state["_blocks.15._project_conv.weight"])
    assert "ImageNet" in lite0.weights_source


@pytest.mark.parametrize("name, last_block", [("tf_efficientnet_lite1", 20), ("tf_efficientnet_lite2", 20)])
def test_lite1_lite2_package_weights_load_strictly(name, last_block):
    """Lite1 / Lite2 ship in packages of the same layout: the same key mapping loads them strictly
    (``Backbone`` loads with strict=True, so building it is the check), and the tensors are the package's."""
    bb = Backbone(name, pretrained=True, unfreeze_last=2)
    state = torch.load(package_weights(name), map_location="cpu", weights_only=True)
    assert bb.weights_source == f"ImageNet weights from {package_weights(name)}"
    torch.testing.assert_close(bb.body.state_dict()["blocks.6.0.conv_pwl.weight"],
                               state[f"_blocks.{last_block}._project_conv.weight"])


@pytest.mark.parametrize("size", [(128, 128), (160, 224), (416, 416)])
def test_backbone_strides_and_channels(lite0, size):
    feats = lite0(torch.zeros(1, 3, *size))
    assert lite0.channels == [40, 112, 320] and lite0.strides == [8, 16, 32]
    for f, c, s in zip(feats, lite0.channels, lite0.strides):
        assert f.shape == (1, c, size[0] // s, size[1] // s)


def test_inputs_are_normalised_as_the_weights_expect(lite0):
    """TF-ported EfficientNet-Lite weights were trained on inputs scaled to [-1, 1] (mean = std = 0.5), not
    ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225): read the weights' own ``pretrained_cfg``."""
    cfg = lite0.body.pretrained_cfg
    assert (lite0.mean, lite0.std) == (tuple(cfg["mean"]), tuple(cfg["std"])) == ((0.5,) * 3, (0.5,) * 3), (
        f"Backbone normalises with mean {lite0.mean}, std {lite0.std}; timm's config of these weights says "
        f"{cfg['mean']}, {cfg['std']}")
    resnet = Backbone("resnet18", pretrained=False)
    assert resnet.mean == tuple(resnet.body.pretrained_cfg["mean"])


def test_forward_takes_pixels_and_normalises_them(lite0):
    """The loader hands uint8 pixels 0..255; ``Backbone.forward`` scales them to 0..1 and normalises with the
    weights' mean/std before the first conv: here (x / 255 - 0.5) / 0.5, computed by hand."""
    pixels = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = (pixels.float() / 255 - 0.5) / 0.5                                    # (1, 3, 64, 64) in [-1, 1]
    lite0.eval()
    with torch.no_grad():
        want = [f for i, f in enumerate(lite0.body(x)) if i in lite0.keep]
        got = lite0(pixels)
    lite0.train()  # the module-scoped fixture goes back as it came
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=lambda m: (  # float rounding of the two orders
            "Backbone(uint8 pixels) must equal the body on (pixels / 255 - mean) / std: scale to 0..1 first, then "
            "the weights' own mean and std\n" + m))


def test_backbone_stride_4_level_adds_c2():
    bb = Backbone("tf_efficientnet_lite0", pretrained=False, strides=(4, 8, 16, 32))
    assert bb.channels == [24, 40, 112, 320] and bb.strides == [4, 8, 16, 32]
    assert [f.shape[-1] for f in bb(torch.zeros(1, 3, 64, 64))] == [16, 8, 4, 2]
    with pytest.raises(ValueError, match="strides"):
        Backbone("tf_efficientnet_lite0", pretrained=False, strides=(8, 16, 64))


@pytest.mark.parametrize("k", [0, 2, -1])
def test_freeze_last_k_blocks(k):
    bb = Backbone("tf_efficientnet_lite0", pretrained=False, unfreeze_last=k)
    trainable = [any(p.requires_grad for p in u.parameters()) for u in bb.units]
    n = len(bb.units) if k < 0 else k
    assert trainable == [False] * (len(bb.units) - n) + [True] * n, (
        f"unfreeze_last={k}: trainable units {trainable}; everything frozen, then the LAST {n} units train")
    if k == 2:  # the last two units are EfficientNet stages 5 and 6
        assert bb.units[-1] is bb.body.blocks[6] and bb.units[-2] is bb.body.blocks[5]


def test_frozen_batchnorm_stays_in_eval_mode_and_keeps_its_statistics():
    bb = Backbone("tf_efficientnet_lite0", pretrained=False, unfreeze_last=1).train()
    frozen_bn, live_bn = bb.body.blocks[0][0].bn1, bb.body.blocks[6][0].bn1
    assert not frozen_bn.training and live_bn.training, \
        "model.train() must leave the BatchNorm of frozen blocks in eval mode (override Backbone.train)"
    before = frozen_bn.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64) * 3)
    torch.testing.assert_close(frozen_bn.running_mean, before, msg=lambda m: (
        "a forward in train mode changed a frozen block's BatchNorm statistics\n" + m))


@pytest.mark.parametrize("config", [dict(), dict(neck="pan", neck_block="csp", depthwise_head=True),
                                    dict(box_bins=16)])
def test_fused_conv_bn_gives_the_same_outputs(config):
    torch.manual_seed(0)
    model = Detector(num_classes=2, pretrained=False, **config)
    # Fresh BN layers are identities (mean 0, var 1, gamma 1, beta 0), so a folding that forgot a term would
    # still match: give every BN non-trivial statistics and affine parameters first.
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    fused = fuse_conv_bn(model)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        (cls, boxes, *_), (cls_f, boxes_f, *_) = model(x), fused(x)
    torch.testing.assert_close(cls_f, cls, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(boxes_f, boxes, rtol=1e-4, atol=1e-3)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())  # original kept
    # bf16 weights: under bf16 autocast the convs see the same bf16 numbers, so the outputs are identical.
    fused_bf16 = fuse_conv_bn(model, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in fused_bf16.parameters())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        (cls_a, boxes_a, *_), (cls_b, boxes_b, *_) = fused(x), fused_bf16(x)
    torch.testing.assert_close(cls_b, cls_a, rtol=0, atol=0)
    torch.testing.assert_close(boxes_b, boxes_a, rtol=0, atol=0)


def test_trainable_depthwise_convs_train_in_fp32_under_bf16_autocast():
    model = depthwise_in_fp32(Detector(num_classes=2, pretrained=False, unfreeze=1))  # as train.py builds it
    live, frozen = model.backbone.body.blocks[6][0].conv_dw, model.backbone.body.blocks[0][0].conv_dw
    assert live.groups == live.in_channels > 1 and frozen.groups == frozen.in_channels > 1
    assert type(live) is not type(frozen) and isinstance(live, type(frozen))  # swapped: a subclass
    keys = set(Detector(num_classes=2, pretrained=False, unfreeze=0).state_dict())
    assert set(model.state_dict()) == keys  # checkpoints are unchanged

    x = torch.randn(2, live.in_channels, 7, 7, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = live(x)      # training: fp32, and the same numbers as the fp32 conv
        y_frozen = frozen(torch.randn(2, frozen.in_channels, 7, 7))
        with torch.no_grad():
            y_infer = live(x)  # inference: as without the swap (bf16 under autocast)
    assert y.dtype == torch.float32 and y_frozen.dtype == torch.bfloat16 and y_infer.dtype == torch.bfloat16
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), live.weight, live.bias,
                                     live.stride, 0, live.dilation, live.groups)
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    assert live.weight.grad.dtype == torch.float32
    depthwise_in_fp32(model)  # idempotent: no subclass of the subclass
    assert type(live).__bases__[0] is type(frozen)
    depthwise_in_fp32(model, enabled=False)  # undone: the original class again
    assert type(live) is type(frozen)
