"""Classification models: feeds of a training step, the results of ``apply_dl_model`` and their measures
(the model-type contract of :mod:`onnx_dl.model_type`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from .. import score_head
from .. import measures as measure
from .. import samples as sample_checks
from .. import synthetic
from .. import training_graph
from ..errors import DLParamError
from ..params import ParamSpec, class_weight_array, image_shape

NAME = "classification"
DATASET_KEYS = ("image_label_id",)
RESULT_KEYS = ("classification_class_ids", "classification_class_names", "classification_confidences")
PROBABILITIES = "confidences"  # the output a written model ends in
SCORE_RANK = 2  # (N, K)
PARAMS: tuple[ParamSpec, ...] = ()
PARAM_CHECKS: dict[str, Callable[[Any], str | None]] = {}
FIXED_AFTER_CREATION: frozenset[str] = frozenset()
TRAINING_STATE: tuple[str, ...] = ()
DEFAULT_CLASS_WEIGHT = 1.0
MAIN_MEASURE, LOWER_IS_BETTER = "top1_error", True
EVALUATION_OVERRIDES: dict[str, Any] = {}
CLI_NETWORK, CLI_IMAGE_SIZE = "classifier_compact", 32


def check_params(params: dict[str, Any]) -> None:
    """A classifier has no rules beyond the common ones."""


def with_classes(network: onnx.ModelProto, params: dict[str, Any], class_ids: list[int]) -> onnx.ModelProto:
    """The network with a new score layer of ``len(class_ids)`` outputs."""
    return score_head.replace_head(network, score_head.logits_output(network)[0], len(class_ids))


def measures(results: list[dict[str, Any]], samples: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Top-1 .. top-5 errors (up to the class count), per-class precision, recall and F-score and their means,
    the absolute and relative confusion matrices (:func:`onnx_dl.measures.classification_measures`)."""
    return measure.classification_measures(results, samples, params["class_ids"])


def synthetic_samples(count: int, size: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """Generated images of four shapes (:func:`onnx_dl.synthetic.classification_samples`)."""
    return synthetic.classification_samples(count, size, seed)


def score_shape(params: dict[str, Any]) -> list[int]:
    """Shape of the network's scores per image: (K,)."""
    return [len(params["class_ids"])]


def head_weights(network: onnx.ModelProto) -> set[str]:
    """What ``freeze_backbone`` keeps trainable: the layer that produces the scores."""
    return score_head.score_layer_weights(network)


def score_functions(score_shape: Callable[[dict[str, Any]], list[int]], rank: int) -> tuple[Any, Any, Any]:
    """``output_shapes``, ``num_classes`` and ``inference_graph`` of a model type whose network ends in
    class scores of ``score_shape(params)`` per image, class axis 1 of ``rank`` (a classifier's, a
    segmentation model's)."""

    def output_shapes(network: onnx.ModelProto, params: dict[str, Any]) -> dict[str, list[int]]:
        """{the network's score output: its shape per image}."""
        return {score_head.logits_output(network)[0]: score_shape(params)}

    def num_classes(network: onnx.ModelProto, params: dict[str, Any]) -> int:
        """K of the network's class scores (axis 1), at the model's image size."""
        return score_head.score_classes(network, [1, *image_shape(params)], rank)

    def inference_graph(network: onnx.ModelProto, params: dict[str, Any]) -> onnx.ModelProto:
        """A copy of the network ending in class probabilities over axis 1 (what ``write_dl_model`` writes)."""
        return score_head.with_probabilities(network, PROBABILITIES, ["N", *score_shape(params)])

    return output_shapes, num_classes, inference_graph


output_shapes, num_classes, inference_graph = score_functions(score_shape, SCORE_RANK)


def build_training_graph(network: onnx.ModelProto, params: dict[str, Any],
                         trainable: list[str] | None = None) -> training_graph.TrainingGraph:
    """The training graph of a classifier at the model's image size."""
    dims = image_shape(params)
    return training_graph.classification(network, dims, len(params["class_ids"]), trainable)


def train_chunks(samples: list[dict[str, Any]], params: dict[str, Any],
                 chunks: int) -> tuple[list[list[np.ndarray]], bool, dict[str, Any]]:
    """Feeds of each chunk (image, labels, class weights, the step-wide normaliser sum_n w[y_n]),
    whether the step carries any weight (samples whose classes all weigh 0 do not), and the training
    state the step sets (none for a classifier)."""
    images = sample_checks.images(samples, params)
    labels = sample_checks.label_indices(samples, params["class_ids"])
    weights = class_weight_array(params)
    normalizer, informative = sample_checks.weight_normalizer(weights[labels])
    feeds = [(images, True), (labels, True), (weights, False), (normalizer, False)]
    return sample_checks.split_chunks(feeds, chunks), informative, {}


def results(scores: list[np.ndarray], params: dict[str, Any], outputs: list[str]) -> list[dict[str, Any]]:
    """Per sample: class ids, names and confidences sorted by descending confidence (``scores``: the
    inference graph's outputs, the probabilities (N, K))."""
    probabilities = scores[0]
    unknown = [key for key in outputs if key not in RESULT_KEYS]
    if unknown:
        raise DLParamError(f"apply_dl_model: unknown outputs {unknown}; a classifier offers {list(RESULT_KEYS)}")
    ids = np.asarray(params["class_ids"])
    names = params["class_names"]
    found = []
    for row in probabilities:
        order = np.argsort(-row, kind="stable")
        full = {
            "classification_class_ids": [int(ids[i]) for i in order],
            "classification_class_names": [names[i] for i in order],
            "classification_confidences": [float(row[i]) for i in order],
        }
        found.append({key: full[key] for key in outputs})
    return found
