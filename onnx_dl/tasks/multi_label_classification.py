"""Multi-label classification models: several classes per image, one independent confidence per class
(the model-type contract of :mod:`onnx_dl.model_type`).

Samples carry ``image_label_ids``, the ids of every class present (empty: none). The loss is the
per-class sigmoid binary cross-entropy (:func:`onnx_dl.losses.binary_cross_entropy`), with
``class_weights`` weighing each class's present labels. The network ends in a Sigmoid (what
``write_dl_model`` writes); ``apply_dl_model`` returns every class's confidence and, best first, the
classes at or above ``min_confidence``. Models are made by
:func:`onnx_dl.create_dl_model_multi_label_classification` from a classifier backbone, or read from a
network with one score per class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from .. import measures as measure
from .. import samples as sample_checks
from .. import score_head, synthetic, training_graph
from ..errors import DLParamError
from ..params import ParamSpec, class_weight_array, closed_unit_interval, image_shape

NAME = "multi_label_classification"
LABELS_KEY = "image_label_ids"
DATASET_KEYS = (LABELS_KEY,)
CONFIDENCES = "confidences"  # the output a written model ends in: the sigmoid of the logits
ALL_CONFIDENCES = "classification_all_confidences"
RESULT_KEYS = ("classification_class_ids", "classification_class_names", "classification_confidences",
               ALL_CONFIDENCES)
SCORE_RANK = 2  # (N, K)
PARAMS = (ParamSpec("min_confidence", "float", 0.5, "a class counts as present in an image (apply_dl_model's "
                    "classification_class_ids, evaluation's precision and recall) from this confidence up",
                    closed_unit_interval),)
PARAM_CHECKS: dict[str, Callable[[Any], str | None]] = {}
FIXED_AFTER_CREATION: frozenset[str] = frozenset()
TRAINING_STATE: tuple[str, ...] = ()
DEFAULT_CLASS_WEIGHT = 1.0
MAIN_MEASURE, LOWER_IS_BETTER = "mean_ap", False
EVALUATION_OVERRIDES: dict[str, Any] = {}
CLI_NETWORK, CLI_IMAGE_SIZE = "classifier_compact", 48  # the command line's backbone


def logits(network: onnx.ModelProto) -> str:
    """The class logits: the input of the Sigmoid (or Softmax) the network ends in, else its output."""
    return score_head.sigmoid_input(network) or score_head.logits_output(network)[0]


def check_params(params: dict[str, Any]) -> None:
    """No rules beyond the common ones."""


def head_weights(network: onnx.ModelProto) -> set[str]:
    """What ``freeze_backbone`` keeps trainable: the layer that produces the logits."""
    return set(score_head.head_weights(network, logits(network)))


def output_shapes(network: onnx.ModelProto, params: dict[str, Any]) -> dict[str, list[int]]:
    """{logits: (K,)} per image."""
    return {logits(network): [len(params["class_ids"])]}


def num_classes(network: onnx.ModelProto, params: dict[str, Any]) -> int:
    """K of the network's class logits (N, K)."""
    return score_head.score_classes(network, [1, *image_shape(params)], SCORE_RANK, logits(network))


def with_classes(network: onnx.ModelProto, params: dict[str, Any], class_ids: list[int]) -> onnx.ModelProto:
    """The network with a new score layer of ``len(class_ids)`` outputs, still ending in its Sigmoid."""
    return score_head.replace_head(network, logits(network), len(class_ids))


def inference_graph(network: onnx.ModelProto, params: dict[str, Any]) -> onnx.ModelProto:
    """A copy of the network ending in per-class confidences, the sigmoid of the logits (N, K)."""
    return score_head.with_sigmoid(network, CONFIDENCES, ["N", len(params["class_ids"])])


def build_training_graph(network: onnx.ModelProto, params: dict[str, Any],
                         trainable: list[str] | None = None) -> training_graph.TrainingGraph:
    """The training graph: binary cross-entropy on the logits at the model's image size."""
    return training_graph.multi_label_classification(network, image_shape(params), len(params["class_ids"]),
                                                     logits(network), trainable)


def train_chunks(samples: list[dict[str, Any]], params: dict[str, Any],
                 chunks: int) -> tuple[list[list[np.ndarray]], bool, dict[str, Any]]:
    """Feeds of each chunk (image, 0/1 targets (N, K), class weights, the step-wide normaliser N * K);
    every step carries weight; no training state."""
    images = sample_checks.images(samples, params)
    targets = sample_checks.label_sets(samples, params["class_ids"], LABELS_KEY)
    normalizer = np.array(targets.size, np.float32)
    feeds = [(images, True), (targets, True), (class_weight_array(params), False), (normalizer, False)]
    return sample_checks.split_chunks(feeds, chunks), True, {}


def results(outputs: list[np.ndarray], params: dict[str, Any], keys: list[str]) -> list[dict[str, Any]]:
    """Per sample: every class's confidence (``classification_all_confidences``, in ``class_ids`` order)
    and the classes at or above ``min_confidence`` by descending confidence (ids, names, confidences)."""
    unknown = [key for key in keys if key not in RESULT_KEYS]
    if unknown:
        raise DLParamError(f"apply_dl_model: unknown outputs {unknown}; a multi-label classifier offers "
                           f"{list(RESULT_KEYS)}")
    ids, names, floor = params["class_ids"], params["class_names"], params["min_confidence"]
    found = []
    for row in outputs[0]:
        order = [i for i in np.argsort(-row, kind="stable") if row[i] >= floor]
        full = {"classification_class_ids": [int(ids[i]) for i in order],
                "classification_class_names": [names[i] for i in order],
                "classification_confidences": [float(row[i]) for i in order],
                ALL_CONFIDENCES: [float(v) for v in row]}
        found.append({key: full[key] for key in keys})
    return found


def measures(results: list[dict[str, Any]], samples: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Mean average precision over classes, per-class AP, precision, recall and F1 at ``min_confidence``
    (:func:`onnx_dl.measures.multi_label_measures`)."""
    return measure.multi_label_measures(results, samples, params["class_ids"], params["min_confidence"])


def synthetic_samples(count: int, size: int = 48, seed: int = 0) -> list[dict[str, Any]]:
    """Generated images with 0 to 3 of four shapes (:func:`onnx_dl.synthetic.multi_label_samples`)."""
    return synthetic.multi_label_samples(count, size, seed)

