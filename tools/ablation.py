"""The ablation table of RESULTS.md: one train.py run per row, all with the same time budget, seed and size.

    python -m tools.ablation --time 10                     # runs every row not finished yet, then prints the table
    python -m tools.ablation --time 10 --only baseline +TAL
    python -m tools.ablation --time 10 --table             # only print the table of the finished rows
    python -m tools.ablation --time 10 --seed 1            # a second seed, for rows closer than ~0.02
    python -m tools.ablation --time 10 --table --table-seeds 0 1 --plot table.png --curves curves.png

Rows 1-7 build the table's default row step by step (simple assigner, IoU loss, no augmentation ->
... -> TAL + GIoU + basic augmentation, no EMA); every later row changes ONE thing against that row.
train.py's own defaults add mosaic and EMA, the long-run recipe (RESULTS.md section 2).
Post-processing (NMS variants, flip TTA) is compared on fixed checkpoints in RESULTS.md, not here.
Runs live in runs/ablation-<time>min-s<seed>/<row>/ (a killed run is resumed from its last.pt); each
finished row's test_results.json and metrics.csv are copied to results/ablation-<time>min-s<seed>/<row>/,
which is committed, so the table survives a fresh checkout.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_ROW = "+aug basic (default)"
# Every row was measured with the depthwise-separable head, 2 loader workers, basic augmentation (mosaic
# off for the last 2 epochs where a row turns it on), no EMA and TOOD's balance (box weight 2.5, one
# distance per side, TAL top-k 13, alpha 1); all are pinned so that the committed table
# stays reproducible whatever train.py's defaults are (the workers change no image, but how many steps fit
# in --time). A row's flags come after these and override them.
PINNED = ("--head-conv depthwise --workers 2 --aug basic --close-mosaic 2 --no-ema "
          "--box-weight 2.5 --box-bins 0 --tal-topk 13 --tal-alpha 1")
ROWS = [  # (name, train.py flags)
    ("baseline", "--assigner simple --box-loss iou --aug none"),
    ("+TAL", "--assigner tal --box-loss iou --aug none"),
    ("+warm-up then TAL", "--assigner tal --warmup-assigner-epochs 1 --box-loss iou --aug none"),
    ("TAL + GIoU", "--box-loss giou --aug none"),
    ("TAL + DIoU", "--box-loss diou --aug none"),
    ("TAL + CIoU", "--box-loss ciou --aug none"),
    (DEFAULT_ROW, ""),
    ("+aug strong (mosaic)", "--aug strong"),
    ("+PAN", "--neck pan"),
    ("+CSP neck blocks", "--neck-block csp"),
    ("+EMA", "--ema"),
    ("QFL", "--cls-loss qfl"),
    ("VFL", "--cls-loss vfl"),
    ("unfreeze 0", "--unfreeze 0"),
    ("unfreeze 4", "--unfreeze 4"),
    ("unfreeze all", "--unfreeze -1"),
    ("img 320", "--img-size 320"),
    ("img 512", "--img-size 512"),
]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def train_command(name, flags, args, out) -> list[str]:
    size = [] if "--img-size" in flags else ["--img-size", str(args.img_size)]
    return [sys.executable, "train.py", "--time", str(args.time), "--seed", str(args.seed), *size, *PINNED.split(),
            *flags.split(), "--out", str(out), "--name", slug(name), "--exist-ok"]


def kept(out: Path, name: str) -> Path:
    """Where a finished row's small result files are kept under version control: results/<table>/<row>/."""
    return Path("results") / out.name / slug(name)


def result_file(out: Path, name: str) -> Path:
    """A finished row's test metrics: results/<table>/<row>/test_results.json."""
    return kept(out, name) / "test_results.json"


def run_row(name, flags, args, out) -> None:
    run = out / slug(name)
    if result_file(out, name).exists():
        return
    cmd = train_command(name, flags, args, out)
    if (run / "last.pt").exists():
        cmd = [sys.executable, "train.py", "--resume", str(run / "last.pt")]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    with open(out / f"{slug(name)}.log", "a") as log:
        # Progress bars refresh once a minute in the log file instead of several times a second.
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "TQDM_MININTERVAL": "60"})
    # runs/ is not committed (checkpoints are large); the numbers and curves are.
    kept(out, name).mkdir(parents=True, exist_ok=True)
    for f in ("test_results.json", "metrics.csv"):
        shutil.copy(run / f, kept(out, name) / f)


def finished_rows(outs: list[Path]) -> list[tuple[str, str, list[dict]]]:
    """(row name, its change, [test results of each finished seed]) for every row finished in any of ``outs``
    (one directory per seed)."""
    found = [(name, f"`{flags or '(defaults)'}`",
              [json.loads(f.read_text()) for f in (result_file(out, name) for out in outs) if f.exists()])
             for name, flags in ROWS]
    return [r for r in found if r[2]]


def mean(results: list[dict], key) -> float:
    return sum(key(r) for r in results) / len(results)


