"""Reading the parquet layout, box conversion, augmentations, collate/padding, clear errors."""
import random

import cv2
import numpy as np
import pytest
import torch

import data
from tools import datacheck
from tools import sources
from tools.augment import paste_objects
from data import boxes_to_image, dataset_image_size
from tools.checks import image_header_size
from conftest import CARD, encode_jpeg, make_dataset, make_row, synthetic_image, write_split



def test_class_names_from_card_drop_placeholder(tiny_dataset):
    assert sources.load_class_names(tiny_dataset) == ["box-red", "box-blue"]


def test_class_names_fall_back_to_halo(tmp_path):
    assert sources.load_class_names(tmp_path) == sources.HALO_CLASSES


def test_boxes_are_xyxy_and_labels_zero_based(tmp_path):
    rng = np.random.default_rng(0)
    img, _, _ = synthetic_image(rng, 64)
    write_split(tmp_path, "train", [make_row(7, encode_jpeg(img), 64, [[10, 20, 5, 8]], [2])])
    (rec,) = data.read_split(tmp_path, "train", num_classes=2)
    assert rec.image_id == 7
    assert np.allclose(rec.boxes, [[10, 20, 15, 28]]), (f"COCO bbox [x, y, w, h] = [10, 20, 5, 8] must be read as xyxy "
                                                        f"[x, y, x + w, y + h] = [10, 20, 15, 28], got {rec.boxes.tolist()}")
    assert rec.labels.tolist() == [1], (f"category 2 of a 1-based RF100 dataset is model class 1, got "
                                        f"{rec.labels.tolist()}: subtract FIRST_CATEGORY_ID")


def test_dataset_item_matches_parquet_without_augmentation(tiny_dataset):
    ds = data.DetectionDataset(tiny_dataset, "validation", data.build_transforms(128, False))
    recs = data.read_split(tiny_dataset, "validation", 2)
    image, target = ds[5]
    # uint8 pixels, exactly the decoded image: the backbone normalises on the model's device.
    assert image.shape == (3, 128, 128) and image.dtype == torch.uint8, (
        f"the dataset hands out uint8 (3, S, S) pixels, got {image.dtype} {tuple(image.shape)}")
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(data.decode_image(recs[5])))
    np.testing.assert_allclose(target["boxes"].numpy(), recs[5].boxes, atol=1e-4)
    assert target["labels"].tolist() == recs[5].labels.tolist()


def test_letterbox_scales_boxes(tiny_dataset):
    ds = data.DetectionDataset(tiny_dataset, "validation", data.build_transforms(64, False))
    recs = data.read_split(tiny_dataset, "validation", 2)
    _, target = ds[3]
    assert np.allclose(target["boxes"].numpy(), recs[3].boxes / 2, atol=1e-3), (
        "a 128 px image letterboxed to 64 px: its boxes must be halved with it (return the transform's boxes, not "
        "the record's)")


def test_train_augmentations_keep_boxes_inside(tiny_dataset):
    ds = data.DetectionDataset(tiny_dataset, "train", data.build_transforms(96, True))
    for epoch in range(3):  # the dataset seeds each item's augmentation by (seed, epoch, index)
        for i in range(len(ds)):
            image, t = ds[epoch, i]
            b = t["boxes"]
            assert image.shape == (3, 96, 96)
            assert len(b) == len(t["labels"])
            assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 96).all()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def _jittered(jitter, image, boxes, seed):
    """One basic-aug training transform at a given seed -> (image (S,S,3) 0..255, boxes)."""
    tf = data.build_transforms(416, True, "basic", jitter)
    tf.set_random_state(np.random.default_rng(seed), random.Random(seed))
    out = tf(image=image, bboxes=boxes, labels=np.zeros(len(boxes), np.int64))
    return out["image"].permute(1, 2, 0).numpy().astype(float), np.asarray(out["bboxes"])


