"""The course's classic mistakes, each a one-line change that its module's own tests must catch.

    python -m tools.mistakes                    # apply each mistake to a copy of the repo, run its module's tests
    python -m tools.mistakes --module assign    # only one section's
    python -m tools.mistakes --write            # also rewrite PITFALLS.md from the list and what the tests said

A student who writes a section and makes one of these mistakes must see ``pytest tests/test_SECTION.py`` fail
and say why. This program is the proof: it copies the repo to a temporary folder, applies one mistake there
(the ``wrong`` line in place of the ``right`` one), runs the module's quick tests (``-m "not slow"``) and
expects a failure; the real files are never touched. ``PITFALLS.md`` is the list for students, per section,
with the line, where the mistake comes from, and the first failure message the tests gave.
(tests/test_mistakes.py checks that every ``right`` line is still in today's code; its slow test runs this.)
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("data", "backbone", "neck", "head", "assign", "losses", "train", "evaluate")


@dataclass(frozen=True)
class Mistake:
    module: str  # the course file, without .py
    what: str    # the mistake, as a student would make it
    source: str  # where it is known from: a paper, a library's issue tracker, the course notebook
    right: str   # a unique piece of one line of today's code ...
    wrong: str   # ... and what the mistake puts there instead

    @property
    def path(self) -> Path:
        return REPO / f"{self.module}.py"


M = Mistake
MISTAKES = [
    # ------------------------------------------------------------------ data.py
    M("data", "COCO [x, y, w, h] boxes used as if they were [x1, y1, x2, y2]",
      "the most reported box bug of detection repos (torchvision and albumentations issue trackers)",
      "boxes = coco_to_xyxy(xywh)", "boxes = xywh"),
    M("data", "xywh -> xyxy forgets to add the corner: x2 = w instead of x + w",
      "a one-character slip in every detection course's first exercise",
      "return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)",
      "return np.concatenate([xywh[:, :2], xywh[:, 2:]], axis=1)"),
    M("data", "RF100's 1-based categories used as 0-based class indices",
      "Roboflow exports number classes from 1 (0 is the super-category); ultralytics and torchvision issues",
      "labels = cats - FIRST_CATEGORY_ID", "labels = cats"),
    M("data", "the boxes of the untransformed image returned with the augmented image",
      "the course notebook's student attempt: augmentation applied to the pixels only",
      'torch.as_tensor(np.asarray(out["bboxes"], np.float32)', 'torch.as_tensor(np.asarray(sample["bboxes"], np.float32)'),
    M("data", "letterbox padding centred, while the way back assumes top-left padding",
      "YOLOv5's letterbox pads both sides; mixing the two conventions shifts every box by half the padding",
      'position="top_left"', 'position="center"'),
    M("data", "the way back to image pixels divides where it should multiply",
      "inverting a resize is a classic sign slip (pycocotools scores then fall to ~0 on non-square images)",
      "out = boxes * boxes.new_tensor([width / w, height / h, width / w, height / h])",
      "out = boxes * boxes.new_tensor([w / width, h / height, w / width, h / height])"),
    M("data", "augmentation seeded by the image alone: every epoch sees the same augmented copy",
      "seeding per sample for repeatability, and forgetting the epoch (PyTorch's data loading randomness notes)",
      "(self.seed, epoch, i)", "(self.seed, 0, i)"),
    M("data", "the training images not shuffled",
      "DataLoader(shuffle=False) by default: every epoch sees the batches in the same order",
      "order = torch.randperm(self.n, generator=self.generator).tolist()", "order = list(range(self.n))"),
    M("data", "padded GT slots marked as real boxes",
      "a batched assigner then trains anchors on [0, 0, 0, 0] boxes of class 0",
      'gt_mask = pad_sequence([torch.ones(len(t["labels"]), dtype=torch.bool) for t in targets], batch_first=True)',
      'gt_mask = pad_sequence([torch.ones(len(t["labels"]), dtype=torch.bool) for t in targets], batch_first=True, '
      'padding_value=True)'),
    # ------------------------------------------------------------------ backbone.py
    M("backbone", "the first k stages unfrozen instead of the last k",
      "transfer learning retrains the task-specific (last) stages; the course's freeze exercise",
      "for unit in self.units[len(self.units) - n:]:", "for unit in self.units[:n]:"),
    M("backbone", "freezing forgotten: every backbone weight trains",
      "requires_grad left True (PyTorch forum's most asked fine-tuning question)",
      "            p.requires_grad_(False)", "            p.requires_grad_(True)"),
    M("backbone", "frozen blocks' BatchNorm left in train mode: their running statistics drift",
      "torchvision's FrozenBatchNorm2d exists for this; detectron2 and mmdet freeze BN too",
      "                    m.eval()", "                    m.train(mode)"),
    M("backbone", "ImageNet's mean/std hard-coded instead of the weights' own normalisation",
      "TF-ported EfficientNet-Lite weights expect mean = std = 0.5 (timm's pretrained_cfg)",
      'self.mean, self.std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))',
      "self.mean, self.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)"),
    M("backbone", "0..255 pixels normalised with a 0..1 mean/std: inputs ~250x too large",
      "mean/std are given for images scaled to [0, 1] (torchvision's Normalize docs: after ToTensor)",
      "x = (images.float() / 255 - self.norm_mean) / self.norm_std", "x = (images.float() - self.norm_mean) / self.norm_std"),
    M("backbone", "feature maps picked by hard-coded index instead of by stride",
      "timm's features_only returns every stage; the indices differ between models (timm's feature_info docs)",
      "self.keep = [i for i, r in enumerate(reductions) if r in strides]", "self.keep = [2, 3, 4][:len(strides)]"),
    # ------------------------------------------------------------------ neck.py
    M("neck", "the top-down pathway run bottom-up, so C5's semantics never reach P3",
      "FPN sec. 3: the top-down pathway starts at the coarsest level",
      "for i in range(len(lat) - 1, 0, -1):", "for i in range(1, len(lat)):"),
    M("neck", "the upsampled coarser map replaces the lateral instead of being added to it",
      "FPN sec. 3, Fig. 3: merged by element-wise addition",
      'lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=2, mode="nearest")',
      'lat[i - 1] = F.interpolate(lat[i], scale_factor=2, mode="nearest")'),
    M("neck", "bilinear upsampling where the course asks for nearest neighbour",
      "FPN sec. 3: 'upsample the spatial resolution by a factor of 2 (using nearest neighbor upsampling)'",
      'mode="nearest")', 'mode="bilinear")'),
    M("neck", "the 3x3 smoothing conv skipped",
      "FPN sec. 3: 'we append a 3x3 convolution on each merged map ... to reduce the aliasing effect of upsampling'",
      "return [s(t) for s, t in zip(self.smooth, lat)]  # P_i", "return lat  # P_i"),
    M("neck", "3x3 lateral convs (or an activation) where FPN uses a linear 1x1",
      "FPN sec. 3: the lateral connection is a 1x1 convolutional layer that reduces channel dimensions",
      "ConvBNAct(c, out_channels, 1, act=False) for c in in_channels", "ConvBNAct(c, out_channels, 3) for c in in_channels"),
    M("neck", "PAN's bottom-up path: the downsampled map replaces the top-down one instead of being added",
      "PANet sec. 3.1: N_{i+1} from P_{i+1} and the down-sampled N_i, element-wise addition",
      "outs[i + 1] = self.fuses[i](outs[i + 1] + down)", "outs[i + 1] = self.fuses[i](down)"),
    # ------------------------------------------------------------------ head.py
    M("head", "anchor points at the cells' top-left corners instead of their centres",
      "a recurring off-by-half-a-cell bug (FCOS maps a location to (s/2 + xs, s/2 + ys); mmdet's offset=0.5)",
      ".float().add(0.5).mul(s)", ".float().add(0.0).mul(s)"),
    M("head", "anchor points as (row, col) instead of (x, y)",
      "meshgrid's 'ij' order returns rows first; mixing it up transposes every non-square map",
      "torch.stack([xs, ys], -1)", "torch.stack([ys, xs], -1)"),
    M("head", "decode adds the left and top distances instead of subtracting them",
      "FCOS eq. 1 read backwards: x1 = x - l, y1 = y - t",
      "return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], -1)",
      "return torch.cat([points + ltrb[..., :2], points + ltrb[..., 2:]], -1)"),
    M("head", "encode measured from the box to the point: l = x1 - x instead of x - x1",
      "sign conventions of (l, t, r, b) (FCOS eq. 1)",
      "return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], -1)",
      "return torch.cat([boxes[..., :2] - points, boxes[..., 2:] - points], -1)"),
    M("head", "prior-probability bias with the wrong sign: every score starts at 0.99",
      "RetinaNet sec. 4.1: b = -log((1 - pi) / pi)",
      "nn.init.constant_(conv.bias, -math.log((1 - prior_prob) / prior_prob))",
      "nn.init.constant_(conv.bias, math.log((1 - prior_prob) / prior_prob))"),
    M("head", "the prior-probability init forgotten (bias 0: every score starts at 0.5)",
      "RetinaNet sec. 4.1: without it the background loss dominates and training is unstable",
      "nn.init.constant_(conv.bias, -math.log((1 - prior_prob) / prior_prob))", "nn.init.zeros_(conv.bias)"),
    M("head", "the box predictor fed by the classification branch: the head is not decoupled",
      "YOLOX sec. 2.1, Fig. 2: separate branches for classification and regression",
      "box = self.box_preds[i](self.box_branches[i](x)).float()", "box = self.box_preds[i](self.cls_branches[i](x)).float()"),
    M("head", "distances left in strides instead of pixels",
      "each level predicts in its own stride units (GFL / YOLOv8 multiply by the stride)",
      "box = distribution_to_distance(logits, 2) * self.strides[i]", "box = distribution_to_distance(logits, 2)"),
    M("head", "the expectation over bins 1..n instead of 0..n-1",
      "GFL sec. 3.3: y_hat = sum_i P(y_i) y_i with y_i = 0, 1, ..., n-1",
      "bins = torch.arange(logits.shape[dim], dtype=logits.dtype, device=logits.device)",
      "bins = torch.arange(1, logits.shape[dim] + 1, dtype=logits.dtype, device=logits.device)"),
    M("head", "softmax over the last axis instead of the bins' axis",
      "the (B, 4, n, A) layout: a softmax over the anchors is a silent shape bug",
      "return (logits.softmax(dim) * bins.view(shape)).sum(dim)", "return (logits.softmax(-1) * bins.view(shape)).sum(dim)"),
    # ------------------------------------------------------------------ assign.py
    M("assign", "alpha and beta swapped: t = s^beta u^alpha",
      "the course notebook's student attempt (the course text names them the other way round from TOOD eq. 2)",
      "align = s.pow(self.alpha) * overlaps.pow(self.beta) * cand",
      "align = s.pow(self.beta) * overlaps.pow(self.alpha) * cand"),
    M("assign", "a conflict settled by argmax over all GTs, not only those that selected the anchor",
      "TOOD sec. 3.2 / YOLOv8's select_highest_overlaps restrict it to the selecting GTs",
      "masked = torch.where(pos, overlaps, torch.full_like(overlaps, -1.0))", "masked = overlaps"),
    M("assign", "a conflict settled by GT order instead of IoU",
      "argmax over a boolean mask returns the first GT, not the best one",
      "best = masked.argmax(1, keepdim=True)", "best = pos.to(torch.uint8).argmax(1, keepdim=True)"),
    M("assign", "one candidate per GT kept instead of top-k",
      "TOOD sec. 3.2: the m (= 13) anchors with the largest t are positives",
      "k = min(topk, ranked.shape[-1])", "k = 1"),
    M("assign", "top-k picks anchors that are not candidates (outside the GT) when a GT has fewer than k",
      "topk over a masked metric still returns k indices; the mask must be applied again",
      "return chosen & candidates  # a GT", "return chosen  # a GT"),
    M("assign", "the classification score of the best class used instead of the GT's class",
      "TOOD eq. 2: s is the score of the GT's class",
      "s = pred_scores.transpose(1, 2).gather(1, cls_idx)", "s = pred_scores.amax(-1)[:, None, :].expand_as(overlaps)"),
    M("assign", "TOOD's normalisation over every candidate instead of the GT's positives",
      "TOOD eq. 7: the maxima are over the positive anchors of each instance",
      "align, overlaps = align * pos, overlaps * pos", "align, overlaps = align * cand, overlaps * cand"),
    M("assign", "the soft target left as the raw t = s^alpha u^beta (no normalisation)",
      "TOOD eq. 7; raw t is ~1e-8 early in training and the classifier learns nothing",
      "quality = align / max_t * overlaps.amax(-1, keepdim=True)", "quality = align"),
    M("assign", "padded GT slots allowed to take candidates",
      "padding to (B, M) needs the mask in every step (YOLOv8's mask_gt)",
      "inside &= gt_mask[..., None]", "inside &= True"),
    M("assign", "a GT smaller than the stride left with no positive",
      "TOOD and YOLOv8 drop them silently; 8 px heads at stride 8 are common in this data",
      "return inside | fallback", "return inside"),
    M("assign", "hard one-hot classification targets instead of the soft alignment score",
      "TOOD sec. 3.2 Task-aligned Loss: the target is t_hat, not 1",
      "target_scores = torch.nn.functional.one_hot(target_labels, num_classes).float() * score[..., None]",
      "target_scores = torch.nn.functional.one_hot(target_labels, num_classes).float()"),
    # ------------------------------------------------------------------ losses.py
    M("losses", "the union counts the intersection twice",
      "IoU = |A n B| / (|A| + |B| - |A n B|)",
      "union = box_area(a) + box_area(b) - inter", "union = box_area(a) + box_area(b)"),
    M("losses", "a negative overlap not clamped: two disjoint boxes get a positive intersection",
      "(rb - lt) is negative on both axes for boxes apart diagonally, and the product is positive",
      "inter = (rb - lt).clamp(min=0).prod(-1)", "inter = (rb - lt).prod(-1)"),
    M("losses", "GIoU's enclosing box built like the intersection (max of top-lefts)",
      "GIoU Alg. 1: C is the smallest box enclosing both",
      "return torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])",
      "return torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])"),
    M("losses", "GIoU's penalty with the intersection where the union belongs",
      "GIoU Alg. 1: GIoU = IoU - |C \\ (A u B)| / |C|",
      "giou = iou - (area_c - union) / (area_c + eps)", "giou = iou - (area_c - inter) / (area_c + eps)"),
    M("losses", "DIoU's distance not squared",
      "DIoU eq. 6: rho^2(b, b_gt) / c^2",
      "rho2 = ((centre_p - centre_t) ** 2).sum(-1)", "rho2 = ((centre_p - centre_t) ** 2).sum(-1).sqrt()"),
    M("losses", "DIoU's c^2 from the longer side of the enclosing box, not its diagonal",
      "DIoU eq. 6: c is the diagonal length of the smallest enclosing box",
      "c2 = ((c_rb - c_lt) ** 2).sum(-1) + eps", "c2 = ((c_rb - c_lt) ** 2).amax(-1) + eps"),
    M("losses", "CIoU's aspect term with the prediction's w/h upside down",
      "CIoU eq. 9: v = 4/pi^2 (arctan(w_gt/h_gt) - arctan(w/h))^2",
      "torch.atan(w_p / (h_p + eps))", "torch.atan(h_p / (w_p + eps))"),
    M("losses", "DFL's two bin weights swapped",
      "GFL eq. 6: the left bin y_i weighs (y_{i+1} - y)",
      "w_left = (left + 1) - y", "w_left = y - left"),
    M("losses", "DFL's targets in pixels instead of bins (strides)",
      "GFL / YOLOv8's bbox2dist divide by the stride first",
      "ltrb = encode(fg_points, target_boxes[fg]) / fg_strides", "ltrb = encode(fg_points, target_boxes[fg])"),
    M("losses", "the loss normalised by the number of positives instead of the sum of soft targets",
      "YOLOv8 / PP-YOLOE divide by target_scores_sum",
      "norm = target_scores.sum().clamp(min=1)", "norm = fg.sum().clamp(min=1)"),
    M("losses", "the box loss of every positive weighted alike instead of by its soft target",
      "TOOD sec. 3.2: the regression loss of each anchor is re-weighted by t_hat",
      "weight = target_scores.sum(-1)[fg]", "weight = torch.ones_like(target_scores.sum(-1)[fg])"),
    M("losses", "the classification loss computed on the positives only",
      "RetinaNet / TOOD: every anchor is classified; negatives learn 'background'",
      "loss_cls = self.cls_loss_fn(cls_logits, target_scores).sum() / norm",
      "loss_cls = self.cls_loss_fn(cls_logits[fg], target_scores[fg]).sum() / norm"),
    M("losses", "Varifocal loss weighting positives by 1 instead of their quality q",
      "VarifocalNet eq. 2: positives are weighted by q",
      "weight = torch.where(target > 0, target, alpha * p.pow(gamma))",
      "weight = torch.where(target > 0, torch.ones_like(target), alpha * p.pow(gamma))"),
    # ------------------------------------------------------------------ train.py
    M("train", "LR warm-up that starts at 0: the first step does nothing",
      "nanoGPT's get_lr: (it + 1) / warmup_iters",
      "return (it + 1) / warmup", "return it / warmup"),
    M("train", "the cosine decays to 0 instead of the final ratio",
      "YOLOX / YOLOv8 end at a fraction of the peak LR (lrf)",
      "return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))",
      "return 0.5 * (1 + math.cos(math.pi * progress))"),
    M("train", "weight decay on BatchNorm weights and biases",
      "decay only conv / linear weights (YOLOv5's three parameter groups; timm's param_groups_weight_decay)",
      "weight_decay if p.ndim > 1 else 0.0", "weight_decay"),
    M("train", "the --time budget not capped at --epochs",
      "a fast machine would train past the planned schedule",
      "return max(done_iters, min(max_iters, int(budget_s * done_iters / seconds)))",
      "return max(done_iters, int(budget_s * done_iters / seconds))"),
    M("train", "mosaic closed one epoch late",
      "YOLOX sec. 2.3: the last N epochs train without mosaic (off by one at the boundary)",
      "if args.aug == \"strong\" and epoch >= total_epochs - close:", "if args.aug == \"strong\" and epoch > total_epochs - close:"),
    M("train", "the gradients never zeroed: each step adds to the last",
      "PyTorch's most common training-loop bug",
      "optimizer.zero_grad(set_to_none=True)", "pass"),
    M("train", "the fp16 gradients clipped while still multiplied by the loss scale (unscale_ forgotten)",
      "PyTorch's AMP recipe: scaler.unscale_(optimizer) before clip_grad_norm_; AdamW hides the damage",
      "scaler.unscale_(optimizer)", "None"),
    M("train", "the EMA updated on a step the fp16 scaler skipped",
      "GradScaler.step skips the update on an overflow; an EMA step then averages in no change",
      "if ema is not None and stepped:", "if ema is not None:"),
    M("train", "the warm-up assigner used for one epoch too many",
      "TOOD sec. 4: ATSS for the first epochs, TAL after (an off-by-one at the switch)",
      "if epoch < args.warmup_assigner_epochs or", "if epoch <= args.warmup_assigner_epochs or"),
    # ------------------------------------------------------------------ evaluate.py
    M("evaluate", "class-agnostic NMS: a box suppresses an overlapping box of another class",
      "torchvision.ops.nms vs batched_nms (torchvision and ultralytics issue trackers)",
      "kept = torchvision.ops.batched_nms(cand_boxes, cand_scores, label, iou_thresh)[:max_det]",
      "kept = torchvision.ops.nms(cand_boxes, cand_scores, iou_thresh)[:max_det]"),
    M("evaluate", "only each anchor's best class is a candidate",
      "COCO practice keeps every (anchor, class) pair above the threshold (mmdet's multiclass_nms)",
      "flat = scores.flatten()  ", "flat = (scores * (scores == scores.amax(1, keepdim=True))).flatten()  "),
    M("evaluate", "anchor and class read the wrong way round from the flat (anchor, class) index",
      "a flat index i of an (A, C) array is anchor i // C, class i % C",
      "anchor, label = idx // scores.shape[1], idx % scores.shape[1]",
      "anchor, label = idx % scores.shape[1], idx // scores.shape[1]"),
    M("evaluate", "Soft-NMS's Gaussian decay with IoU instead of IoU squared",
      "Soft-NMS eq. 3: exp(-iou^2 / sigma)",
      "torch.exp(-iou ** 2 / sigma)", "torch.exp(-iou / sigma)"),
    M("evaluate", "flip TTA's boxes flipped back with their corners unswapped",
      "x1' = W - x2 and x2' = W - x1 (ultralytics' and mmdet's flip_back)",
      "torch.stack([w - x2, y1, w - x1, y2], -1)", "torch.stack([w - x1, y1, w - x2, y2], -1)"),
    M("evaluate", "boxes scored in the network frame instead of the image's own pixels",
      "pycocotools compares with the dataset's own annotations (letterbox not undone)",
      'preds = [{"boxes": boxes_to_image(d["boxes"].cpu(), t["image_size"], images.shape[-1]),',
      'preds = [{"boxes": d["boxes"].cpu(),'),
    M("evaluate", "COCO results with 0-based category ids",
      "the dataset's categories start at 1: pycocotools then scores every box against the wrong class",
      '"category_id": int(label) + FIRST_CATEGORY_ID', '"category_id": int(label)'),
    M("evaluate", "COCO results with xyxy boxes instead of [x, y, w, h]",
      "COCO's results format is xywh (pycocotools' loadRes; a common issue of every exporter)",
      "(x1, y1, x2 - x1, y2 - y1)", "(x1, y1, x2, y2)"),
    M("evaluate", "box voting averages boxes of other classes too",
      "Gidaris & Komodakis: a box votes only with same-class detections",
      "weight = scores * ((iou >= iou_thresh) & (kept_labels[:, None] == labels))",
      "weight = scores * (iou >= iou_thresh)"),
]


def apply(mistake: Mistake, text: str) -> str:
    """``text`` (the module's source) with the mistake made: its one ``right`` piece replaced by ``wrong``."""
    if text.count(mistake.right) != 1:
        raise ValueError(f"{mistake.module}.py: {mistake.right!r} occurs {text.count(mistake.right)} times, not once")
    return text.replace(mistake.right, mistake.wrong)


def copy_repo(dest: Path) -> Path:
    """The course files, tools/, tests/ and pytest.ini copied to ``dest`` (no results, figures or weights)."""
    for p in REPO.glob("*.py"):
        shutil.copy(p, dest / p.name)
    shutil.copy(REPO / "pytest.ini", dest / "pytest.ini")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "tools", dest / "tools", ignore=ignore)
    shutil.copytree(REPO / "tests", dest / "tests", ignore=ignore)
    return dest


