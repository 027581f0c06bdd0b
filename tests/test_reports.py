"""Evaluation reports (issue 20): the text for a known case, the JSON against the measures, the pictures,
the worst-first order of the prediction grid, and the command line's evaluate and train folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import onnx_dl as dl
from onnx_dl import reports
from onnx_dl.evaluation import classification_measures, evaluate_with_results

PARAMS = {"type": "classification", "class_ids": [0, 1, 2], "class_names": ["circle", "square", "triangle"],
          "image_width": 8, "image_height": 8, "image_num_channels": 3, "image_range_min": -127.0,
          "image_range_max": 128.0}


def _known():
    """Three classes, five samples: truth 0 0 1 2 2, predicted 0 1 1 2 0."""
    truth, predicted = [0, 0, 1, 2, 2], [0, 1, 1, 2, 0]
    rng = np.random.default_rng(0)
    samples = [{"image": rng.uniform(-127, 128, (8, 8, 3)).astype(np.float32), "image_label_id": t} for t in truth]
    results = [{"classification_class_ids": [p, *[c for c in range(3) if c != p]],
                "classification_class_names": [PARAMS["class_names"][p]] * 3,
                "classification_confidences": [0.5 + 0.1 * i, 0.2, 0.1]} for i, p in enumerate(predicted)]
    return results, samples


def test_the_report_text_of_a_known_case():
    results, samples = _known()
    measures = classification_measures(results, samples, PARAMS["class_ids"])
    text = reports.format_report(measures, PARAMS)
    assert ["top1_error", "0.4000"] in [line.split() for line in text.splitlines()]
    # circle: predicted twice (once right), true twice (once found): precision 0.5, recall 0.5
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["id", "class"])
    assert lines[header].split() == ["id", "class", "precision", "recall", "f_score"]
    assert lines[header + 1].split() == ["0", "circle", "0.5000", "0.5000", "0.5000"]
    assert lines[header + 2].split() == ["1", "square", "0.5000", "1.0000", "0.6667"]
    assert lines[header + 3].split() == ["2", "triangle", "1.0000", "0.5000", "0.6667"]
    matrix = lines[lines.index("  absolute_confusion_matrix (rows: predicted, columns: ground truth)") + 1:]
    assert matrix[1].split() == ["circle", "1", "0", "1"] and matrix[2].split() == ["square", "1", "1", "0"]
    assert matrix[3].split() == ["triangle", "0", "0", "1"]


def test_written_files_hold_the_measures_and_the_pictures_open(tmp_path):
    pytest.importorskip("matplotlib")
    results, samples = _known()
    measures = classification_measures(results, samples, PARAMS["class_ids"])
    written = reports.write_report(tmp_path, measures, PARAMS, results, samples)
    names = {p.name for p in written}
    assert names == {"evaluation.json", "report.txt", "confusion_matrix.png", "confusion_matrix_normalized.png",
                     "predictions.png"}
    stored = json.loads((tmp_path / "evaluation.json").read_text())
    assert stored["top1_error"] == pytest.approx(measures["top1_error"])
    assert stored["precision"] == {str(k): pytest.approx(v) for k, v in measures["precision"].items()}
    assert stored["absolute_confusion_matrix"] == measures["absolute_confusion_matrix"].tolist()
    for name in names - {"evaluation.json", "report.txt"}:
        with Image.open(tmp_path / name) as picture:
            assert picture.width >= 200 and picture.height >= 200, name


def test_the_grid_shows_the_worst_predictions_first():
    results, samples = _known()
    scores = reports.error_scores(results, samples, PARAMS)
    # wrong: samples 1 (conf 0.6) and 4 (conf 0.9); right: 0 (0.5), 2 (0.7), 3 (0.8)
    assert list(np.argsort(-scores, kind="stable")) == [4, 1, 0, 2, 3]


def test_nan_measures_are_written_as_null(tmp_path):
    measures = {"mean_ap": 0.5, "ap_per_class": {0: 0.5, 1: float("nan")}}
    params = dict(PARAMS, type="multi_label_classification", class_ids=[0, 1], class_names=["a", "b"])
    reports.write_report(tmp_path, measures, params)
    assert json.loads((tmp_path / "evaluation.json").read_text())["ap_per_class"] == {"0": 0.5, "1": None}
    assert (tmp_path / "report.txt").read_text().splitlines()[-1].split() == ["1", "b", "-"]


@pytest.mark.parametrize("kind", ["segmentation", "detection", "multi_label_classification"])
def test_each_type_writes_its_pictures(tmp_path, kind):
    pytest.importorskip("matplotlib")
    from onnx_dl import model_type
    from test_model_types import SIZES, _model

    task = model_type.get(kind)
    model = _model(task)
    samples = task.synthetic_samples(4, SIZES[kind], 3)
    if kind != "detection":
        dl.set_dl_model_param(model, "class_ids", list(range(4)))
    measures, results, used = evaluate_with_results(model, samples=samples)
    written = {p.name for p in reports.write_report(tmp_path, measures, model.params, results, used)}
    expected = {"segmentation": {"class_iou.png", "confusion_matrix.png"},
                "detection": {"precision_recall.png"}, "multi_label_classification": {"precision_recall.png"}}[kind]
    assert expected | {"evaluation.json", "report.txt", "predictions.png"} <= written
    with Image.open(tmp_path / "predictions.png") as grid:
        assert grid.width >= 4 * 200


def test_a_class_without_detections_still_gets_its_curve(tmp_path):
    """A ground-truth class the detector never predicts: its curve is one point at recall 0 (it broke the plot)."""
    pytest.importorskip("matplotlib")
    from onnx_dl.measures import detection_measures

    params = dict(PARAMS, type="detection", min_confidence=0.5)
    box = {"bbox_row1": [1.0], "bbox_col1": [1.0], "bbox_row2": [5.0], "bbox_col2": [5.0]}
    samples = [{"image": np.zeros((8, 8, 3), np.float32), **box, "bbox_label_id": [2]}]
    results = [{**box, "bbox_class_id": [0], "bbox_class_name": ["circle"], "bbox_confidence": [0.9]}]
    measures = detection_measures(results, samples, PARAMS["class_ids"])
    written = {p.name for p in reports.write_report(tmp_path, measures, params, results, samples)}
    assert "precision_recall.png" in written and measures["ap_50_per_class"][2] == 0.0
    assert reports.error_scores(results, samples, params).tolist() == [2.0]  # one box missed, one matching none


def test_without_matplotlib_the_numbers_are_written_and_said_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.setattr(reports, "_told_about_matplotlib", False)
    results, samples = _known()
    measures = classification_measures(results, samples, PARAMS["class_ids"])
    for folder in ("a", "b"):
        written = {p.name for p in reports.write_report(tmp_path / folder, measures, PARAMS, results, samples)}
        assert written == {"evaluation.json", "report.txt", "predictions.png"}
    assert capsys.readouterr().out.count("matplotlib is not installed") == 1