def test_yolov8_jitter_scales_x_and_y_alike_on_every_image():
    # A 100x50 box in the middle of a 416 image: it stays inside at any scale 0.5-1.5 and shift <= 10 %.
    grey, box = np.full((416, 416, 3), 128, np.uint8), np.array([[158, 183, 258, 233]], np.float32)
    for jitter, lo, hi in (("light", 0.75, 1.25), ("yolov8", 0.5, 1.5)):
        sizes = np.array([np.ptp(_jittered(jitter, grey, box, s)[1][0].reshape(2, 2), axis=0) for s in range(30)])
        sx, sy = sizes[:, 0] / 100, sizes[:, 1] / 50                     # (30,) each axis' scale factor
        assert (sx > lo - 1e-3).all() and (sx < hi + 1e-3).all()
        if jitter == "yolov8":  # every image rescaled, the box keeps its shape, the range is used to its ends
            np.testing.assert_allclose(sx, sy, rtol=1e-4)
            assert (np.abs(sx - 1) > 1e-4).all() and sx.min() < 0.75 and sx.max() > 1.25
        else:                   # half the images untouched; albumentations draws x and y apart
            assert (np.abs(sx - 1) < 1e-4).sum() >= 5 and np.abs(sx - sy).max() > 0.05


def test_yolov8_jitter_colour_gains_are_multiplicative_and_hue_moves_little():
    box = np.array([[158, 183, 258, 233]], np.float32)
    red = np.zeros((416, 416, 3), np.uint8)
    red[:] = (200, 40, 40)                                              # hue 0 degrees
    for jitter in ("light", "yolov8"):
        hue_moves, lifted = [], 0
        for s in range(30):  # the centre pixel is image content at any scale and shift the jitter draws
            pixel = _jittered(jitter, red, box, s)[0][208, 208].astype(np.uint8)
            hue = float(cv2.cvtColor(pixel[None, None], cv2.COLOR_RGB2HSV_FULL)[0, 0, 0]) * 360 / 256
            hue_moves.append(min(hue, 360 - hue))
            lifted += _jittered(jitter, np.zeros_like(red), box, s)[0][208, 208].max() > 0
        if jitter == "yolov8":  # 0.015 of the circle is 5.4 degrees; 8 allows for 8-bit hue and RGB rounding
            assert max(hue_moves) < 8 and lifted == 0  # gains: black stays black
        else:                   # the light jitter's additive shifts move both
            assert max(hue_moves) > 8 and lifted > 0


def test_image_without_objects_is_a_valid_sample(tiny_dataset):
    ds = data.DetectionDataset(tiny_dataset, "train", data.build_transforms(64, True))
    image, target = ds[0]  # the fixture makes the first two images empty
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_collate_and_pad_targets():
    t1 = {"boxes": torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2]]), "labels": torch.tensor([0, 1]), "image_id": 0}
    t2 = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": 1}
    images, targets = data.collate([(torch.zeros(3, 8, 8), t1), (torch.ones(3, 8, 8), t2)])
    assert images.shape == (2, 3, 8, 8) and len(targets) == 2
    boxes, labels, mask = data.pad_targets(targets)
    assert boxes.shape == (2, 2, 4) and labels.tolist() == [[0, 1], [0, 0]]
    assert mask.tolist() == [[True, True], [False, False]], "gt_mask must be False on the padded slots"


def test_default_image_size_is_the_datasets(tiny_dataset):
    assert dataset_image_size(tiny_dataset) == 128


def test_resolve_explicit_and_env(tiny_dataset, tmp_path, monkeypatch):
    assert sources.resolve_data_root(str(tiny_dataset), verbose=False) == tiny_dataset
    monkeypatch.setenv("DETECTION_DATA", str(tiny_dataset))
    assert sources.resolve_data_root(None, verbose=False) == tiny_dataset


