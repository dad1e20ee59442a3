"""Where the data and the pretrained weights come from, online and offline. Not a course concept.

``resolve_data_root`` tries, in order, and prints the one it uses:

1. ``--data DIR``, then ``$DETECTION_DATA``;
2. ``./data/halo-infinite-angel-videogame`` (``git clone https://huggingface.co/datasets/<HF_DATASET>``);
3. a download of that repo with ``huggingface_hub`` (only when the hub answers within seconds);
4. the offline stand-in ``../shared/data/valorant-object-detection`` (same parquet layout).

``load_class_names`` reads a dataset's class names from its card. ``hub_reachable`` is the one network probe; backbone.py asks it before timm's weight download, and the
tests replace it (``tests/conftest.py``) so they behave the same with and without a network.
"""
from __future__ import annotations

import glob
import os
import socket
from pathlib import Path

HF_DATASET = "Francesco/halo-infinite-angel-videogame"
# Where `git clone https://huggingface.co/datasets/<HF_DATASET>` puts the course data.
LOCAL_CLONE = Path("data") / "halo-infinite-angel-videogame"
# Class names of the course dataset, used when a dataset has no card. Index = model class id.
HALO_CLASSES = ["enemy", "enemy-head", "friendly", "friendly-head"]
# The offline stand-in (same parquet layout), in ../shared beside the repo.
OFFLINE_STANDIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "valorant-object-detection"


class DataError(ValueError):
    """A problem with the dataset itself (missing files, a bad row). Printed without a traceback."""


def _is_dataset_root(path: Path) -> bool:
    return bool(glob.glob(str(path / "data" / "train-*.parquet")))


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect with a short timeout, so offline users don't wait on hub retries."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _download_from_hub(dest: Path) -> Path:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=HF_DATASET, repo_type="dataset", local_dir=str(dest))
    return dest


def resolve_data_root(data: str | None = None, verbose: bool = True) -> Path:
    """Return the dataset root to use, trying each source in order and printing the one chosen.

    Order: ``data`` argument -> ``$DETECTION_DATA`` -> ``./data/halo-infinite-angel-videogame`` ->
    hub download into that folder (only when the hub answers within seconds) -> offline stand-in.
    """
    say = print if verbose else (lambda *a, **k: None)
    if data is not None:
        root = Path(data)
        if not _is_dataset_root(root):
            raise DataError(f"--data {root}: no {root}/data/train-*.parquet found (expected the Hugging Face "
                            "parquet layout: <root>/data/{train,validation,test}-*.parquet)")
        say(f"[data] using --data {root}")
        return root
    tried = []
    env = os.environ.get("DETECTION_DATA")
    if env:
        if _is_dataset_root(Path(env)):
            say(f"[data] using $DETECTION_DATA={env}")
            return Path(env)
        tried.append(f"$DETECTION_DATA={env} (no data/train-*.parquet)")
    else:
        tried.append("$DETECTION_DATA (not set)")
    if _is_dataset_root(LOCAL_CLONE):
        say(f"[data] using local clone {LOCAL_CLONE}")
        return LOCAL_CLONE
    tried.append(f"{LOCAL_CLONE} (not there)")
    if hub_reachable():
        try:
            say(f"[data] downloading {HF_DATASET} into {LOCAL_CLONE} ...")
            return _download_from_hub(LOCAL_CLONE)
        except Exception as e:  # any hub failure: fall through to the offline copy
            tried.append(f"hub download of {HF_DATASET} ({type(e).__name__}: {e})")
    else:
        tried.append(f"hub download of {HF_DATASET} (huggingface.co unreachable: offline)")
    if _is_dataset_root(OFFLINE_STANDIN):
        say(f"[data] offline: using the stand-in dataset {OFFLINE_STANDIN}")
        return OFFLINE_STANDIN
    tried.append(f"{OFFLINE_STANDIN} (not there)")
    raise DataError("no dataset found. Tried:\n  - " + "\n  - ".join(tried) +
                    f"\nGet the data with `git clone https://huggingface.co/datasets/{HF_DATASET} {LOCAL_CLONE}` "
                    "or pass --data DIR (a folder holding data/train-*.parquet).")


def load_class_names(root: Path) -> list[str]:
    """Model class names (0-based) from the dataset card's YAML header, without the id-0 placeholder.

    Falls back to the Halo names when the card is missing or has no ``class_label``.
    """
    import yaml

    card = Path(root) / "README.md"
    if card.exists():
        text = card.read_text(encoding="utf-8")
        if text.startswith("---"):
            header = yaml.safe_load(text.split("---")[1])
            for feat in (header or {}).get("dataset_info", {}).get("features", []):
                if feat.get("name") != "objects":
                    continue
                for sub in feat.get("sequence", []):
                    names = sub.get("dtype", {}).get("class_label", {}).get("names") if isinstance(
                        sub.get("dtype"), dict) else None
                    if names:
                        ids = sorted(int(k) for k in names)
                        return [names[str(i)] if str(i) in names else names[i] for i in ids if i > 0]
    return list(HALO_CLASSES)