def first_failure(output: str) -> str:
    """The first failed test and its assertion message, from pytest's ``-x -q --tb=short`` output."""
    test = re.search(r"^FAILED (\S+)", output, re.M) or re.search(r"^ERROR (\S+)", output, re.M)
    errors = [line[1:].strip() for line in output.splitlines() if line.startswith("E ")]
    message = next((e for e in errors if e and not e.startswith("+")), "")
    return f"{test.group(1) if test else '?'}: {message}"[:300]


def run_tests(root: Path, module: str) -> tuple[bool, str]:
    """Run ``tests/test_<module>.py``'s quick tests in ``root``: (failed?, the first failure)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", f"tests/test_{module}.py", "-x", "-q", "--tb=short",
                           "-m", "not slow", "-p", "no:cacheprovider", "-W", "ignore"],
                          cwd=root, capture_output=True, text=True)
    return proc.returncode != 0, first_failure(proc.stdout + proc.stderr)


def check(mistake: Mistake, root: Path) -> tuple[bool, str]:
    """Make ``mistake`` in the copy at ``root``, run its module's tests, undo it."""
    target = root / f"{mistake.module}.py"
    original = target.read_text()
    target.write_text(apply(mistake, original))
    try:
        return run_tests(root, mistake.module)
    finally:
        target.write_text(original)


