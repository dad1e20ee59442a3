"""What the loader gains by shipping uint8 pixels instead of normalised float32: train.py's training loader
alone (cached images, mosaic + jitter, persistent workers), img/s, against the same loader whose workers
normalise to float32 as a torchvision-style pipeline does (4x the bytes through collate, the workers' shared
memory and, on a GPU, pinning and the host-to-device copy). Alternated, median of ``--repeats``.

    python results/bench/loader_bytes.py --sizes 416 640 --workers 2
"""
import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import albumentations as A
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from data import DetectionDataset, build_transforms  # noqa: E402
from tools.sources import resolve_data_root  # noqa: E402
from train import make_loader  # noqa: E402


class FloatInWorkers(DetectionDataset):
    """The same samples, normalised to float32 in the worker by albumentations' ``Normalize`` (the weights'
    mean = std = 0.5) as the last step of the pipeline: (3, S, S) float32."""

    normalize = A.Normalize(mean=(0.5,) * 3, std=(0.5,) * 3)

    def __getitem__(self, key):
        image, target = super().__getitem__(key)                              # (3, S, S) uint8
        hwc = self.normalize(image=image.permute(1, 2, 0).numpy())["image"]   # (S, S, 3) float32
        return torch.from_numpy(hwc).permute(2, 0, 1), target


def images_per_second(ds, workers: int, batch: int, steps: int) -> float:
    loader = make_loader(ds, argparse.Namespace(batch_size=batch), torch.device("cpu"), workers,
                         shuffle_with=torch.Generator().manual_seed(0))
    batches = iter(loader)
    for _ in itertools.islice(batches, 3):  # workers started, their prefetch filled
        pass
    t0 = time.perf_counter()
    for _ in itertools.islice(batches, steps):
        pass
    return steps * batch / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=[416, 640])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    root = resolve_data_root(args.data)
    print(f"loader alone, {args.workers} workers, batch {args.batch_size}, {args.steps} batches, "
          f"median of {args.repeats}, img/s")
    print(f"{'size':>5} {'uint8':>8} {'float32':>8} {'ratio':>6}")
    for size in args.sizes:
        tf = build_transforms(size, True, "strong")
        kinds = {"uint8": DetectionDataset(root, "train", tf), "float32": FloatInWorkers(root, "train", tf)}
        runs = {k: [] for k in kinds}
        for _ in range(args.repeats):
            for k, ds in kinds.items():
                runs[k].append(images_per_second(ds, args.workers, args.batch_size, args.steps))
        u, f = statistics.median(runs["uint8"]), statistics.median(runs["float32"])
        print(f"{size:>5} {u:>8.1f} {f:>8.1f} {u / f:>6.2f}")


if __name__ == "__main__":
    main()