def test_resolve_nothing_found_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DETECTION_DATA", str(tmp_path / "nope"))
    monkeypatch.setattr(sources, "OFFLINE_STANDIN", tmp_path / "missing")
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(data.DataError) as e:
        sources.resolve_data_root(None, verbose=False)
    msg = str(e.value)
    assert "DETECTION_DATA" in msg and "offline" in msg and "--data" in msg


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="no .*train-\\*.parquet"):
        sources.resolve_data_root(str(tmp_path / "nowhere"), verbose=False)


def write_rows_with(tmp_path, bad_row):
    """A train split with one good row and ``bad_row``; returns the root."""
    img, _, _ = synthetic_image(np.random.default_rng(0), 64)
    write_split(tmp_path, "train", [make_row(0, encode_jpeg(img), 64, [[1, 1, 5, 5]], [1]), bad_row])
    for split in ("validation", "test"):
        write_split(tmp_path, split, [make_row(9, encode_jpeg(img), 64, [[1, 1, 5, 5]], [1])])
    return tmp_path


def good_jpeg():
    return encode_jpeg(synthetic_image(np.random.default_rng(1), 64)[0])


BAD_ROWS = {  # kind -> (row, message, fatal, boxes left in that row when not strict)
    "negative width": (lambda: make_row(1, good_jpeg(), 64, [[10, 10, -3, 5], [2, 2, 9, 9]], [1, 2]),
                       "non-positive width/height", True, 1),
    "zero height": (lambda: make_row(1, good_jpeg(), 64, [[10, 10, 5, 0]], [1]), "non-positive width/height", True, 0),
    "category out of list": (lambda: make_row(1, good_jpeg(), 64, [[10, 10, 5, 5]], [9]),
                             "category id 9 is outside the class list", True, 0),
    "placeholder category 0": (lambda: make_row(1, good_jpeg(), 64, [[10, 10, 5, 5]], [0]),
                               "category id 0 is outside the class list", True, 0),
    "box partly outside": (lambda: make_row(1, good_jpeg(), 64, [[50, 50, 30, 5]], [1]), "partly outside", False, 1),
    "box entirely outside": (lambda: make_row(1, good_jpeg(), 64, [[80, 80, 5, 5]], [1]), "entirely outside", True, 0),
    "wrong width column": (lambda: make_row(1, good_jpeg(), 128, [[1, 1, 5, 5]], [1]), "the image is 64x64", False, 1),
    "duplicate image id": (lambda: make_row(0, good_jpeg(), 64, [[1, 1, 5, 5]], [1]), "duplicate image_id", False, 1),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_bad_rows_strict_error_names_file_and_row(tmp_path, kind):
    row, message, _, _ = BAD_ROWS[kind]
    root = write_rows_with(tmp_path, row())
    with pytest.raises(data.DataError, match=f"train-00000-of-00001.parquet row 1 \\(image_id \\d\\).*{message}"):
        data.read_split(root, "train", num_classes=2, strict=True)


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_bad_rows_default_warn_and_repair(tmp_path, kind, capsys):
    row, message, fatal, left = BAD_ROWS[kind]
    root = write_rows_with(tmp_path, row())
    records = data.read_split(root, "train", num_classes=2)
    assert len(records) == 2 and len(records[1].labels) == left
    assert (records[1].boxes >= 0).all() and (records[1].boxes <= 64).all()
    err = capsys.readouterr().err
    assert message in err and "1 problem(s)" in err
    # The loader then serves the row without crashing.
    ds = data.DetectionDataset(root, "train", data.build_transforms(64, True), ["a", "b"])
    assert ds[1][1]["boxes"].shape == (left, 4)
    # tools/datacheck.py lists it and fails only when data had to be thrown away.
    with pytest.raises(SystemExit) if fatal else _no_exit():
        datacheck.main(["--data", str(root)])
    assert message in capsys.readouterr().out


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        assert kind is None, f"unexpected {kind}: {value}"


def test_unreadable_image_bytes(tmp_path, capsys):
    root = write_rows_with(tmp_path, make_row(3, b"not a jpeg", 64, [[1, 1, 5, 5]], [1]))
    with pytest.raises(data.DataError, match="row 1 \\(image_id 3\\).*could not be decoded"):
        data.read_split(root, "train", 2, strict=True)
    assert len(data.read_split(root, "train", 2)) == 1  # skipped, with a warning
    with pytest.raises(SystemExit):
        datacheck.main(["--data", str(root)])


def test_truncated_image_is_dropped_when_decoded(tmp_path, capsys):
    broken = good_jpeg()[:1000]  # a valid header, a cut-off body: only decoding finds out
    assert image_header_size(broken) == (64, 64)
    root = write_rows_with(tmp_path, make_row(1, broken, 64, [[1, 1, 5, 5]], [1]))
    tf = data.build_transforms(64, False)
    ds = data.DetectionDataset(root, "train", tf, ["a", "b"])  # decodes up front (cache): dropped, said so
    assert [r.image_id for r in ds.records] == [0] and "image skipped" in capsys.readouterr().err
    with pytest.raises(data.DataError, match="row 1"):
        data.DetectionDataset(root, "train", tf, ["a", "b"], strict=True)
    lazy = data.DetectionDataset(root, "train", tf, ["a", "b"], cache=False)  # decodes when read: an error
    with pytest.raises(data.DataError, match="row 1.*could not be decoded"):
        lazy[1]


def test_cache_gives_the_same_items_and_drops_broken_images(tmp_path, capsys):
    broken = good_jpeg()[:1000]
    root = write_rows_with(tmp_path, make_row(1, broken, 64, [[1, 1, 5, 5]], [1]))
    tf = data.build_transforms(64, True)
    cached = data.DetectionDataset(root, "train", tf, ["a", "b"])
    assert len(cached) == 1 and "image skipped" in capsys.readouterr().err
    plain = data.DetectionDataset(root, "train", tf, ["a", "b"], cache=False)
    torch.testing.assert_close(cached[0][0], plain[0][0])
    torch.testing.assert_close(cached[0][1]["boxes"], plain[0][1]["boxes"])


def test_check_statistics(tiny_dataset, capsys):
    datacheck.main(["--data", str(tiny_dataset)])
    out = capsys.readouterr().out
    assert "== train: 48 usable images, 2 without boxes" in out
    assert "problems: 0" in out and "finest stride" in out and "same-class box pairs" in out


def test_check_counts_small_boxes_at_the_training_size(tmp_path, capsys):
    # Two images of different native sizes; the letterbox scales each by img_size / its own longer side.
    rng = np.random.default_rng(0)
    big, small = synthetic_image(rng, 64)[0], synthetic_image(rng, 32)[0]
    rows = [make_row(0, encode_jpeg(big), 64, [[1, 1, 5, 5], [10, 10, 6, 12], [30, 30, 20, 20]], [1, 2, 1]),
            make_row(1, encode_jpeg(small), 32, [[2, 2, 6, 6]], [2])]
    for split in ("train", "validation", "test"):
        write_split(tmp_path, split, rows)
    (tmp_path / "README.md").write_text(CARD)

    def train_line(*size):
        datacheck.main(["--data", str(tmp_path), *size])
        return next(line for line in capsys.readouterr().out.splitlines() if "finest stride" in line)

    # native: 5 px, 6 px and 6 px sides are under 8
    assert train_line().endswith(": 3 (box-red 1, box-blue 2)")
    # 80 px: the 64-px image scales by 1.25 (5 -> 6.25, 6 -> 7.5 stay under 8), the 32-px one by 2.5 (6 -> 15)
    assert train_line("--img-size", "80").endswith(": 2 (box-red 1, box-blue 1)")
    # 128 px: x2 and x4, nothing under 8 any more
    assert train_line("--img-size", "128").endswith(": 0 (box-red 0, box-blue 0)")


def test_max_same_class_iou_hand_computed():
    rec = lambda boxes, labels: data.Record(0, b"", np.array(boxes, np.float32), np.array(labels), "")  # noqa: E731
    records = [
        # two class-0 boxes sharing half their width: IoU = 50 / 150; the class-1 box overlaps both more but
        # is another class, so it pairs with nobody
        rec([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 15, 10]], [0, 0, 1]),
        rec([[0, 0, 4, 4]], [0]),                                     # one box: no pair
    ]
    pairs, worst = datacheck.max_same_class_iou(records)
    assert pairs == 1 and worst == pytest.approx(50 / 150)


