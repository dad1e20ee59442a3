"""How much of the mAP the "box must contain its anchor point" rule can cost, per split and class.

    python results/levers/tiny_heads.py [--img-size 416]

Softplus distances are positive, so every predicted box contains its own anchor point. A GT box with no
anchor point inside it (at any level) can therefore only be matched by a box that also contains a point
outside it: at best the smallest box holding the GT and its nearest point, whose IoU with the GT is
area(GT) / area(that box). Such a GT can never count as found at an IoU threshold above that. Each GT is
1 / N of a class's recall, and AP is at most recall, so the AP@[.5:.95] that signed distances (boxes free
of their anchor) could win back is at most sum over those GTs of (thresholds out of reach / 10) / N.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root
from data import letterbox_size, read_split  # noqa: E402
from datacheck import image_header_size  # noqa: E402
from head import encode, make_anchor_points  # noqa: E402
from sources import load_class_names, resolve_data_root  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--img-size", type=int, default=416)
args = p.parse_args()
root = resolve_data_root(None)
names = load_class_names(root)
s = args.img_size
points, _ = make_anchor_points([(s // 8, s // 8), (s // 16, s // 16), (s // 32, s // 32)], (8, 16, 32))
thresholds = np.arange(0.5, 0.96, 0.05)
for split in ("train", "validation", "test"):
    for c, name in enumerate(names):
        reach = []
        for rec in read_split(root, split, len(names)):
            width, height = image_header_size(rec.image_bytes)
            h, w = letterbox_size(height, width, s)
            boxes = torch.as_tensor(rec.boxes[rec.labels == c]) * torch.tensor([w / width, h / height] * 2)
            for box in boxes:
                if (encode(points, box).amin(-1) > 0).any():
                    reach.append(1.0)
                    continue
                centre = (box[:2] + box[2:]) / 2
                pt = points[(points - centre).norm(dim=-1).argmin()]
                big = torch.cat([torch.minimum(box[:2], pt), torch.maximum(box[2:], pt)])
                reach.append(float((box[2:] - box[:2]).prod() / (big[2:] - big[:2]).prod()))
        reach = np.asarray(reach)
        lost = (thresholds[None, :] > reach[:, None]).sum(1) / len(thresholds)  # share of thresholds out of reach
        print(f"{split:>10} {name:>10}: {len(reach):4d} boxes, {int((reach < 1).sum()):3d} without an anchor point "
              f"inside, {int((reach < 0.75).sum()):3d} with best reachable IoU < 0.75, {int((reach < 0.5).sum()):3d} "
              f"< 0.5; AP@[.5:.95] out of reach <= {lost.sum() / max(len(reach), 1):.4f}")
