"""Evaluation measures on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_dl.evaluation import classification_measures, segmentation_measures


def test_segmentation_measures_by_hand():
    truth = np.array([[0, 0, 1], [1, 2, 255]])
    predicted = np.array([[0, 1, 1], [1, 1, 0]])   # the ignored pixel's prediction does not count
    m = segmentation_measures([{"segmentation_image": predicted}], [{"segmentation_image": truth}], [0, 1, 2], [255])
    # class 0: TP 1, FP 0, FN 1 -> 1/2 ; class 1: TP 2, FP 2 (one 0, one 2), FN 0 -> 2/4 ; class 2: TP 0, FN 1 -> 0
    assert m["class_iou"] == pytest.approx({0: 0.5, 1: 0.5, 2: 0.0})
    assert m["mean_iou"] == pytest.approx(1 / 3)
    assert m["pixel_accuracy"] == pytest.approx(3 / 5)
    assert m["mean_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["pixel_confusion_matrix"].tolist() == [[1, 0, 0], [1, 2, 1], [0, 0, 0]]


def test_classes_without_ground_truth_leave_the_means():
    truth = np.zeros((2, 2), int)
    m = segmentation_measures([{"segmentation_image": truth}], [{"segmentation_image": truth}], [0, 1])
    assert m["mean_iou"] == 1.0 and np.isnan(m["class_iou"][1])


def test_classification_measures_by_hand():
    results = [{"classification_class_ids": [c, 9]} for c in (5, 5, 9, 9, 5)]
    samples = [{"image_label_id": c} for c in (5, 9, 9, 9, 5)]
    m = classification_measures(results, samples, [5, 9])
    assert m["top1_error"] == pytest.approx(1 / 5)
    assert m["precision"] == pytest.approx({5: 2 / 3, 9: 1.0})
    assert m["recall"] == pytest.approx({5: 1.0, 9: 2 / 3})
    assert m["absolute_confusion_matrix"].tolist() == [[2, 1], [0, 2]]


def _ranked(*lists):
    return [{"classification_class_ids": list(ids)} for ids in lists]


def test_classification_halcon_measures_by_hand():
    # truth 0 0 0 1 1 2; each result ranks all three classes by confidence
    samples = [{"image_label_id": t} for t in (0, 0, 0, 1, 1, 2)]
    results = _ranked([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [0, 2, 1], [1, 2, 0])
    m = classification_measures(results, samples, [0, 1, 2])
    # top-1 wrong: samples 2, 4, 5; in the first two: all but sample 4 (label 1 ranked third)
    assert [k for k in m if k.startswith("top")] == ["top1_error", "top2_error", "top3_error"]
    assert m["top1_error"] == pytest.approx(3 / 6)
    assert m["top2_error"] == pytest.approx(1 / 6)
    assert m["top3_error"] == 0.0
    # rows predicted, columns truth: predicted 0 0 1 1 0 1
    assert m["absolute_confusion_matrix"].tolist() == [[2, 1, 0], [1, 1, 1], [0, 0, 0]]
    # class 2 is never predicted: precision NaN, so is its F-score; it is left out of the means
    assert m["precision"][0] == pytest.approx(2 / 3) and m["precision"][1] == pytest.approx(1 / 3)
    assert np.isnan(m["precision"][2])
    assert m["recall"] == pytest.approx({0: 2 / 3, 1: 1 / 2, 2: 0.0})
    # F = 2PR/(P+R): class 0: 2 * 4/9 / (4/3) = 2/3; class 1: 2 * 1/6 / (5/6) = 2/5
    assert m["f_score"][0] == pytest.approx(2 / 3) and m["f_score"][1] == pytest.approx(2 / 5)
    assert np.isnan(m["f_score"][2])
    assert m["mean_precision"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert m["mean_recall"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert m["mean_f_score"] == pytest.approx((2 / 3 + 2 / 5) / 2)
    # columns divided by the ground-truth counts 3, 2, 1
    assert m["relative_confusion_matrix"] == pytest.approx(np.array([[2 / 3, 1 / 2, 0], [1 / 3, 1 / 2, 1], [0, 0, 0]]))


def test_classification_class_absent_from_the_ground_truth_and_all_wrong():
    samples = [{"image_label_id": t} for t in (0, 1, 1)]
    results = _ranked([1, 0, 2], [0, 1, 2], [2, 1, 0])
    m = classification_measures(results, samples, [0, 1, 2])
    assert m["top1_error"] == 1.0 and m["top2_error"] == 0.0 and m["top3_error"] == 0.0
    # precision 0 for every class (each predicted once, wrongly); recall 0, 0 and NaN for class 2 (no samples)
    assert m["precision"] == {0: 0.0, 1: 0.0, 2: 0.0}
    assert m["recall"][0] == 0.0 and m["recall"][1] == 0.0 and np.isnan(m["recall"][2])
    # P = R = 0 gives F = 0; an undefined recall gives NaN
    assert m["f_score"][0] == 0.0 and m["f_score"][1] == 0.0 and np.isnan(m["f_score"][2])
    assert m["mean_precision"] == 0.0 and m["mean_recall"] == 0.0 and m["mean_f_score"] == 0.0
    # the column of class 2 (no samples) stays 0
    assert m["relative_confusion_matrix"].tolist() == [[0.0, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.0]]


@pytest.mark.parametrize("classes, offered", [(2, 2), (5, 5), (7, 5)])
def test_top_k_errors_go_up_to_five_and_the_class_count(classes, offered):
    ids = list(range(classes))
    m = classification_measures(_ranked(ids), [{"image_label_id": classes - 1}], ids)
    assert [k for k in m if k.endswith("_error")] == [f"top{k}_error" for k in range(1, offered + 1)]
    # the label is ranked last: missed by every top-K with K < classes
    assert [m[f"top{k}_error"] for k in range(1, offered + 1)] == [float(k < classes) for k in range(1, offered + 1)]


def test_segmentation_class_pixel_accuracy_and_frequency_weighted_iou_by_hand():
    truth = np.array([[0, 0, 0], [1, 255, 2]])
    predicted = np.array([[0, 0, 3], [1, 1, 1]])   # class 3: predicted once, never in the ground truth
    m = segmentation_measures([{"segmentation_image": predicted}], [{"segmentation_image": truth}], [0, 1, 2, 3],
                              [255])
    assert m["pixel_confusion_matrix"].tolist() == [[2, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    # ground-truth pixels 3, 1, 1, 0; TP 2, 1, 0, 0; FP 0, 1, 0, 1; FN 1, 0, 1, 0
    accuracy = m["class_pixel_accuracy"]
    assert accuracy[0] == pytest.approx(2 / 3) and accuracy[1] == 1.0 and accuracy[2] == 0.0
    assert np.isnan(accuracy[3])
    assert m["class_iou"][0] == pytest.approx(2 / 3) and m["class_iou"][1] == 0.5 and m["class_iou"][2] == 0.0
    assert np.isnan(m["class_iou"][3])
    # (3 * 2/3 + 1 * 1/2 + 1 * 0) / 5
    assert m["frequency_weighted_iou"] == pytest.approx(0.5)
    assert m["mean_iou"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert m["mean_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["pixel_accuracy"] == pytest.approx(3 / 5)


def test_segmentation_measures_of_the_first_case_by_hand():
    truth = np.array([[0, 0, 1], [1, 2, 255]])
    predicted = np.array([[0, 1, 1], [1, 1, 0]])
    m = segmentation_measures([{"segmentation_image": predicted}], [{"segmentation_image": truth}], [0, 1, 2], [255])
    # ground-truth pixels 2, 2, 1; TP 1, 2, 0; IoU 1/2, 1/2, 0
    assert m["class_pixel_accuracy"] == pytest.approx({0: 0.5, 1: 1.0, 2: 0.0})
    assert m["frequency_weighted_iou"] == pytest.approx((2 * 0.5 + 2 * 0.5 + 1 * 0.0) / 5)


def test_segmentation_with_every_pixel_ignored_has_no_means():
    truth = np.full((2, 3), 255)
    m = segmentation_measures([{"segmentation_image": np.zeros((2, 3), int)}], [{"segmentation_image": truth}], [0, 1],
                              [255])
    assert np.isnan(m["frequency_weighted_iou"]) and np.isnan(m["mean_iou"]) and np.isnan(m["mean_accuracy"])
    assert all(np.isnan(v) for v in m["class_pixel_accuracy"].values())


def test_the_report_lists_class_pixel_accuracy_per_class():
    from onnx_dl import reports

    truth = np.array([[0, 0, 1], [1, 2, 255]])
    predicted = np.array([[0, 1, 1], [1, 1, 0]])
    m = segmentation_measures([{"segmentation_image": predicted}], [{"segmentation_image": truth}], [0, 1, 2], [255])
    params = {"type": "segmentation", "class_ids": [0, 1, 2], "class_names": ["background", "disc", "ring"]}
    lines = reports.format_report(m, params).splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["id", "class"])
    assert lines[header].split() == ["id", "class", "class_iou", "class_pixel_accuracy"]
    assert lines[header + 2].split() == ["1", "disc", "0.5000", "1.0000"]