def test_make_dataset_splits(tmp_path):
    root = make_dataset(tmp_path, sizes={"train": 3, "validation": 2, "test": 1})
    assert [len(data.read_split(root, s, 2)) for s in data.SPLITS] == [3, 2, 1]


# --------------------------------------------------------------------------- copy-paste
def paste_case():
    rng = np.random.default_rng(3)
    target = {"image": np.zeros((50, 60, 3), np.uint8), "bboxes": np.array([[0, 0, 10, 10]], np.float32),
              "labels": np.array([0])}
    donor = {"image": rng.integers(1, 255, (40, 40, 3), dtype=np.uint8),
             "bboxes": np.array([[5.2, 6.7, 15.1, 20.0]], np.float32), "labels": np.array([1])}
    return target, donor


def test_paste_objects_puts_the_donors_box_pixels_and_label_where_its_new_box_says():
    target, donor = paste_case()
    before = target["image"].copy()
    out = paste_objects(target, [donor], np.random.default_rng(0))
    assert out["labels"].tolist() == [0, 1]
    x1, y1, x2, y2 = out["bboxes"][1].astype(int)
    assert (x2 - x1, y2 - y1) == (16 - 5, 20 - 6)  # the whole pixels around [5.2, 6.7, 15.1, 20.0]
    np.testing.assert_array_equal(out["image"][y1:y2, x1:x2], donor["image"][6:20, 5:16])
    outside = np.ones((50, 60), bool)
    outside[y1:y2, x1:x2] = False
    assert not out["image"][outside].any()              # nothing else painted
    np.testing.assert_array_equal(target["image"], before)  # the input is not modified


