"""Classification models: feeds of a training step and the results of ``apply_dl_model``."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from . import graph as g
from . import samples as sample_checks
from . import training_graph
from .errors import DLParamError
from .params import class_weight_array, image_shape

RESULT_KEYS = ("classification_class_ids", "classification_class_names", "classification_confidences")
PROBABILITIES = "confidences"  # the output a written model ends in
SCORE_RANK = 2  # (N, K)


def score_shape(params: dict[str, Any]) -> list[int]:
    """Shape of the network's scores per image: (K,)."""
    return [len(params["class_ids"])]


def head_weights(network: onnx.ModelProto) -> set[str]:
    """What ``freeze_backbone`` keeps trainable: the layer that produces the scores."""
    return g.score_layer_weights(network)


def output_shapes(network: onnx.ModelProto, params: dict[str, Any]) -> dict[str, list[int]]:
    """The shape per image of the network's scores: {logits: (K,)}."""
    return {g.logits_output(network)[0]: score_shape(params)}


def num_classes(network: onnx.ModelProto, params: dict[str, Any]) -> int:
    """K of the network's class scores."""
    dims = [1, *image_shape(params)]
    return g.score_classes(network, dims, SCORE_RANK)


def inference_graph(network: onnx.ModelProto, params: dict[str, Any]) -> onnx.ModelProto:
    """A copy of the network ending in class probabilities over axis 1 (what ``write_dl_model`` writes)."""
    return g.with_probabilities(network, PROBABILITIES, ["N", *score_shape(params)])


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
