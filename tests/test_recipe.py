"""One recipe, said once: every default of `python train.py` (its flags) is also the default of the course
module that uses it, so a student who builds a part with no arguments builds the part the run trains."""
import inspect

import pytest

import evaluate
import train
from assign import TaskAlignedAssigner
from backbone import Backbone
from detector import Detector
from head import DecoupledHead
from losses import DetectionLoss

FLAGS = train.parse_args([])


def default(fn, name):
    return inspect.signature(fn).parameters[name].default


# (module part, its parameter, train.py's flag value, as the module spells it)
PAIRS = [
    (TaskAlignedAssigner, "topk", FLAGS.tal_topk),
    (TaskAlignedAssigner, "alpha", FLAGS.tal_alpha),
    (TaskAlignedAssigner, "beta", FLAGS.tal_beta),
    (DetectionLoss, "box_loss", FLAGS.box_loss),
    (DetectionLoss, "cls_loss", FLAGS.cls_loss),
    (DetectionLoss, "box_weight", FLAGS.box_weight),
    (DetectionLoss, "dfl_weight", FLAGS.dfl_weight),
    (Detector, "backbone", FLAGS.backbone),
    (Detector, "unfreeze", FLAGS.unfreeze),
    (Detector, "width", FLAGS.width),
    (Detector, "neck", FLAGS.neck),
    (Detector, "neck_block", FLAGS.neck_block),
    (Detector, "depthwise_head", FLAGS.head_conv == "depthwise"),
    (Detector, "box_bins", FLAGS.box_bins),
    (Detector, "strides", tuple(FLAGS.strides)),
    (Detector, "box_prior", FLAGS.box_prior),
    (DecoupledHead, "box_bins", FLAGS.box_bins),
    (DecoupledHead, "depthwise", FLAGS.head_conv == "depthwise"),
    (DecoupledHead, "width", FLAGS.width),
    (DecoupledHead, "box_prior", FLAGS.box_prior),
    (Backbone, "name", FLAGS.backbone),
    (Backbone, "unfreeze_last", FLAGS.unfreeze),
    (Backbone, "strides", tuple(FLAGS.strides)),
]


@pytest.mark.parametrize("part, name, flag", PAIRS, ids=[f"{p.__name__}.{n}" for p, n, _ in PAIRS])
def test_module_default_is_the_runs(part, name, flag):
    assert default(part, name) == flag, (
        f"{part.__name__}({name}=...) defaults to {default(part, name)!r} but `python train.py` trains with "
        f"{flag!r}: change one of them so that both say the same")


def test_evaluate_flags_are_postprocess_defaults():
    args = evaluate.parse_args(["--checkpoint", "x.pt"])
    assert args.score_thresh == default(evaluate.postprocess, "score_thresh")
    assert args.iou_thresh == default(evaluate.postprocess, "iou_thresh")
    assert args.nms == default(evaluate.postprocess, "method")


def test_the_check_reads_real_defaults():
    """The pairs above are not vacuous: a flag that differs from the module is seen."""
    assert default(TaskAlignedAssigner, "topk") != train.parse_args(["--tal-topk", "13"]).tal_topk
