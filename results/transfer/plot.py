"""The per-class early-learning figure: validation AP of each class against the training step (top), and what
the assigner gives each class's GTs (bottom: the soft-target mass per GT, ``early.py``, averaged over each
epoch's steps), one column per recipe.

    python results/transfer/plot.py OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]

Each RUN_DIR holds a ``metrics.csv`` (AP per class per epoch; the step is epoch x steps per epoch) and, when
``early.py`` trained it, an ``early.csv``.
"""
from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def main(out: str, runs: list[str]):
    labelled = [r.split("=", 1) for r in runs]
    fig, axes = plt.subplots(2, len(labelled), figsize=(5 * len(labelled), 7), sharex=True, sharey="row",
                             squeeze=False)
    for col, (label, run) in enumerate(labelled):
        run = Path(run)
        rows = read(run / "metrics.csv")
        metrics = [r for r in rows if r["val_map"] != ""]
        step = [sum(int(m["steps"]) for m in rows[: int(r["epoch"])]) for r in metrics]  # steps done by then
        for key in metrics[0]:
            if key.startswith("val_ap_"):
                axes[0, col].plot(step, [float(r[key]) for r in metrics], marker="o", label=key[len("val_ap_"):])
        axes[0, col].set_title(label)
        if (run / "early.csv").exists():  # the mean over each epoch's steps, at the epoch's last step
            per_epoch = int(rows[0]["steps"])
            sums = defaultdict(lambda: defaultdict(list))                        # class -> epoch -> masses
            for r in read(run / "early.csv"):
                sums[r["class"]][(int(r["step"]) - 1) // per_epoch].append(float(r["mass"]))
            for name, by_epoch in sums.items():
                epochs = sorted(by_epoch)
                axes[1, col].plot([(e + 1) * per_epoch for e in epochs],
                                  [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], marker=".", label=name)
            axes[1, col].set_yscale("log")
        axes[1, col].set_xlabel("training step")
    axes[0, 0].set_ylabel("validation AP@[.5:.95]")
    axes[1, 0].set_ylabel("soft-target mass per GT (sum of t_hat)")
    axes[0, 0].legend()
    axes[1, 0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
