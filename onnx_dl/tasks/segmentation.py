"""Segmentation models: per-pixel feeds of a training step, results, measures and class-weight helpers
(the model-type contract of :mod:`onnx_dl.model_type`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from .. import measures as measure
from .. import samples as sample_checks
from .. import synthetic
from .. import training_graph
from ..errors import DLParamError, DLSampleError
from .classification import head_weights, score_functions, with_classes  # noqa: F401 (contract names: the
# score layer is frozen and replaced as a classifier's)
from ..params import ParamSpec, class_weight_array, image_shape, nonnegative_ids

NAME = "segmentation"
DATASET_KEYS = ("segmentation_file_name", "segmentation_image")
RESULT_KEYS = ("segmentation_image", "segmentation_confidence")
SCORE_RANK = 4  # (N, K, H, W)
PARAMS = (ParamSpec("ignore_class_ids", "int_list", [], "class ids whose pixels add no loss", nonnegative_ids),)
PARAM_CHECKS: dict[str, Callable[[Any], str | None]] = {}
FIXED_AFTER_CREATION: frozenset[str] = frozenset()
TRAINING_STATE: tuple[str, ...] = ()
DEFAULT_CLASS_WEIGHT = 1.0
MAIN_MEASURE, LOWER_IS_BETTER = "mean_iou", False
EVALUATION_OVERRIDES: dict[str, Any] = {}
CLI_NETWORK, CLI_IMAGE_SIZE = "segmentation_compact", 64


def check_params(params: dict[str, Any]) -> None:
    """Ignored ids are not class ids."""
    overlap = set(params.get("ignore_class_ids") or []) & set(params["class_ids"])
    if overlap:
        raise DLParamError(f"parameter 'ignore_class_ids': expected ids that are not class_ids, got {sorted(overlap)} "
                           f"in both")


def measures(results: list[dict[str, Any]], samples: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Mean, class and frequency-weighted IoU, pixel, mean and class pixel accuracy, the confusion matrix
    (:func:`onnx_dl.measures.segmentation_measures`) over the pixels not ignored."""
    return measure.segmentation_measures(results, samples, params["class_ids"], params["ignore_class_ids"])


def synthetic_samples(count: int, size: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """Generated images of up to three shapes on background (:func:`onnx_dl.synthetic.segmentation_samples`)."""
    return synthetic.segmentation_samples(count, size, seed)


def score_shape(params: dict[str, Any]) -> list[int]:
    """Shape of the network's scores per image: (K, H, W) at input resolution."""
    return [len(params["class_ids"]), params["image_height"], params["image_width"]]


output_shapes, num_classes, inference_graph = score_functions(score_shape, SCORE_RANK)


def build_training_graph(network: onnx.ModelProto, params: dict[str, Any],
                         trainable: list[str] | None = None) -> training_graph.TrainingGraph:
    """The training graph of a segmentation network at the model's image size."""
    dims = image_shape(params)
    return training_graph.segmentation(network, dims, len(params["class_ids"]), trainable)


def pixel_weights(indices: np.ndarray, weights: list[np.ndarray | None], per_class: np.ndarray) -> np.ndarray:
    """(N, H, W) loss weights: the weight image where given, else the class weight; 0 where ignored."""
    result = per_class[np.maximum(indices, 0)]
    for n, image in enumerate(weights):
        if image is not None:
            result[n] = image
    result[indices < 0] = 0.0
    return result.astype(np.float32)


def train_chunks(samples: list[dict[str, Any]], params: dict[str, Any],
                 chunks: int) -> tuple[list[list[np.ndarray]], bool, dict[str, Any]]:
    """Feeds of each chunk, whether the step carries any weight (an all-ignored step does not), and the
    training state the step sets (none for segmentation)."""
    shape = (params["image_height"], params["image_width"])
    images = sample_checks.images(samples, params)
    indices = sample_checks.label_image_indices(samples, params["class_ids"], params["ignore_class_ids"], shape)
    weights = pixel_weights(indices, sample_checks.weight_images(samples, shape), class_weight_array(params))
    normalizer, informative = sample_checks.weight_normalizer(weights)
    feeds = [(images, True), (np.maximum(indices, 0), True), (weights, True), (normalizer, False)]
    return sample_checks.split_chunks(feeds, chunks), informative, {}


def results(scores: list[np.ndarray], params: dict[str, Any], outputs: list[str]) -> list[dict[str, Any]]:
    """Per sample: the class id of the most probable class per pixel and its probability (``scores``: the
    inference graph's outputs, the probabilities (N, K, H, W))."""
    probabilities = scores[0]
    unknown = [key for key in outputs if key not in RESULT_KEYS]
    if unknown:
        raise DLParamError(f"apply_dl_model: unknown outputs {unknown}; a segmentation model offers {list(RESULT_KEYS)}")
    ids = np.asarray(params["class_ids"], np.int64)
    best = probabilities.argmax(axis=1)
    full = {"segmentation_image": ids[best], "segmentation_confidence": probabilities.max(axis=1)}
    return [{key: full[key][n] for key in outputs} for n in range(len(probabilities))]


def calculate_class_weights(label_images: list[np.ndarray], class_ids: list[int], max_weight: float = 1000.0,
                            ignore_class_ids: list[int] | tuple[int, ...] = ()) -> list[float]:
    """HALCON's calculate_dl_segmentation_class_weights over the given (training) label images.

    weight_c = 1 / (frequency_c + 1e-4), scaled so the most frequent class gets 1.0, clipped at
    ``max_weight``; ignored ids are not counted.
    """
    if max_weight <= 0:
        raise DLParamError(f"max_weight: expected a value > 0, got {max_weight}")
    counts = np.zeros(len(class_ids), np.float64)
    table = {**dict.fromkeys(ignore_class_ids, -1), **{cid: i for i, cid in enumerate(class_ids)}}
    for image in label_images:
        ids = np.asarray(image).astype(np.int64)
        indices = sample_checks.id_lookup(ids, table, -2)
        if (indices == -2).any():
            raise DLSampleError(f"label image values {np.unique(ids[indices == -2])[:5].tolist()} are neither in "
                                f"class_ids nor ignored")
        counts += np.bincount(indices[indices >= 0], minlength=len(class_ids))
    if counts.sum() == 0:
        raise DLSampleError("calculate_class_weights: no labelled pixels")
    weights = 1.0 / (counts / counts.sum() + 1e-4)
    weights /= weights[counts.argmax()]
    return np.minimum(weights, max_weight).tolist()


def gen_weight_images(samples: list[dict[str, Any]], class_ids: list[int], class_weights_: list[float],
                      ignore_class_ids: list[int] | tuple[int, ...] = ()) -> None:
    """HALCON's gen_dl_segmentation_weight_images: paint each sample's ``weight_image`` in place
    with the weight of each pixel's class; ignored pixels get 0."""
    if len(class_weights_) != len(class_ids):
        raise DLParamError(f"class_weights: expected {len(class_ids)} weights, got {len(class_weights_)}")
    table = {cid: w for cid, w in zip(class_ids, class_weights_)} | {cid: 0.0 for cid in ignore_class_ids}
    for index, sample in enumerate(samples):
        labels = np.asarray(sample_checks.require(sample, index, "segmentation_image")).astype(np.int64)
        weights = sample_checks.id_lookup(labels, table, np.nan, np.float32)
        if np.isnan(weights).any():
            raise DLSampleError(f"sample {index}, key 'segmentation_image': ids "
                                f"{np.unique(labels[np.isnan(weights)])[:5].tolist()} are neither in class_ids nor ignored")
        sample["weight_image"] = weights
