"""Pictures of results and ground truth (onnx_dl.drawing) and what ``onnx-dl apply`` prints and draws."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import onnx_dl as dl
from onnx_dl import cli, drawing
from onnx_dl.errors import DLParamError

GREY = 100.0  # the test images' value: no palette colour, so a class colour found is drawn
SHAPES = {"class_ids": [0, 1, 2, 3], "class_names": ["background", "circle", "square", "triangle"],
          "image_width": 64, "image_height": 64}


def _grey(height: int, width: int, channels: int = 3) -> np.ndarray:
    return np.full((height, width, channels), GREY, np.float32)


def _pixels(picture: Image.Image) -> np.ndarray:
    assert picture.mode == "RGB"
    return np.asarray(picture).astype(np.int64)


def _has(region: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool((region == np.asarray(colour)).all(axis=-1).any())


def test_size_rule() -> None:
    # scaled up so the shorter side is min_side; font max(12, short // 32); strip 2 * (f // 2) + lines * (3f // 2)
    assert drawing.picture_size((64, 64, 3), 3) == (384, 384 + 6 * 2 + 3 * 18)
    assert drawing.picture_size((40, 100), 1) == (960, 384 + 12 + 18)  # aspect kept: 100 * 384 / 40
    assert drawing.picture_size((40, 100), 1, min_side=80) == (200, 80 + 12 + 18)
    assert drawing.picture_size((800, 1000, 1), 2) == (1000, 800 + 24 + 2 * 37)  # not scaled; f = 25
    picture = drawing.draw(_grey(800, 1000, 1), {"image_label_id": 2}, SHAPES, title="big")
    assert picture.size == (1000, 800 + 24 + 2 * 37)


@pytest.mark.parametrize("height, width", [(64, 64), (30, 45)])
def test_classification_result_and_truth(height: int, width: int) -> None:
    params = {**SHAPES, "type": "classification"}
    result = {"classification_class_ids": [2, 1, 0, 3], "classification_class_names": ["square", "circle",
              "background", "triangle"], "classification_confidences": [0.8, 0.1, 0.06, 0.04]}
    picture = drawing.draw(_grey(height, width), result, params)
    w, h = drawing.scaled_size(height, width)
    assert min(w, h) == 384 and abs(w / h - width / height) < 0.01
    assert picture.size == drawing.picture_size((height, width), 3)  # the best three classes
    pixels = _pixels(picture)
    assert tuple(pixels[h - 2, w - 2]) == drawing.class_colour(2, params)  # the frame: the best class
    assert tuple(pixels[h // 2, w // 2]) == (100, 100, 100)
    truth = drawing.draw(_grey(height, width), {"image": _grey(height, width), "image_label_id": 1}, params,
                         title="truth")
    assert truth.size == drawing.picture_size((height, width), 2)  # title + the label
    assert tuple(_pixels(truth)[h - 2, w - 2]) == drawing.class_colour(1, params) == drawing.PALETTE[1]


def test_multi_label_result_and_truth() -> None:
    params = {**SHAPES, "type": "multi_label_classification", "min_confidence": 0.5}
    result = {"classification_class_ids": [3, 1], "classification_class_names": ["triangle", "circle"],
              "classification_confidences": [0.9, 0.7], "classification_all_confidences": [0.1, 0.7, 0.2, 0.9]}
    picture = drawing.draw(_grey(64, 64), result, params)
    assert picture.size == (384, 384 + 12 + 2 * 18)
    image_part = _pixels(picture)[:384]
    assert _has(image_part, drawing.class_colour(3, params)) and _has(image_part, drawing.class_colour(1, params))
    assert not _has(image_part, drawing.class_colour(2, params))
    # a result without all_confidences is told by params["type"]
    assert drawing.annotation_kind({k: v for k, v in result.items() if k != "classification_all_confidences"},
                                   params) == ("multi_label_classification", True)
    nothing = drawing.draw(_grey(64, 64), {**result, "classification_class_ids": [], "classification_class_names": [],
                                           "classification_confidences": []}, params)
    assert nothing.size == (384, 384 + 12 + 18)  # one line: no class
    truth = drawing.draw(_grey(64, 64, 1), {"image_label_ids": [2]}, params)
    assert truth.size == (384, 384 + 12 + 18)
    assert _has(_pixels(truth)[:384], drawing.class_colour(2, params))


def _blend(colour: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(int(np.rint((1 - drawing.MASK_ALPHA) * GREY + drawing.MASK_ALPHA * c)) for c in colour)


def test_segmentation_result_and_truth() -> None:
    labels = np.zeros((64, 64), np.int64)
    labels[8:24, 8:40] = 1
    labels[40:56, 40:56] = 3
    params = {**SHAPES, "type": "segmentation"}
    result = {"segmentation_image": labels, "segmentation_confidence": np.ones((64, 64), np.float32)}
    picture = drawing.draw(_grey(64, 64), result, params)
    assert picture.size == (384, 384 + 12 + 3 * 18)  # background, circle, triangle
    pixels = _pixels(picture)  # scale 6
    assert tuple(pixels[16 * 6, 24 * 6]) == _blend(drawing.class_colour(1, params))
    assert tuple(pixels[48 * 6, 48 * 6]) == _blend(drawing.class_colour(3, params))
    assert tuple(pixels[60 * 6, 4 * 6]) == (100, 100, 100)  # background: not tinted
    # ground truth on a preprocessed (-127..128) image of another size, with ignored pixels (255)
    truth_labels = np.zeros((32, 48), np.int64)
    truth_labels[0:16, 24:48] = 2
    truth_labels[31] = 255
    preprocessed = np.full((32, 48, 3), GREY - 127.0, np.float32)
    truth = drawing.draw(preprocessed, {"image": preprocessed, "segmentation_image": truth_labels}, params,
                         value_range=(-127.0, 128.0))
    assert truth.size == (576, 384 + 12 + 3 * 18)  # 48 * 12 wide; background, square, 255
    pixels = _pixels(truth)
    assert tuple(pixels[8 * 12, 36 * 12]) == _blend(drawing.class_colour(2, params))
    assert tuple(pixels[31 * 12 + 6, 10 * 12]) == _blend(drawing.NO_CLASS_COLOUR)
    assert tuple(pixels[20 * 12, 10 * 12]) == (100, 100, 100)


def test_detection_result_and_truth() -> None:
    params = {**SHAPES, "type": "detection"}
    result = {"bbox_row1": np.array([15.5, 39.5]), "bbox_col1": np.array([7.5, 35.5]),
              "bbox_row2": np.array([31.5, 55.5]), "bbox_col2": np.array([39.5, 59.5]),
              "bbox_class_id": np.array([1, 3]), "bbox_class_name": ["circle", "triangle"],
              "bbox_confidence": np.array([0.9, 0.6])}
    # the raw image is 96 x 128; the boxes are in the model's 64 x 64 frame: rows * 6, columns * 8
    picture = drawing.draw(_grey(96, 128), result, params)
    assert picture.size == (512, 384 + 12 + 2 * 18)
    pixels = _pixels(picture)
    # box 1 covers frame rows 16..31, columns 8..39: its left edge at x = 64, top at y = 96
    assert tuple(pixels[24 * 6, 8 * 8]) == drawing.class_colour(1, params)
    assert tuple(pixels[24 * 6, 40 * 8 - 1]) == drawing.class_colour(1, params)
    assert tuple(pixels[32 * 6 - 1, 24 * 8]) == drawing.class_colour(1, params)
    assert tuple(pixels[24 * 6, 24 * 8]) == (100, 100, 100)  # inside: untouched
    assert tuple(pixels[48 * 6, 36 * 8]) == drawing.class_colour(3, params)
    assert _has(pixels[:96], drawing.class_colour(1, params))  # the chip above the box
    # ground truth: boxes in the sample's own (64 x 64) frame, no confidences
    truth = {"image": _grey(64, 64), "bbox_row1": [15.5], "bbox_col1": [7.5], "bbox_row2": [31.5],
             "bbox_col2": [39.5], "bbox_label_id": [2]}
    picture = drawing.draw(truth["image"], truth, params)
    assert picture.size == (384, 384 + 12 + 18)
    pixels = _pixels(picture)
    assert tuple(pixels[24 * 6, 8 * 6]) == drawing.class_colour(2, params)
    no_boxes = {k: [] for k in ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2", "bbox_label_id")}
    assert drawing.draw(_grey(64, 64), no_boxes, params).size == (384, 384 + 12 + 18)  # "no boxes"


def test_without_freetype_the_bitmap_font_and_the_same_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFont

    if hasattr(ImageFont, "load_default_imagefont"):
        monkeypatch.setattr(drawing, "_font", lambda size: ImageFont.load_default_imagefont())
    result = {"bbox_row1": [1.5], "bbox_col1": [1.5], "bbox_row2": [20.5], "bbox_col2": [30.5],
              "bbox_class_id": [3], "bbox_class_name": ["triangle"], "bbox_confidence": [0.5]}
    picture = drawing.draw(_grey(64, 64), result, SHAPES, title="bitmap font")
    assert picture.size == (384, 384 + 12 + 2 * 18)
    assert _has(_pixels(picture)[:384], drawing.class_colour(3, SHAPES))


def test_bad_input() -> None:
    with pytest.raises(DLParamError, match="neither a result nor a labelled sample"):
        drawing.draw(_grey(8, 8), {"image": _grey(8, 8)}, SHAPES)
    with pytest.raises(DLParamError, match="value_range"):
        drawing.draw(_grey(8, 8), {"image_label_id": 0}, SHAPES, value_range=(1.0, 1.0))
    with pytest.raises(DLParamError, match="shape"):
        drawing.draw(np.zeros((2, 3, 4, 5)), {"image_label_id": 0}, SHAPES)


def test_needs_pillow_only() -> None:
    tree = ast.parse(Path(drawing.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported <= {"PIL", "numpy", "__future__", "collections", "typing"}, imported


def _write_png(path: Path, height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def test_cli_apply_prints_ids_and_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    classifier = dl.read_dl_model("classifier_compact")
    names = [f"class {i}" for i in classifier.params["class_ids"]]
    dl.set_dl_model_param(classifier, "class_names", names)
    dl.write_dl_model(classifier, tmp_path / "classifier.onnx")
    detector = dl.create_dl_model_detection("classifier_compact", 3, {
        "image_width": 64, "image_height": 64, "class_names": ["cat", "dog", "bird"], "min_confidence": 0.0,
        "max_num_detections": 5})
    dl.write_dl_model(detector, tmp_path / "detector.onnx")
    _write_png(tmp_path / "photo.png", 40, 48)

    assert cli.main(["apply", str(tmp_path / "classifier.onnx"), str(tmp_path / "photo.png"),
                     "--draw", str(tmp_path / "drawn")]) == 0
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert line["image"] == str(tmp_path / "photo.png") and isinstance(line["class_id"], int)
    assert line["class_name"] == names[classifier.params["class_ids"].index(line["class_id"])]
    assert 0.0 <= line["confidence"] <= 1.0
    with Image.open(tmp_path / "drawn" / "photo_result.png") as picture:
        assert picture.size == drawing.picture_size((40, 48), 3) == (461, 384 + 12 + 3 * 18)

    assert cli.main(["apply", str(tmp_path / "detector.onnx"), str(tmp_path / "photo.png"),
                     "--draw", str(tmp_path / "boxes")]) == 0
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert 1 <= len(line["boxes"]) <= 5
    for box in line["boxes"]:
        assert set(box) == {"class_id", "class_name", "confidence", "row1", "col1", "row2", "col2"}
        assert isinstance(box["class_id"], int) and box["class_name"] == ["cat", "dog", "bird"][box["class_id"]]
        assert box["row1"] == round(box["row1"], 2) and box["row2"] >= box["row1"]
    lines = len({box["class_id"] for box in line["boxes"]})
    with Image.open(tmp_path / "boxes" / "photo_result.png") as picture:
        assert picture.size == drawing.picture_size((40, 48), lines)


def test_summary_of_every_type() -> None:
    params = {**SHAPES}
    multi = cli._summary({"classification_class_ids": [3], "classification_class_names": ["triangle"],
                          "classification_confidences": [0.91234], "classification_all_confidences": [0, 0, 0, 0.9]},
                         params)
    assert multi == {"classes": [{"id": 3, "name": "triangle", "confidence": 0.9123}]}
    labels = np.array([[0, 0, 1], [3, 3, 3]])
    segmentation = cli._summary({"segmentation_image": labels, "segmentation_confidence": np.ones((2, 3))}, params)
    assert segmentation == {"pixels_per_class": {"0 background": 2, "1 circle": 1, "3 triangle": 3}}
    boxes = cli._summary({"bbox_row1": np.array([1.234]), "bbox_col1": np.array([2.0]), "bbox_row2": np.array([5.0]),
                          "bbox_col2": np.array([6.0]), "bbox_class_id": np.array([2]),
                          "bbox_class_name": ["square"], "bbox_confidence": np.array([0.5])}, params)
    assert boxes == {"boxes": [{"class_id": 2, "class_name": "square", "confidence": 0.5, "row1": 1.23,
                                "col1": 2.0, "row2": 5.0, "col2": 6.0}]}
    assert json.dumps(boxes)
    word = cli._summary({"word": "AB12", "word_confidence": 0.876543, "char_candidates": []}, params)
    assert word == {"word": "AB12", "word_confidence": 0.8765}
