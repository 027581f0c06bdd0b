"""Evaluating a model on a dataset split or on samples: apply it, then the measures of its type
(:mod:`onnx_dl.measures`, re-exported here: ``from onnx_dl.evaluation import mean_average_precision``)."""

from __future__ import annotations

from typing import Any

from . import model_type
from .errors import DLParamError, DLSampleError
from .tasks.detection import EVALUATION_MIN_CONFIDENCE
from .measures import (COCO_AREA_RANGES, COCO_IOU_THRESHOLDS, RECALL_POINTS, average_precision,
                       classification_measures, confusion_matrix, detection_measures, mean_average_precision,
                       segmentation_measures)

__all__ = ["COCO_AREA_RANGES", "COCO_IOU_THRESHOLDS", "DETECTION_GEN_PARAM", "EVALUATION_MIN_CONFIDENCE",
           "RECALL_POINTS", "average_precision", "detection_gen_param",
           "classification_measures", "confusion_matrix", "detection_measures", "evaluate_dl_model",
           "evaluate_with_results", "main_measure",
           "mean_average_precision", "segmentation_measures"]


def main_measure(type_name: str) -> tuple[str, Any]:
    """The measure that picks the best model of a type, and ``better(new, old)`` for it."""
    found = model_type.get(type_name)
    if found.LOWER_IS_BETTER:
        return found.MAIN_MEASURE, lambda new, old: new < old
    return found.MAIN_MEASURE, lambda new, old: new > old


DETECTION_GEN_PARAM = ("max_num_detections", "area_ranges")
"""The keys of HALCON's ``evaluate_dl_model`` GenParam that a detector's evaluation takes."""


def evaluate_dl_model(model: Any, dataset: dict[str, Any] | None = None, split: str = "validation",
                      samples: list[dict[str, Any]] | None = None,
                      gen_param: dict[str, Any] | None = None) -> dict[str, Any]:
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

    ``gen_param`` (detection; HALCON's keys, :func:`detection_gen_param`): ``max_num_detections`` (an int
    or a list of levels, -1 = all: HALCON's default) and ``area_ranges`` (HALCON's ``{'name': [...],
    'min': [...], 'max': [...]}``, a dict ``{name: (min, max)}``, or a list of COCO's names 'all',
    'small', 'medium', 'large'; default 'all'), see :func:`detection_measures`.
    """
    return evaluate_with_results(model, dataset, split, samples, gen_param)[0]


def detection_gen_param(gen_param: dict[str, Any]) -> dict[str, Any]:
    """``evaluate_dl_model``'s detection gen_param as :func:`detection_measures` keywords; unknown keys
    and bad values raise a :class:`DLParamError` naming them."""
    unknown = sorted(set(gen_param) - set(DETECTION_GEN_PARAM))
    if unknown:
        raise DLParamError(f"evaluate_dl_model gen_param: unsupported keys {unknown}; supported: "
                           f"{list(DETECTION_GEN_PARAM)}")
    keywords: dict[str, Any] = {}
    if "max_num_detections" in gen_param:
        levels = gen_param["max_num_detections"]
        levels = [levels] if isinstance(levels, (int, str)) else list(levels)
        levels = [-1 if level == "all" else level for level in levels]
        if not levels or any(isinstance(v, bool) or not isinstance(v, int) or (v < 1 and v != -1) for v in levels):
            raise DLParamError(f"evaluate_dl_model gen_param 'max_num_detections': expected -1 (all) or ints >= 1, "
                               f"got {gen_param['max_num_detections']!r}")
        keywords["max_num_detections"] = tuple(levels)
    if "area_ranges" in gen_param:
        keywords["area_ranges"] = _area_ranges(gen_param["area_ranges"])
    return keywords


def _area_ranges(value: Any) -> dict[str, tuple[float, float]]:
    if isinstance(value, dict) and set(value) == {"name", "min", "max"}:
        names, lows, highs = ([v] if isinstance(v, (str, int, float)) else list(v) for v in
                              (value["name"], value["min"], value["max"]))
        if not len(names) == len(lows) == len(highs):
            raise DLParamError(f"evaluate_dl_model gen_param 'area_ranges': expected as many names, min and max, "
                               f"got {value!r}")
        ranges = {str(n): (float(lo), float(hi)) for n, lo, hi in zip(names, lows, highs)}
    elif isinstance(value, dict):
        ranges = {str(n): (float(b[0]), float(b[1])) for n, b in value.items()}
    else:
        names = [value] if isinstance(value, str) else list(value)
        missing = [n for n in names if n not in COCO_AREA_RANGES]
        if missing:
            raise DLParamError(f"evaluate_dl_model gen_param 'area_ranges': unknown names {missing}; COCO's are "
                               f"{list(COCO_AREA_RANGES)} (or give {{'name', 'min', 'max'}})")
        ranges = {n: COCO_AREA_RANGES[n] for n in names}
    if not ranges or any(not lo <= hi for lo, hi in ranges.values()):
        raise DLParamError(f"evaluate_dl_model gen_param 'area_ranges': expected ranges with min <= max, got {value!r}")
    return ranges


def evaluate_with_results(model: Any, dataset: dict[str, Any] | None = None, split: str = "validation",
                          samples: list[dict[str, Any]] | None = None, gen_param: dict[str, Any] | None = None
                          ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`evaluate_dl_model`'s measures, with the results and the preprocessed samples they came from
    (what a report draws)."""
    from .operators import apply_with

    keywords = {}
    if gen_param:
        if model.params["type"] != "detection":
            raise DLParamError(f"evaluate_dl_model gen_param: {sorted(gen_param)} apply to detection models, not to a "
                               f"{model.params['type']} model")
        keywords = detection_gen_param(gen_param)
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
    return kind.measures(results, samples, model.params, **keywords), results, samples
