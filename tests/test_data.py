"""Reading the parquet layout, box conversion, augmentations, collate/padding, clear errors."""
import numpy as np
import pytest
import torch

import data
from conftest import encode_jpeg, make_dataset, make_row, synthetic_image, write_split

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def test_class_names_from_card_drop_placeholder(tiny_dataset):
    assert data.load_class_names(tiny_dataset) == ["box-red", "box-blue"]


def test_class_names_fall_back_to_halo(tmp_path):
    assert data.load_class_names(tmp_path) == data.HALO_CLASSES


def test_boxes_are_xyxy_and_labels_zero_based(tmp_path):
    rng = np.random.default_rng(0)
    img, _, _ = synthetic_image(rng, 64)
    write_split(tmp_path, "train", [make_row(7, encode_jpeg(img), 64, [[10, 20, 5, 8]], [2])])
    (rec,) = data.read_split(tmp_path, "train", num_classes=2)
    assert rec.image_id == 7
    np.testing.assert_allclose(rec.boxes, [[10, 20, 15, 28]])
    assert rec.labels.tolist() == [1]


def test_dataset_item_matches_parquet_without_augmentation(tiny_dataset):
    ds = data.DetectionDataset(tiny_dataset, "validation", data.build_transforms(128, False, MEAN, STD))
    recs = data.read_split(tiny_dataset, "validation", 2)
    image, target = ds[5]
    assert image.shape == (3, 128, 128) and image.dtype == torch.float32
    np.testing.assert_allclose(target["boxes"].numpy(), recs[5].boxes, atol=1e-4)
    assert target["labels"].tolist() == recs[5].labels.tolist()
    # Normalised with the backbone's mean/std: a mid-grey pixel of 127.5 would be 0.
    assert -1.01 <= image.min() and image.max() <= 1.01


def test_letterbox_scales_boxes(tiny_dataset):
    ds = data.DetectionDataset(tiny_dataset, "validation", data.build_transforms(64, False, MEAN, STD))
    recs = data.read_split(tiny_dataset, "validation", 2)
    _, target = ds[3]
    np.testing.assert_allclose(target["boxes"].numpy(), recs[3].boxes / 2, atol=1e-3)


def test_train_augmentations_keep_boxes_inside(tiny_dataset):
    ds = data.DetectionDataset(tiny_dataset, "train", data.build_transforms(96, True, MEAN, STD))
    for seed in range(5):
        np.random.seed(seed)
        for i in range(len(ds)):
            image, t = ds[i]
            b = t["boxes"]
            assert image.shape == (3, 96, 96)
            assert len(b) == len(t["labels"])
            assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 96).all()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_image_without_objects_is_a_valid_sample(tiny_dataset):
    ds = data.DetectionDataset(tiny_dataset, "train", data.build_transforms(64, True, MEAN, STD))
    image, target = ds[0]  # the fixture makes the first two images empty
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_collate_and_pad_targets():
    t1 = {"boxes": torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2]]), "labels": torch.tensor([0, 1]), "image_id": 0}
    t2 = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": 1}
    images, targets = data.collate([(torch.zeros(3, 8, 8), t1), (torch.ones(3, 8, 8), t2)])
    assert images.shape == (2, 3, 8, 8) and len(targets) == 2
    boxes, labels, mask = data.pad_targets(targets)
    assert boxes.shape == (2, 2, 4) and labels.tolist() == [[0, 1], [0, 0]]
    assert mask.tolist() == [[True, True], [False, False]]


def test_default_image_size_is_the_datasets(tiny_dataset):
    assert data.dataset_image_size(tiny_dataset) == 128


def test_resolve_explicit_and_env(tiny_dataset, tmp_path, monkeypatch):
    assert data.resolve_data_root(str(tiny_dataset), verbose=False) == tiny_dataset
    monkeypatch.setenv("DETECTION_DATA", str(tiny_dataset))
    assert data.resolve_data_root(None, verbose=False) == tiny_dataset


def test_resolve_nothing_found_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DETECTION_DATA", str(tmp_path / "nope"))
    monkeypatch.setattr(data, "OFFLINE_STANDIN", tmp_path / "missing")
    monkeypatch.setattr(data, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(data.DataError) as e:
        data.resolve_data_root(None, verbose=False)
    msg = str(e.value)
    assert "DETECTION_DATA" in msg and "offline" in msg and "--data" in msg


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="no .*train-\\*.parquet"):
        data.resolve_data_root(str(tmp_path / "nowhere"), verbose=False)


@pytest.mark.parametrize("bbox, cat, message", [
    ([10, 10, -3, 5], 1, "non-positive width/height"),
    ([10, 10, 5, 5], 9, "category id 9 is outside the class list"),
])
def test_bad_rows_name_file_and_row(tmp_path, bbox, cat, message):
    img, _, _ = synthetic_image(np.random.default_rng(0), 64)
    good = make_row(0, encode_jpeg(img), 64, [[1, 1, 5, 5]], [1])
    bad = make_row(1, encode_jpeg(img), 64, [bbox], [cat])
    write_split(tmp_path, "train", [good, bad])
    with pytest.raises(data.DataError, match=f"train-00000-of-00001.parquet row 1 \\(image_id 1\\).*{message}"):
        data.read_split(tmp_path, "train", num_classes=2)


def test_unreadable_image_bytes_name_the_row(tmp_path):
    write_split(tmp_path, "train", [make_row(3, b"not a jpeg", 64, [[1, 1, 5, 5]], [1])])
    ds = data.DetectionDataset(tmp_path, "train", data.build_transforms(64, False, MEAN, STD), ["a", "b"])
    with pytest.raises(data.DataError, match="row 0 \\(image_id 3\\).*could not be decoded"):
        ds[0]


def test_make_dataset_splits(tmp_path):
    root = make_dataset(tmp_path, sizes={"train": 3, "validation": 2, "test": 1})
    assert [len(data.read_split(root, s, 2)) for s in data.SPLITS] == [3, 2, 1]
