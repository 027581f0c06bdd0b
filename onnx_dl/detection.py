"""Detection models: the heads of the graph, the feeds of a training step, and the boxes of ``apply_dl_model``.

A detector's graph (built by :mod:`onnx_dl.detector`) outputs, for levels L = min_level ..
max_level, first the class scores (N, A*K, H_L, W_L) of every level (a Sigmoid of the class
logits), then the box deltas (N, A*4, H_L, W_L); A = anchor_num_subscales *
len(anchor_aspect_ratios) anchors per cell, K classes.

Training targets come from :func:`onnx_dl.anchors.detection_targets` over all samples of the
step. The focal and Huber losses of every level are divided by a running average of the number
of positive anchors per step (detectron2's RetinaNet convention), updated once per step before
the step's losses are computed:

    average_t = 0.9 * average_{t-1} + 0.1 * max(P_t, 1),   average_0 = 100
    L_focal = sum FL / average_t,   L_huber = sum h / average_t

P_t counts the positive anchors of the whole step (all chunks of ``batch_size_multiplier``), so
the chunks' gradients still add up to the gradient of the whole batch. The per-step count alone
(``max(P_t, 1)``, the original RetinaNet paper's normaliser) divides the background loss of a
step whose images hold no object by 1 instead of by about the usual count: that step's loss and
gradient jump a hundredfold and can knock a trained detector off; such a step lowers the average
by less than 10 %. Since average_0 >= 1 and max(P_t, 1) >= 1, the average never falls below 1.
``average_t`` is the model's read-only parameter ``positive_anchor_average``; it is written with
the solver state, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import onnx

from . import anchors as anchor_targets
from . import boxes as box_ops
from . import graph as g
from . import samples as sample_checks
from . import training_graph
from .errors import DLModelFileError, DLParamError, DLSampleError
from .onnx_builder import GraphBuilder
from .params import class_weight_array, image_shape

RESULT_KEYS = (*box_ops.BOX_KEYS, "bbox_class_id", "bbox_class_name", "bbox_confidence")
BOX_KEYS = box_ops.BOX_KEYS
LABEL_KEY = "bbox_label_id"
BOX_TOLERANCE = 0.01  # pixels a box may reach beyond the image border -0.5 .. size - 0.5 (rounding)
NORMALIZER_MOMENTUM = 0.9  # of the positive-anchor average (detectron2's RetinaNet); 0 gives the per-step count
NORMALIZER_PARAM = "positive_anchor_average"  # its start value is the parameter's default, 100 (detectron2's)
HEAD_PREFIX = "detector."  # every initializer create_dl_model_detection adds (pyramid, heads) starts with it


def head_weights(network: onnx.ModelProto) -> set[str]:
    """What ``freeze_backbone`` keeps trainable: the feature pyramid and heads the builder added."""
    return {w for w in g.weight_names(network) if w.startswith(HEAD_PREFIX)}


def levels(params: dict[str, Any]) -> list[int]:
    """The pyramid levels with heads: min_level .. max_level."""
    return list(range(params["min_level"], params["max_level"] + 1))


def num_anchors(params: dict[str, Any]) -> int:
    """Anchors per cell: A = anchor_num_subscales * len(anchor_aspect_ratios)."""
    return params["anchor_num_subscales"] * len(params["anchor_aspect_ratios"])


def _outputs(network: onnx.ModelProto, params: dict[str, Any]) -> list[str]:
    names = [o.name for o in network.graph.output]
    expected = 2 * len(levels(params))
    if len(names) != expected:
        raise DLModelFileError(f"a detector with levels {params['min_level']}..{params['max_level']} has {expected} "
                               f"outputs (class scores, then box deltas, per level), the network has {len(names)}: "
                               f"{names}")
    return names


def head_outputs(network: onnx.ModelProto, params: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(class logits per level, box deltas per level): the tensors the losses read. A class output
    produced by a Sigmoid holds scores, and the Sigmoid's input is the logits; any other class
    output is taken for the logits themselves."""
    names = _outputs(network, params)
    count = len(levels(params))
    made_by = g.producers(network)
    logits = [made_by[name].input[0] if name in made_by and made_by[name].op_type == "Sigmoid" else name
              for name in names[:count]]
    return logits, names[count:]


