"""Evaluating a model on a dataset split or on samples: apply it, then the measures of its type
(:mod:`onnx_dl.measures`, re-exported here: ``from onnx_dl.evaluation import mean_average_precision``)."""

from __future__ import annotations

from typing import Any

from . import model_type
from .errors import DLSampleError
from .tasks.detection import EVALUATION_MIN_CONFIDENCE
from .measures import (COCO_IOU_THRESHOLDS, RECALL_POINTS, average_precision, classification_measures,
                       confusion_matrix, detection_measures, mean_average_precision, segmentation_measures)

__all__ = ["COCO_IOU_THRESHOLDS", "EVALUATION_MIN_CONFIDENCE", "RECALL_POINTS", "average_precision",
           "classification_measures", "confusion_matrix", "detection_measures", "evaluate_dl_model",
           "evaluate_with_results", "main_measure",
           "mean_average_precision", "segmentation_measures"]


def main_measure(type_name: str) -> tuple[str, Any]:
    """The measure that picks the best model of a type, and ``better(new, old)`` for it."""
    found = model_type.get(type_name)
    if found.LOWER_IS_BETTER:
        return found.MAIN_MEASURE, lambda new, old: new < old
    return found.MAIN_MEASURE, lambda new, old: new > old


def evaluate_dl_model(model: Any, dataset: dict[str, Any] | None = None, split: str = "validation",
                      samples: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The measures of ``model`` on the ``split`` of ``dataset`` (or on preprocessed ``samples``).

    The measures are the model type's (``measures`` of its module; classification:
    :func:`classification_measures`, segmentation: :func:`segmentation_measures`, detection:
    :func:`detection_measures`). Dataset images are read and preprocessed to the
    model's size and value range first.

    A detector is evaluated on all its detections scoring at least
    :data:`EVALUATION_MIN_CONFIDENCE` (0.05, COCO practice), whatever its ``min_confidence``
    (which applies to ``apply_dl_model`` only and is not changed); NMS and ``max_num_detections``
    are the model's. So the measure describes the model, not the display threshold, and
    ``train_dl_model``'s validation measures the same way.
    """
    return evaluate_with_results(model, dataset, split, samples)[0]


def evaluate_with_results(model: Any, dataset: dict[str, Any] | None = None, split: str = "validation",
                          samples: list[dict[str, Any]] | None = None
                          ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`evaluate_dl_model`'s measures, with the results and the preprocessed samples they came from
    (what a report draws)."""
    from .operators import apply_with

    if samples is None:
        if dataset is None:
            raise DLSampleError("evaluate_dl_model: give a dataset or samples")
        from .dataset import gen_dl_samples, split_indices
        from .preprocess import preprocess_dl_samples

        indices = split_indices(dataset, split)
        if not indices:
            raise DLSampleError(f"evaluate_dl_model: the dataset has no {split!r} samples")
        samples = preprocess_dl_samples(gen_dl_samples(dataset, indices), model.params)
    kind = model_type.get(model.params["type"])
    results = apply_with(model, samples, overrides=kind.EVALUATION_OVERRIDES or None)
    return kind.measures(results, samples, model.params), results, samples