def test_paste_objects_never_hides_a_labelled_box():
    target, donor = paste_case()
    donor["bboxes"] = np.array([[0, 0, 40, 40]], np.float32)  # a 40x40 crop into a 50x60 frame
    target["bboxes"] = np.array([[18, 18, 42, 32]], np.float32)  # any 40x40 place covers > 30 % of this box
    for seed in range(20):
        out = paste_objects(target, [donor], np.random.default_rng(seed))
        assert out["labels"].tolist() == [0]
        np.testing.assert_array_equal(out["image"], target["image"])
    target["bboxes"] = np.zeros((0, 4), np.float32)  # an image without objects takes the paste
    target["labels"] = np.zeros(0, np.int64)
    assert paste_objects(target, [donor], np.random.default_rng(0))["labels"].tolist() == [1]


def test_dataset_copy_paste_adds_objects_repeatably(tiny_dataset):
    tf = data.build_transforms(128, False)  # no other augmentation: boxes only letterboxed
    plain = data.DetectionDataset(tiny_dataset, "train", tf)
    pasted = data.DetectionDataset(tiny_dataset, "train", tf, copy_paste=2)
    n_plain = [len(plain[i][1]["labels"]) for i in range(len(plain))]
    n_pasted = [len(pasted[i][1]["labels"]) for i in range(len(pasted))]
    assert all(p >= q for p, q in zip(n_pasted, n_plain)) and sum(n_pasted) > sum(n_plain)
    assert all(n <= q + 2 for n, q in zip(n_pasted, n_plain))  # at most one object per donor
    torch.testing.assert_close(pasted[4][0], pasted[4][0])     # seeded by (seed, epoch, index)