def table(outs: list[Path]) -> str:
    """Markdown table of the finished rows, averaged over the seeds finished for each row; the per-seed
    mAP is listed too, so the spread is visible next to the mean."""
    rows = finished_rows(outs)
    if not rows:
        return "(no finished rows yet)"
    classes = list(rows[0][2][0]["ap_per_class"])
    lines = ["| row | change | test mAP per seed | mAP (mean) | mAP50 | mAP75 | "
             + " | ".join(f"AP {c}" for c in classes) + " | epochs | train img/s |", "|---" * (8 + len(classes)) + "|"]
    for name, change, rs in rows:
        seeds = " / ".join(f"{r['map']:.3f}" for r in rs)
        aps = " | ".join(f"{mean(rs, lambda r: r['ap_per_class'][c]):.3f}" for c in classes)
        epochs = " / ".join(f"{r['epochs']:g}" for r in rs)
        speed = f"{mean(rs, lambda r: r['train_img_per_s']):.1f}"
        lines.append(f"| {name} | {change} | {seeds} | **{mean(rs, lambda r: r['map']):.3f}** | "
                     f"{mean(rs, lambda r: r['map_50']):.3f} | {mean(rs, lambda r: r['map_75']):.3f} | {aps} | "
                     f"{epochs} | {speed} |")
    return "\n".join(lines)


def plot(outs: list[Path], path: Path, title: str) -> None:
    """Test mAP per row: a bar for the mean over seeds, a dot per seed (the spread is the noise level)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = finished_rows(outs)[::-1]  # first row on top
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    for y, (name, _, rs) in enumerate(rows):
        ax.barh(y, mean(rs, lambda r: r["map"]), color="tab:blue", alpha=0.6)
        ax.plot([r["map"] for r in rs], [y] * len(rs), "k.", ms=6)
    default = [mean(rs, lambda r: r["map"]) for name, _, rs in rows if name == DEFAULT_ROW]
    if default:
        ax.axvline(default[0], color="tab:red", lw=1, ls="--", label="default (mean)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(rows)), [name for name, _, _ in rows], fontsize=8)
    ax.set_xlabel("test mAP@[.5:.95] (bar: mean over seeds, dots: each seed)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


def plot_curves(outs: list[Path], names: list[str], path: Path, title: str) -> None:
    """Validation mAP after every epoch of the rows ``names`` against training minutes (the budget every row
    shares): one colour per row, one line style per seed, a marker per epoch. The final test number of a
    row hides how it got there; the curves show who learns faster per minute."""
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for colour, name in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], names):
        for style, out in zip(["-", "--", ":", "-."], outs):
            f = kept(out, name) / "metrics.csv"
            if not f.exists():
                continue
            rows = list(csv.DictReader(f.open()))
            minutes = [sum(float(r["train_s"]) for r in rows[:i + 1]) / 60 for i in range(len(rows))]
            ax.plot(minutes, [float(r["val_map"]) for r in rows], style, color=colour, marker="o", ms=3,
                    label=f"{name} ({out.name.rsplit('-', 1)[-1]})")
    ax.set_xlabel("training minutes (a marker per epoch)")
    ax.set_ylabel("validation mAP@[.5:.95]")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--time", type=float, required=True, help="training minutes per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table-seeds", type=int, nargs="+", default=None,
                   help="with --table: average these seeds' finished rows (default: --seed only)")
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--only", nargs="+", default=None, help="row names to run")
    p.add_argument("--table", action="store_true", help="only print the table")
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw the table as a bar chart")
    p.add_argument("--curves", default=None, metavar="PNG",
                   help="also plot validation mAP against training minutes for --curve-rows")
    p.add_argument("--curve-rows", nargs="+", default=["baseline", "+TAL", "+warm-up then TAL"],
                   help="rows drawn by --curves (default: the three label-assignment rows)")
    args = p.parse_args(argv)
    known = [name for name, _ in ROWS]
    for name in (args.only or []) + (args.curve_rows if args.curves else []):
        if name not in known:
            p.error(f"no row named {name!r}; rows: {', '.join(known)}")
    out = Path("runs") / f"ablation-{args.time:g}min-s{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        for name, flags in ROWS:
            if args.only is None or name in args.only:
                run_row(name, flags, args, out)
    seeds = args.table_seeds or [args.seed]
    print(f"\n{args.time:g} min of training per row, seeds {seeds}, {args.img_size} px; each command: "
          f"python train.py --time {args.time:g} --seed SEED --img-size {args.img_size} <change>\n")
    outs = [Path("runs") / f"ablation-{args.time:g}min-s{s}" for s in seeds]
    print(table(outs))
    title = f"{args.time:g} min of training per row, {args.img_size} px unless the row says otherwise, seeds {seeds}"
    if args.plot:
        plot(outs, Path(args.plot), title)
    if args.curves:
        plot_curves(outs, args.curve_rows, Path(args.curves), title)


if __name__ == "__main__":
    main()
