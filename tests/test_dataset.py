"""Datasets: the three file formats and DLDataset JSON, splitting, sample generation, errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnx_dl import dataset as D
from onnx_dl import model_type
from onnx_dl.errors import DLDatasetError


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_classification_folder_tree(tmp_path: Path) -> None:
    for name, value in [("cat", 10), ("dog", 200)]:
        for i in range(3):
            _png(tmp_path / name / f"{i}.png", np.full((4, 5, 3), value + i))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    dataset = D.read_dl_dataset(tmp_path)
    assert dataset["type"] == "classification"
    assert dataset["class_ids"] == [0, 1] and dataset["class_names"] == ["cat", "dog"]
    assert [s["image_label_id"] for s in dataset["samples"]] == [0, 0, 0, 1, 1, 1]
    sample = D.gen_dl_samples(dataset, [4])[0]
    assert sample["image"].shape == (4, 5, 3) and sample["image"].dtype == np.float32
    assert np.all(sample["image"] == 201) and sample["image_label_id"] == 1


def test_coco_boxes_become_pixel_centred(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", np.zeros((20, 30, 3)))
    _png(tmp_path / "b.png", np.zeros((20, 30, 3)))
    coco = {"images": [{"id": 7, "file_name": "a.png"}, {"id": 9, "file_name": "b.png"}],
            "categories": [{"id": 3, "name": "bolt"}, {"id": 1, "name": "nut"}],
            "annotations": [{"image_id": 7, "category_id": 3, "bbox": [2, 4, 10, 6]},
                            {"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1]},
                            {"image_id": 7, "category_id": 1, "bbox": [0, 0, 30, 20], "iscrowd": 1}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    dataset = D.read_dl_dataset(tmp_path / "coco.json")
    assert dataset["type"] == "detection"
    assert dataset["class_ids"] == [1, 3] and dataset["class_names"] == ["nut", "bolt"]
    first, second = dataset["samples"]
    assert first["bbox_label_id"] == [3, 1]
    # [x, y, w, h] = [2, 4, 10, 6]: columns 2..11 and rows 4..9 -> col1 1.5, row1 3.5, col2 11.5, row2 9.5
    assert (first["bbox_row1"][0], first["bbox_col1"][0], first["bbox_row2"][0], first["bbox_col2"][0]) == \
        (3.5, 1.5, 9.5, 11.5)
    assert second["bbox_label_id"] == [] and second["bbox_row1"] == []  # an image without boxes is valid
    sample = D.gen_dl_samples(dataset, [0])[0]
    assert sample["bbox_col2"].tolist() == [11.5, 0.5] and sample["bbox_label_id"].dtype == np.int64


def test_segmentation_masks(tmp_path: Path) -> None:
    labels = np.array([[0, 1], [2, 1]])
    _png(tmp_path / "img" / "x.jpg", np.zeros((2, 2, 3)))
    _png(tmp_path / "lab" / "x.png", labels)
    dataset = D.read_dl_dataset_segmentation(tmp_path / "img", tmp_path / "lab", [0, 1, 2], ["bg", "a", "b"])
    sample = D.gen_dl_samples(dataset, [0])[0]
    assert sample["segmentation_image"].tolist() == labels.tolist()
    assert sample["segmentation_image"].dtype == np.int64


def test_dldataset_json_round_trip_with_relative_folders(tmp_path: Path) -> None:
    path = D.write_synthetic_dataset("segmentation", tmp_path / "seg", count=6, size=16, seed=3)
    stored = json.loads(path.read_text())
    assert stored["image_dir"] == "images" and stored["segmentation_dir"] == "labels"  # portable
    dataset = D.read_dl_dataset(path)
    D.split_dl_dataset(dataset, 50, 25, seed=0)
    D.write_dl_dataset(dataset, tmp_path / "copy.json")
    again = D.read_dl_dataset(tmp_path / "copy.json")
    assert again["samples"] == dataset["samples"] and again["image_dir"] == dataset["image_dir"]


@pytest.mark.parametrize("kind", model_type.names())
def test_synthetic_datasets_read_back_to_what_was_generated(tmp_path: Path, kind: str) -> None:
    from onnx_dl import synthetic

    path = D.write_synthetic_dataset(kind, tmp_path / kind, count=8, size=32, seed=5)
    dataset = D.read_dl_dataset(path, type=kind)
    assert len(dataset["samples"]) == 8
    samples = D.gen_dl_samples(dataset, range(8))
    if kind == "classification":
        generated = synthetic.classification_samples(8, 32, 5)
        by_label = Counter(s["image_label_id"] for s in generated)
        assert Counter(s["image_label_id"] for s in samples) == by_label
    elif kind == "detection":
        generated = synthetic.detection_samples(8, 32, 5)
        for ours, original in zip(samples, generated):
            for key in (*D.BOX_KEYS, "bbox_label_id"):
                np.testing.assert_allclose(ours[key], original[key])
            np.testing.assert_allclose(ours["image"], np.clip(np.rint(original["image"] + 127), 0, 255))
    elif kind == "multi_label_classification":  # class ids follow the sorted names of the classes present
        generated = synthetic.multi_label_samples(8, 32, 5)
        names = dataset["class_names"]
        for ours, original in zip(samples, generated):
            assert sorted(names[i] for i in ours["image_label_ids"]) == sorted(
                synthetic.SHAPES[i] for i in original["image_label_ids"])
            np.testing.assert_allclose(ours["image"], np.clip(np.rint(original["image"] + 127), 0, 255))
    elif kind == "ocr_recognition":  # size: the width; word images a quarter as high
        generated = synthetic.word_samples(8, 32, 8, 5)
        assert [s["word"] for s in samples] == [s["word"] for s in generated]
        for ours, original in zip(samples, generated):
            np.testing.assert_allclose(ours["image"].reshape(8, 32), np.clip(np.rint(original["image"][:, :, 0] + 127),
                                                                            0, 255))
    else:
        generated = synthetic.segmentation_samples(8, 32, 5)
        for ours, original in zip(samples, generated):
            assert np.array_equal(ours["segmentation_image"], original["segmentation_image"])


def _labelled(counts: dict[int, int]) -> dict:
    samples = [{"image_file_name": f"{c}_{i}.png", "image_id": len(counts) * 1000 + i, "image_label_id": c}
               for c, n in counts.items() for i in range(n)]
    return {"class_ids": list(counts), "class_names": [str(c) for c in counts], "image_dir": "/", "samples": samples}


def test_split_is_stratified_reproducible_and_complete() -> None:
    dataset = _labelled({0: 100, 1: 40, 2: 1})
    D.split_dl_dataset(dataset, 70, 20, seed=4)
    per_class = Counter((s["image_label_id"], s["split"]) for s in dataset["samples"])
    assert (per_class[0, "train"], per_class[0, "validation"], per_class[0, "test"]) == (70, 20, 10)
    assert (per_class[1, "train"], per_class[1, "validation"], per_class[1, "test"]) == (28, 8, 4)
    assert per_class[2, "train"] == 1  # a class of one sample still lands in train
    first = [s["split"] for s in dataset["samples"]]
    D.split_dl_dataset(dataset, 70, 20, seed=4)
    assert [s["split"] for s in dataset["samples"]] == first
    D.split_dl_dataset(dataset, 70, 20, seed=5)
    assert [s["split"] for s in dataset["samples"]] != first
    indices = [D.split_indices(dataset, split) for split in D.SPLITS]
    assert sorted(i for part in indices for i in part) == list(range(141))


def test_detection_split_stratifies_by_the_most_frequent_box_label() -> None:
    samples = [{"image_file_name": f"{i}.png", "bbox_label_id": [i % 2, i % 2, 1 - i % 2], **{k: [0, 0, 0] for k in
                                                                                             D.BOX_KEYS}}
               for i in range(20)]
    dataset = {"class_ids": [0, 1], "class_names": ["a", "b"], "image_dir": "/", "samples": samples}
    D.split_dl_dataset(dataset, 50, 50, seed=0)
    assert Counter((i % 2, s["split"]) for i, s in enumerate(samples)) == {(0, "train"): 5, (0, "validation"): 5,
                                                                            (1, "train"): 5, (1, "validation"): 5}


def test_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"images": [\n  1,\n  }')
    with pytest.raises(DLDatasetError, match=r"broken.json.*not valid JSON.*line 3"):
        D.read_dl_dataset(tmp_path / "broken.json")
    _png(tmp_path / "imgs" / "a.png", np.zeros((2, 2, 3)))
    coco = {"images": [{"id": 1, "file_name": "imgs/a.png"}], "categories": [{"id": 0, "name": "x"}],
            "annotations": [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    with pytest.raises(DLDatasetError, match=r"coco.json.*annotation 0: category_id 5 is not in 'categories'"):
        D.read_dl_dataset(tmp_path / "coco.json")
    (tmp_path / "cls" / "a").mkdir(parents=True)
    (tmp_path / "cls" / "a" / "bad.png").write_bytes(b"not a png")
    dataset = D.read_dl_dataset(tmp_path / "cls")
    with pytest.raises(DLDatasetError, match=r"cannot read image .*bad.png"):
        D.gen_dl_samples(dataset, [0])
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DLDatasetError, match="empty.*no images"):
        D.read_dl_dataset(tmp_path / "empty")
    _png(tmp_path / "seg_img" / "x.png", np.zeros((2, 2, 3)))
    (tmp_path / "seg_lab").mkdir()
    with pytest.raises(DLDatasetError, match=r"x.png.*has no label mask x.png"):
        D.read_dl_dataset_segmentation(tmp_path / "seg_img", tmp_path / "seg_lab", [0, 1])
    with pytest.raises(DLDatasetError, match="does not exist"):
        D.read_dl_dataset(tmp_path / "nothing_here")
    with pytest.raises(DLDatasetError, match="annotates classification, expected detection"):
        D.read_dl_dataset(tmp_path / "cls", type="detection")


def test_dldataset_with_unknown_label_is_refused(tmp_path: Path) -> None:
    content = _labelled({0: 2})
    content["samples"][1]["image_label_id"] = 4
    (tmp_path / "d.json").write_text(json.dumps(content))
    with pytest.raises(DLDatasetError, match=r"sample 1: label ids \[4\] are not in class_ids \[0\]"):
        D.read_dl_dataset(tmp_path / "d.json")


def test_bad_split_arguments() -> None:
    with pytest.raises(DLDatasetError, match="train_percent"):
        D.split_dl_dataset(_labelled({0: 3}), 80, 30)
    with pytest.raises(DLDatasetError, match="expected one of"):
        D.split_indices(_labelled({0: 3}), "holdout")


def _coco_layout(root: Path, split: str = "val2017", count: int = 6) -> Path:
    """COCO's own layout from a generated detection dataset: ``annotations/instances_<split>.json``
    with bare file names, the images in ``<split>/``."""
    made = D.write_synthetic_dataset("detection", root / "made", count, 16, seed=0)
    coco = json.loads(made.read_text())
    for image in coco["images"]:
        image["file_name"] = Path(image["file_name"]).name
    (root / "made" / "images").rename(root / split)
    (root / "annotations").mkdir()
    target = root / "annotations" / f"instances_{split}.json"
    target.write_text(json.dumps(coco))
    made.unlink()
    return target


def test_coco_images_beside_in_the_standard_layout_or_given(tmp_path: Path) -> None:
    import shutil

    beside = D.write_synthetic_dataset("detection", tmp_path / "beside", 4, 16, seed=0)
    assert D.read_dl_dataset(beside)["image_dir"] == str(beside.parent.resolve())
    found = _coco_layout(tmp_path / "coco")
    dataset = D.read_dl_dataset(found)
    assert dataset["image_dir"] == str((tmp_path / "coco" / "val2017").resolve())
    assert D.gen_dl_samples(dataset, [5])[0]["image"].shape == (16, 16, 3)
    assert D.read_dl_dataset_from_coco(found)["image_dir"] == dataset["image_dir"]  # the reader finds them too
    shutil.copytree(tmp_path / "coco" / "val2017", tmp_path / "coco" / "images")
    assert D.read_dl_dataset(found)["image_dir"].endswith("val2017")  # the json's own suffix first
    train = found.with_name("instances_train2017.json")
    train.write_text(found.read_text())  # no train2017/: the next candidate, images/
    assert D.read_dl_dataset(train)["image_dir"] == str((tmp_path / "coco" / "images").resolve())
    shutil.copytree(tmp_path / "coco" / "val2017", tmp_path / "elsewhere")
    given = D.read_dl_dataset(found, image_dir=tmp_path / "elsewhere")  # given explicitly: it wins
    assert given["image_dir"] == str((tmp_path / "elsewhere").resolve())
    assert D.read_dl_dataset_from_coco(found, tmp_path / "elsewhere")["image_dir"] == given["image_dir"]


def test_missing_files_are_listed_in_one_error(tmp_path: Path) -> None:
    coco = D.write_synthetic_dataset("detection", tmp_path / "det", 8, 16, seed=0)
    for index in range(1, 8):
        (tmp_path / "det" / "images" / f"{index:05d}.png").unlink()
    with pytest.raises(DLDatasetError) as caught:
        D.read_dl_dataset(coco)
    message = str(caught.value)
    assert "\n" not in message and "annotations.json" in message
    assert f"7 of 8 image files missing in {str((tmp_path / 'det').resolve())!r}" in message
    assert all(f"'images/{i:05d}.png'" in message for i in range(1, 6)) and "00006" not in message
    assert "and 2 more" in message and "00000" not in message and "--image-dir" in message
    layout = _coco_layout(tmp_path / "coco", count=3)
    (tmp_path / "coco" / "val2017").rename(tmp_path / "coco" / "pictures")
    with pytest.raises(DLDatasetError, match=r"3 of 3 image files missing in .*annotations'.*also searched "
                                             r".*val2017', .*images', .*train2017'"):
        D.read_dl_dataset(layout)
    assert len(D.read_dl_dataset(layout, image_dir=tmp_path / "coco" / "pictures")["samples"]) == 3
    with pytest.raises(DLDatasetError, match=r"3 of 3 image files missing in .*nowhere' \(no such folder\)"):
        D.read_dl_dataset(layout, image_dir=tmp_path / "nowhere")


def test_segmentation_and_csv_files_checked_and_image_dir_given(tmp_path: Path) -> None:
    import re

    seg = D.write_synthetic_dataset("segmentation", tmp_path / "seg", 4, 16, seed=0)
    (tmp_path / "seg" / "labels" / "00002.png").unlink()
    labels = str((tmp_path / "seg" / "labels").resolve())
    expected = re.escape(f"1 of 4 label images missing in {labels!r}: '00002.png'") + "$"
    with pytest.raises(DLDatasetError, match=expected):
        D.read_dl_dataset(seg)
    (tmp_path / "seg" / "images").rename(tmp_path / "moved")
    with pytest.raises(DLDatasetError, match=r"4 of 4 image files missing .*; 1 of 4 label images missing"):
        D.read_dl_dataset(seg)
    _png(tmp_path / "seg" / "labels" / "00002.png", np.zeros((16, 16)))
    dataset = D.read_dl_dataset(seg, image_dir=tmp_path / "moved")
    assert dataset["image_dir"] == str((tmp_path / "moved").resolve()) and dataset["segmentation_dir"] == labels
    assert D.gen_dl_samples(dataset, [2])[0]["segmentation_image"].shape == (16, 16)
    csv = D.write_synthetic_dataset("multi_label_classification", tmp_path / "ml", 4, 16, seed=0)
    (tmp_path / "other").mkdir()
    (tmp_path / "ml" / "images").rename(tmp_path / "other" / "images")  # the CSV names images/00000.png ...
    with pytest.raises(DLDatasetError, match=r"labels.csv'.*4 of 4 image files missing"):
        D.read_dl_dataset(csv)
    assert D.read_dl_dataset(csv, image_dir=tmp_path / "other")["image_dir"] == str((tmp_path / "other").resolve())


def test_class_folder_tree_refuses_an_image_dir(tmp_path: Path) -> None:
    folder = D.write_synthetic_dataset("classification", tmp_path / "cls", 4, 16, seed=0)
    with pytest.raises(DLDatasetError, match=r"class-folder tree.*image_dir .* does not apply"):
        D.read_dl_dataset(folder, image_dir=tmp_path)