def check_all(mistakes: list[Mistake], workers: int = 2) -> list[tuple[Mistake, bool, str]]:
    """Every mistake checked, ``workers`` at a time, each worker in its own copy of the repo."""
    with tempfile.TemporaryDirectory() as tmp:
        roots = []
        for i in range(workers):
            (Path(tmp) / f"w{i}").mkdir()
            roots.append(copy_repo(Path(tmp) / f"w{i}"))
        groups = [mistakes[i::workers] for i in range(workers)]

        def run_group(i):
            return [(m, *check(m, roots[i])) for m in groups[i]]

        with ThreadPoolExecutor(workers) as pool:
            results = [r for group in pool.map(run_group, range(workers)) for r in group]
    order = {id(m): k for k, m in enumerate(mistakes)}
    return sorted(results, key=lambda r: order[id(r[0])])


def pitfalls_markdown(results: list[tuple[Mistake, bool, str]]) -> str:
    """PITFALLS.md: per section, each mistake, its one-line change, where it is known from, what the tests say."""
    out = ["# Pitfalls: the classic mistakes of each section, and the test that catches each", "",
           "Each row is a one-line change to a course file that a student could make while writing that section.",
           "Every one of them makes that section's own tests fail (`pytest tests/test_SECTION.py`); the last column is",
           "the first failure pytest reports. `python -m tools.mistakes` makes each mistake in a copy of the repo",
           "and checks it; `python -m tools.mistakes --write` rewrites this page.", ""]
    for section in SECTIONS:
        rows = [r for r in results if r[0].module == section]
        if not rows:
            continue
        out += [f"## {section}.py", "", "| mistake | the line | known from | what `pytest tests/test_" + section +
                ".py` says |", "|---|---|---|---|"]
        for m, _, said in rows:
            cell = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
            out.append(f"| {cell(m.what)} | `{cell(m.right.strip())}` → `{cell(m.wrong.strip())}` | {cell(m.source)} "
                       f"| {cell(said)} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Make each classic mistake in a copy of the repo; its tests must fail.")
    p.add_argument("--module", choices=SECTIONS, default=None, help="only this section's mistakes")
    p.add_argument("--workers", type=int, default=2, help="mistakes checked at once, each in its own copy")
    p.add_argument("--write", action="store_true", help="rewrite PITFALLS.md (the full list only)")
    args = p.parse_args(argv)
    chosen = [m for m in MISTAKES if args.module in (None, m.module)]
    for m in chosen:  # every mistake still applies to today's code, before anything runs
        apply(m, m.path.read_text())
    results = check_all(chosen, args.workers)
    missed = [m for m, failed, _ in results if not failed]
    for m, failed, said in results:
        print(f"{'caught' if failed else 'MISSED'}  {m.module:<9} {m.what}\n          {said if failed else ''}")
    print(f"{len(results) - len(missed)} of {len(results)} mistakes caught by their module's tests")
    if args.write and args.module is None:
        (REPO / "PITFALLS.md").write_text(pitfalls_markdown(results) + "\n")
        print("wrote PITFALLS.md")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