def output_shapes(network: onnx.ModelProto, params: dict[str, Any]) -> dict[str, list[int]]:
    """The shape per image each output of the network must have."""
    names = _outputs(network, params)
    anchors, classes = num_anchors(params), len(params["class_ids"])
    count = len(levels(params))
    shapes = {}
    for index, level in enumerate(levels(params)):
        size = [params["image_height"] // 2**level, params["image_width"] // 2**level]
        shapes[names[index]] = [anchors * classes, *size]
        shapes[names[count + index]] = [anchors * 4, *size]
    return shapes


def num_classes(network: onnx.ModelProto, params: dict[str, Any]) -> int:
    """K from the channels of the first class output (A*K) and the anchors per cell."""
    first = _outputs(network, params)[0]
    dims = [1, *image_shape(params)]
    shape = g.tensor_shapes(g.with_input_shape(network, dims)).get(first)
    anchors = num_anchors(params)
    if not shape or len(shape) != 4 or shape[1] is None or shape[1] % anchors:
        raise DLModelFileError(f"output {first!r}: expected class scores of shape (N, A*K, H, W) with A = {anchors} "
                               f"anchors per cell, got {shape}")
    return shape[1] // anchors


def inference_graph(network: onnx.ModelProto, params: dict[str, Any]) -> onnx.ModelProto:
    """A copy of the network ending in class scores (a Sigmoid added where an output holds logits) and box deltas."""
    model = copy.deepcopy(network)
    logits, _ = head_outputs(model, params)
    b = GraphBuilder(model.graph)
    for output, tensor in zip(model.graph.output, logits):
        if output.name == tensor:  # raw logits: add the Sigmoid
            scores = b.op("Sigmoid", [tensor], f"{tensor}_scores")
            output.name = scores
    return model


def build_training_graph(network: onnx.ModelProto, params: dict[str, Any],
                         trainable: list[str] | None = None) -> training_graph.TrainingGraph:
    """The training graph of a detector at the model's image size."""
    dims = image_shape(params)
    logits, deltas = head_outputs(network, params)
    return training_graph.detection(network, dims, levels(params), logits, deltas, trainable)


def _coordinates(sample: dict[str, Any], index: int, key: str) -> np.ndarray:
    """A sample's 1-D array under ``key`` (one number counts as one box), float64."""
    raw = sample_checks._require(sample, index, key)
    try:
        values = np.asarray(raw)
    except (ValueError, TypeError):  # ragged sequences, odd objects
        values = np.asarray(None)
    if values.dtype.kind not in "fiu" or values.ndim > 1:
        raise DLSampleError(f"sample {index}, key {key!r}: expected a 1-D numeric array (one value per box), got "
                            f"{sample_checks._describe(raw)}")
    return values.reshape(-1)


def checked_boxes(sample: dict[str, Any], index: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (G, 4) float64, labels (G,)) of one sample: 1-D arrays of equal lengths, finite
    coordinates, row2 > row1 and col2 > col1 (where the boxes lie is not checked here)."""
    columns = {key: _coordinates(sample, index, key) for key in (*BOX_KEYS, LABEL_KEY)}
    lengths = {key: len(value) for key, value in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DLSampleError(f"sample {index}, key {LABEL_KEY!r}: expected one value per box in each of "
                            f"{list(lengths)}, got lengths {list(lengths.values())}")
    for key in BOX_KEYS:
        bad = np.nonzero(~np.isfinite(columns[key]))[0]
        if len(bad):
            raise DLSampleError(f"sample {index}, key {key!r}: expected finite coordinates, got "
                                f"{columns[key][bad[0]]} (box {bad[0]})")
    boxes = np.stack([columns[key].astype(np.float64) for key in BOX_KEYS], axis=1).reshape(-1, 4)
    for first, second in ((0, 2), (1, 3)):
        bad = np.nonzero(boxes[:, second] <= boxes[:, first])[0]
        if len(bad):
            raise DLSampleError(f"sample {index}, key {BOX_KEYS[second]!r}: expected a value greater than "
                                f"{BOX_KEYS[first]} (a box of positive size), got {BOX_KEYS[first]} "
                                f"{boxes[bad[0], first]} and {BOX_KEYS[second]} {boxes[bad[0], second]} (box {bad[0]})")
    return boxes, columns[LABEL_KEY]


def _sample_boxes(sample: dict[str, Any], index: int, params: dict[str, Any],
                  position: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (G, 4) float64, class indices (G,)) of one sample, validated."""
    boxes, labels = checked_boxes(sample, index)
    limits = (params["image_height"], params["image_width"], params["image_height"], params["image_width"])
    for column, (key, size) in enumerate(zip(BOX_KEYS, limits)):
        values = boxes[:, column]
        bad = np.nonzero((values < -0.5 - BOX_TOLERANCE) | (values > size - 0.5 + BOX_TOLERANCE))[0]
        if len(bad):
            raise DLSampleError(f"sample {index}, key {key!r}: expected coordinates inside the image, -0.5 .. "
                                f"{size - 0.5} (pixel centres 0 .. {size - 1}), got {values[bad[0]]} (box {bad[0]})")
    return boxes, _label_indices(labels, index, position, params["class_ids"])


def _label_indices(labels: np.ndarray, index: int, position: dict[int, int], class_ids: list[int]) -> np.ndarray:
    ids = labels.astype(np.int64) if labels.dtype.kind in "iu" or np.isfinite(labels).all() else None
    if ids is None or not np.array_equal(ids, labels):
        raise DLSampleError(f"sample {index}, key {LABEL_KEY!r}: expected integer class ids, got "
                            f"{labels[:5].tolist()}")
    found = sample_checks.id_lookup(ids, position, -1)
    if (found < 0).any():
        shown = class_ids if len(class_ids) <= 20 else f"{class_ids[:20]}..."
        raise DLSampleError(f"sample {index}, key {LABEL_KEY!r}: expected ids in the model's class_ids {shown}, got "
                            f"{np.unique(ids[found < 0])[:5].tolist()}")
    return found


def sample_boxes(samples: list[dict[str, Any]], params: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every sample's boxes (G, 4) and class indices (G,), validated: 1-D arrays of equal lengths,
    finite, row2 > row1, col2 > col1, inside the image, ids in ``class_ids``."""
    position = {cid: i for i, cid in enumerate(params["class_ids"])}
    checked = [_sample_boxes(sample, index, params, position) for index, sample in enumerate(samples)]
    return [b for b, _ in checked], [c for _, c in checked]


def focal_weights(level: dict[str, np.ndarray], alphas: np.ndarray) -> np.ndarray:
    """The focal loss weights of one level: anchor weight * (y * alpha_k + (1 - y) * (1 - alpha_k)) at
    channel a * K + k."""
    per_channel = np.tile(alphas, level["cls_target"].shape[1] // len(alphas))[None, :, None, None]
    target = level["cls_target"]
    return (level["cls_weight"] * (target * per_channel + (1.0 - target) * (1.0 - per_channel))).astype(np.float32)


def positive_average(previous: float, positives: int) -> float:
    """The running average of positive anchors after a step with ``positives`` of them (module
    docstring): NORMALIZER_MOMENTUM * previous + (1 - NORMALIZER_MOMENTUM) * max(positives, 1)."""
    return NORMALIZER_MOMENTUM * float(previous) + (1.0 - NORMALIZER_MOMENTUM) * float(max(positives, 1))


def train_chunks(samples: list[dict[str, Any]], params: dict[str, Any],
                 chunks: int) -> tuple[list[list[np.ndarray]], bool, dict[str, Any]]:
    """Feeds of each chunk: the image, per level (class targets, focal weights, box targets, box
    weights), the loss normaliser (the positive-anchor average updated with the whole step's count),
    the two head weights; whether the step carries any weight; and the training state the step sets
    once it has succeeded (``positive_anchor_average``)."""
    images = sample_checks.images(samples, params)
    boxes, classes = sample_boxes(samples, params)
    targets, positives = anchor_targets.detection_targets(boxes, classes, params)
    alphas = class_weight_array(params)
    feeds: list[tuple[np.ndarray, bool]] = [(images, True)]
    weight = 0.0
    for level in targets:
        focal = focal_weights(level, alphas)
        weight += float(focal.sum()) * params["class_heads_weight"] + float(level["box_weight"].sum()) * params[
            "bbox_heads_weight"]
        feeds += [(level["cls_target"], True), (focal, True), (level["box_target"], True), (level["box_weight"], True)]
    average = positive_average(params[NORMALIZER_PARAM], positives)
    feeds += [(np.array(average, np.float32), False),
              (np.array(params["class_heads_weight"], np.float32), False),
              (np.array(params["bbox_heads_weight"], np.float32), False)]
    return sample_checks.split_chunks(feeds, chunks), weight > 0, {NORMALIZER_PARAM: average}


def results(outputs: list[np.ndarray], params: dict[str, Any], keys: list[str]) -> list[dict[str, Any]]:
    """Per sample the boxes after decoding, the confidence threshold, NMS and the cap, by descending
    confidence: ``bbox_row1``, ``bbox_col1``, ``bbox_row2``, ``bbox_col2`` (float64 arrays),
    ``bbox_class_id`` (int64 array), ``bbox_class_name`` (list), ``bbox_confidence`` (float64 array)."""
    unknown = [key for key in keys if key not in RESULT_KEYS]
    if unknown:
        raise DLParamError(f"apply_dl_model: unknown outputs {unknown}; a detector offers {list(RESULT_KEYS)}")
    count = len(levels(params))
    ids, names = np.asarray(params["class_ids"], np.int64), params["class_names"]
    scores = anchor_targets.flatten_heads(outputs[:count], len(ids))
    deltas = anchor_targets.flatten_heads(outputs[count:], 4)
    anchors = anchor_targets.all_anchors(params)
    found = []
    for n in range(len(scores)):
        kept, index, confidence = box_ops.postprocess(
            box_ops.decode(anchors, deltas[n]), scores[n], params["min_confidence"], params["max_overlap"],
            params["max_overlap_class_agnostic"], params["max_num_detections"])
        full = {key: kept[:, column].astype(np.float64) for column, key in enumerate(BOX_KEYS)}
        full.update(bbox_class_id=ids[index], bbox_class_name=[names[i] for i in index],
                    bbox_confidence=confidence.astype(np.float64))
        found.append({key: full[key] for key in keys})
    return found
