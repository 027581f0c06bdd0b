"""The command line's dataset options: where the images are (--image-dir, COCO's layout found), and every
file checked before training starts. In-process through ``cli.main``, on tiny generated datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from onnx_dl import cli
from onnx_dl import dataset as D

FAST = ["--epochs", "1", "--batch-size", "4", "--image-size", "32", "--quiet"]


def _coco_layout(root: Path, count: int = 8) -> Path:
    """``annotations/instances_val2017.json`` with bare file names and the images in ``val2017/``."""
    made = D.write_synthetic_dataset("detection", root / "made", count, 32, seed=0)
    coco = json.loads(made.read_text())
    for image in coco["images"]:
        image["file_name"] = Path(image["file_name"]).name
    (root / "made" / "images").rename(root / "val2017")
    (root / "annotations").mkdir()
    target = root / "annotations" / "instances_val2017.json"
    target.write_text(json.dumps(coco))
    shutil.rmtree(root / "made")
    return target


def _train(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["train", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_coco_layout_found_and_image_dir_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = _coco_layout(tmp_path / "coco")
    code, out, err = _train(capsys, "--dataset", str(layout), "--output", str(tmp_path / "runs"), *FAST)
    assert code == 0, err
    assert "training DLModel(type='detection'" in out
    (tmp_path / "coco" / "val2017").rename(tmp_path / "pictures")  # not a standard place: give it
    code, out, err = _train(capsys, "--dataset", str(layout), "--output", str(tmp_path / "runs2"), *FAST)
    assert code == 2 and err.startswith("onnx-dl train: dataset") and "8 of 8 image files missing" in err
    assert "training" not in out
    code, out, err = _train(capsys, "--dataset", str(layout), "--image-dir", str(tmp_path / "pictures"),
                            "--output", str(tmp_path / "runs2"), *FAST)
    assert code == 0, err
    (model,) = (tmp_path / "runs2").glob("*/best_model.onnx")
    assert cli.main(["evaluate", str(model), str(layout), "--image-dir", str(tmp_path / "pictures"),
                     "--split", "train", "--json"]) == 0
    assert "map_50" in json.loads(capsys.readouterr().out)
    assert cli.main(["evaluate", str(model), str(layout)]) == 2
    assert "8 of 8 image files missing" in capsys.readouterr().err


def test_missing_images_fail_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coco = D.write_synthetic_dataset("detection", tmp_path / "det", 10, 32, seed=0)
    for index in (2, 3, 5, 7, 8, 9):
        (tmp_path / "det" / "images" / f"{index:05d}.png").unlink()
    code, out, err = _train(capsys, "--dataset", str(coco), "--output", str(tmp_path / "runs"), *FAST)
    assert code == 2
    assert "training" not in out and "epoch" not in out
    (line,) = err.strip().splitlines()
    assert line.startswith(f"onnx-dl train: dataset {str(coco)!r}: 6 of 10 image files missing in ")
    assert all(f"'images/{i:05d}.png'" in line for i in (2, 3, 5, 7, 8)) and "and 1 more" in line
    assert "00009" not in line and "--image-dir" in line
    assert not list((tmp_path / "runs").glob("*/log.csv"))
    assert cli.main(["evaluate", "classifier_compact", str(coco)]) == 2
    assert "6 of 10 image files missing" in capsys.readouterr().err


def test_image_dir_for_segmentation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seg = D.write_synthetic_dataset("segmentation", tmp_path / "seg", 8, 32, seed=0)
    (tmp_path / "seg" / "images").rename(tmp_path / "photos")
    code, out, err = _train(capsys, "--dataset", str(seg), "--output", str(tmp_path / "runs"), *FAST)
    assert code == 2 and "8 of 8 image files missing" in err and "training" not in out
    code, out, err = _train(capsys, "--dataset", str(seg), "--image-dir", str(tmp_path / "photos"),
                            "--output", str(tmp_path / "runs"), *FAST)
    assert code == 0, err
    assert "training DLModel(type='segmentation'" in out


def test_image_dir_refused_where_it_makes_no_sense(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = D.write_synthetic_dataset("classification", tmp_path / "cls", 8, 32, seed=0)
    code, out, err = _train(capsys, "--dataset", str(folder), "--image-dir", str(tmp_path),
                            "--output", str(tmp_path / "runs"), *FAST)
    assert code == 2 and "training" not in out
    assert err.startswith("onnx-dl train: dataset") and "class-folder tree" in err and "does not apply" in err
    code, out, err = _train(capsys, "--image-dir", str(tmp_path), "--output", str(tmp_path / "runs"), *FAST)
    assert code == 2 and "--image-dir needs --dataset" in err and "generating" not in out
