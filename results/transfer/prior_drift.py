"""How far training moved the box-size prior: the biases of the last box conv of each level (16 bins x 4 sides),
against where ``--box-prior M`` started them (bin i at i * log(M / (1 + M)); 0 for the uniform start).

    python results/transfer/prior_drift.py runs/raccoon/e16-bp2-s0/last.pt [more last.pt ...]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from head import DecoupledHead  # noqa: E402
from tools.checkpoint import read_checkpoint  # noqa: E402


def drift(path: str) -> str:
    ckpt = read_checkpoint(path)
    m, bins = ckpt["train_args"].get("box_prior", 0.0), ckpt["model_config"]["box_bins"]
    start = DecoupledHead(1, 8, 8, box_bins=bins, box_prior=m).box_preds[0].bias.detach().view(4, bins)  # its init
    weights = ckpt.get("train_model") or ckpt["model"]                                    # the raw, trained weights
    lines = [f"{path}: --box-prior {m:g}, {len(ckpt['history'])} epochs trained"]
    for k, bias in weights.items():
        if k.startswith("head.box_preds.") and k.endswith(".bias"):
            moved = (bias.float().view(4, bins) - start).abs()                          # (4 sides, n bins)
            lines.append(f"  level {k.split('.')[2]}: largest move {moved.max():.3f} logits; side 0 now "
                         + " ".join(f"{v:.1f}" for v in bias.float().view(4, bins)[0].tolist()))
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(drift(p) for p in sys.argv[1:]))
