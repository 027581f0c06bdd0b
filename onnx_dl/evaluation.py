"""Evaluation measures on results of ``apply_dl_model`` (HALCON's definitions).

Segmentation: a confusion matrix with rows = predicted and columns = ground truth over all
non-ignored pixels; TP = diagonal, FP = row sum - TP, FN = column sum - TP; class IoU =
TP / (TP + FP + FN); classes without ground-truth pixels are left out of the means.
Classification: top-1 error, per-class precision and recall, the confusion matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import DLSampleError
from .samples import id_lookup


def _check_lengths(results: list[dict[str, Any]], samples: list[dict[str, Any]]) -> None:
    if len(results) != len(samples):
        raise DLSampleError(f"expected one result per sample, got {len(results)} results for {len(samples)} samples")


def confusion_matrix(predicted: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts; rows = predicted index, columns = ground-truth index."""
    return np.bincount(predicted * classes + truth, minlength=classes * classes).reshape(classes, classes)


def segmentation_measures(results: list[dict[str, Any]], samples: list[dict[str, Any]], class_ids: list[int],
                          ignore_class_ids: list[int] | tuple[int, ...] = ()) -> dict[str, Any]:
    """``mean_iou``, ``class_iou`` (by class id), ``pixel_accuracy``, ``mean_accuracy``, ``pixel_confusion_matrix``."""
    _check_lengths(results, samples)
    table = {cid: i for i, cid in enumerate(class_ids)}
    matrix = np.zeros((len(class_ids), len(class_ids)), np.int64)
    for index, (result, sample) in enumerate(zip(results, samples)):
        truth = np.asarray(sample["segmentation_image"]).astype(np.int64)
        predicted = np.asarray(result["segmentation_image"]).astype(np.int64)
        if truth.shape != predicted.shape:
            raise DLSampleError(f"sample {index}: segmentation_image of shape {truth.shape}, result of shape "
                                f"{predicted.shape}")
        keep = ~np.isin(truth, list(ignore_class_ids))
        truth_index, predicted_index = id_lookup(truth[keep], table, -1), id_lookup(predicted[keep], table, -1)
        if (truth_index < 0).any() or (predicted_index < 0).any():
            raise DLSampleError(f"sample {index}: a label or result holds ids outside class_ids")
        matrix += confusion_matrix(predicted_index, truth_index, len(class_ids))
    tp = np.diag(matrix).astype(np.float64)
    fp, fn = matrix.sum(axis=1) - tp, matrix.sum(axis=0) - tp
    present = matrix.sum(axis=0) > 0
    iou = np.where(present, tp / np.maximum(tp + fp + fn, 1), np.nan)
    accuracy = np.where(present, tp / np.maximum(tp + fn, 1), np.nan)
    return {
        "mean_iou": float(np.nanmean(iou)), "class_iou": {cid: float(v) for cid, v in zip(class_ids, iou)},
        "pixel_accuracy": float(tp.sum() / max(matrix.sum(), 1)), "mean_accuracy": float(np.nanmean(accuracy)),
        "pixel_confusion_matrix": matrix,
    }


def classification_measures(results: list[dict[str, Any]], samples: list[dict[str, Any]],
                            class_ids: list[int]) -> dict[str, Any]:
    """``top1_error``, per-class ``precision`` and ``recall`` (by class id), ``absolute_confusion_matrix``."""
    _check_lengths(results, samples)
    position = {cid: i for i, cid in enumerate(class_ids)}
    predicted = np.array([position[r["classification_class_ids"][0]] for r in results], np.int64)
    truth = np.array([position[s["image_label_id"]] for s in samples], np.int64)
    matrix = confusion_matrix(predicted, truth, len(class_ids))
    tp = np.diag(matrix).astype(np.float64)
    precision = np.where(matrix.sum(axis=1) > 0, tp / np.maximum(matrix.sum(axis=1), 1), np.nan)
    recall = np.where(matrix.sum(axis=0) > 0, tp / np.maximum(matrix.sum(axis=0), 1), np.nan)
    return {
        "top1_error": float(1.0 - tp.sum() / len(truth)),
        "precision": {cid: float(v) for cid, v in zip(class_ids, precision)},
        "recall": {cid: float(v) for cid, v in zip(class_ids, recall)},
        "absolute_confusion_matrix": matrix,
    }