@pytest.mark.parametrize("height, width, size", [(64, 96, 64), (80, 48, 64), (90, 150, 128), (416, 416, 256),
                                                 (37, 101, 160)])
def test_boxes_to_image_undoes_albumentations_letterbox(height, width, size):
    boxes = np.array([[3.0, 5.0, width - 10.0, height - 4.0], [10.5, 2.25, 20.75, 30.0]], np.float32)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    out = data.build_transforms(size, False)(image=np.zeros((height, width, 3), np.uint8), bboxes=boxes,
                                                   labels=[0, 1])
    assert out["image"].shape[-2:] == (size, size)
    back = boxes_to_image(torch.as_tensor(np.asarray(out["bboxes"], np.float32)), (height, width), size)
    torch.testing.assert_close(back, torch.as_tensor(boxes), atol=1e-3, rtol=0, msg=lambda m: (
        f"letterbox ({height}x{width} image in a {size} px square) then boxes_to_image must give the image's own "
        f"boxes back: the letterbox pads bottom/right (top-left position) and the way back multiplies by W/w, H/h\n{m}"))


def test_boxes_to_image_clips_to_the_image():
    # A box that reaches into the letterbox padding (the image fills 64 x 43 of the 64 px square).
    back = boxes_to_image(torch.tensor([[-2.0, 40.0, 70.0, 60.0]]), (64, 96), 64)
    torch.testing.assert_close(back, torch.tensor([[0.0, 40 * 64 / 43, 96.0, 64.0]]))


def test_augmentation_is_a_function_of_seed_epoch_and_image(tiny_dataset):
    """Item i of epoch e is augmented from generators seeded by (seed, e, i): the same in every run, every
    worker and after a resume, and different from one epoch to the next."""
    def build():
        return data.DetectionDataset(tiny_dataset, "train", data.build_transforms(128, True, "strong"),
                                     seed=5, copy_paste=1)

    first, again = build(), build()  # a second run (or a resumed one, or another worker)
    for i in (0, 3, 7):
        image, target = first[i]
        image2, target2 = again[i]
        assert torch.equal(image, image2) and torch.equal(target["boxes"], target2["boxes"]), (
            f"item {i} came out differently in two runs: every random draw of the augmentation (mosaic donors, "
            "copy-paste, albumentations) must come from generators seeded by (seed, epoch, index)")
    assert torch.equal(first[0][0], again[0, 0][0]), "an index alone is epoch 0's item"
    assert not torch.equal(first[0][0], again[1, 0][0]), "epoch 1 augmented item 0 exactly as epoch 0 did"


def test_epoch_sampler_draws_one_permutation_per_epoch():
    """Every epoch visits every image once, in a new order, each index tagged with its epoch; and exactly one
    permutation is drawn per epoch, however much of it the loader consumed (workers prefetch past the end, a
    --time run stops mid-epoch), so the order never depends on the worker count."""
    whole = data.EpochSampler(10, torch.Generator().manual_seed(0))
    part = data.EpochSampler(10, torch.Generator().manual_seed(0))
    orders = []
    for epoch in range(3):
        whole.set_epoch(epoch)
        part.set_epoch(epoch)
        keys = list(whole)
        assert {e for e, _ in keys} == {epoch}, "each index must come with the current epoch: (epoch, index)"
        assert sorted(i for _, i in keys) == list(range(10)), "an epoch must visit every image exactly once"
        orders.append([i for _, i in keys])
        first = next(iter(part))  # this loader stops after one item
        assert first == keys[0], (
            f"epoch {epoch}: a loader that stopped early in the last epoch sees another order; draw the epoch's "
            "permutation whole when the epoch starts, one per epoch")
    assert orders[0] != orders[1] != orders[2], "the training images must be shuffled anew every epoch"
