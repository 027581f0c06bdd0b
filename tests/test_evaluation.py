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
