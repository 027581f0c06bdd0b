"""Detection models: the heads of the graph, the feeds of a training step, and the boxes of ``apply_dl_model``.

A detector's graph (built by :mod:`onnx_dl.tasks.detection_builder`) outputs, for levels L = min_level ..
max_level, first the class scores (N, A*K, H_L, W_L) of every level (a Sigmoid of the class
logits), then the box deltas (N, A*4, H_L, W_L); A = anchor_num_subscales *
len(anchor_aspect_ratios) anchors per cell, K classes.

With ``instance_type`` 'rectangle2' the boxes are oriented (samples and results ``bbox_row``,
``bbox_col``, ``bbox_length1``, ``bbox_length2``, ``bbox_phi``: :mod:`onnx_dl.rotated_boxes`), each cell
holds A = anchor_num_subscales * len(anchor_aspect_ratios) * len(anchor_angles) anchors and the box
heads have A*5 channels (:mod:`onnx_dl.anchors`); matching uses the exact IoU of rotated rectangles and
NMS too. Boxes of the classes in ``class_ids_no_orientation`` are trained and returned as their
axis-parallel enclosing box (phi = 0). Everything else below holds for both box types.

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
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from .. import anchors as anchor_targets
from .. import box_types
from .. import boxes as box_ops
from .. import rotated_boxes
from .. import graph as g
from .. import measures as measure
from .. import samples as sample_checks
from .. import synthetic
from .. import training_graph
from ..errors import DLModelFileError, DLParamError, DLSampleError
from ..onnx_builder import GraphBuilder
from ..params import (ParamSpec, at_least, class_weight_array, closed_unit_interval, image_shape,
                      nonnegative_ids, one_of, positive_values)

NAME = "detection"
LABEL_KEY = box_ops.LABEL_KEY
DATASET_KEYS = (LABEL_KEY,)
CLASS_RESULT_KEYS = ("bbox_class_id", "bbox_class_name", "bbox_confidence")
RESULT_KEYS = (*box_ops.BOX_KEYS, *CLASS_RESULT_KEYS)  # 'rectangle1'; 'rectangle2': result_keys(params)
BOX_KEYS = box_ops.BOX_KEYS
SCORE_RANK = 4  # (N, A*K, H_L, W_L) per level
FOCAL_ALPHA = 0.25  # default class weight of a detector: the focal loss's alpha (RetinaNet)
DEFAULT_CLASS_WEIGHT = FOCAL_ALPHA
MAIN_MEASURE, LOWER_IS_BETTER = "mean_ap", False  # over IoU 0.5:0.95: HALCON's comparison key
CLI_NETWORK, CLI_IMAGE_SIZE = "classifier_compact", 128  # the command line's backbone
EVALUATION_MIN_CONFIDENCE = 0.05
"""The score floor of the detections an evaluation ranks: the test threshold of RetinaNet in
detectron2 and torchvision. AP integrates precision over the whole recall range, so it needs the
low-confidence tail that HALCON's display default ``min_confidence`` 0.5 cuts off."""
EVALUATION_OVERRIDES = {"min_confidence": EVALUATION_MIN_CONFIDENCE}
NORMALIZER_MOMENTUM = 0.9  # of the positive-anchor average (detectron2's RetinaNet); 0 gives the per-step count
NORMALIZER_PARAM = "positive_anchor_average"  # its start value is the parameter's default, 100 (detectron2's)
HEAD_PREFIX = "detector."  # every initializer create_dl_model_detection adds (pyramid, heads) starts with it


def instance_types(v: str) -> str | None:
    """Check of ``instance_type``: 'rectangle1' (axis-parallel boxes) or 'rectangle2' (oriented boxes)."""
    if v in ("rectangle1", "rectangle2"):
        return None
    return "'rectangle1' (axis-parallel boxes) or 'rectangle2' (oriented boxes)"


def finite_angles(v: list[float]) -> str | None:
    """Check of ``anchor_angles``: a non-empty list of finite angles (radians)."""
    return None if v and all(math.isfinite(a) for a in v) else "a non-empty list of finite angles in radians"


def focal_alphas(v: list[float]) -> str | None:
    """Check of a detector's ``class_weights``: focal alphas in [0, 1]."""
    return None if v and 0.0 <= min(v) and max(v) <= 1.0 else "a non-empty list of focal alphas in [0, 1]"


PARAMS = (
    ParamSpec("backbone", "str", None, "the classifier the detector was built on (read-only)",
              settable=False),
    ParamSpec("backbone_docking_layers", "str_list", [], "backbone tensors feeding the pyramid, one per backbone "
              "level from min_level up (default: found by shape inference)"),
    ParamSpec("min_level", "int", 2, "lowest pyramid level with heads; level L has stride 2**L", at_least(1)),
    ParamSpec("max_level", "int", 4, "highest pyramid level with heads; image sides must be divisible by "
              "2**max_level", at_least(1)),
    ParamSpec("anchor_num_subscales", "int", 3, "anchor sizes per level: 4 * 2**L * 2**(i / subscales)",
              at_least(1)),
    ParamSpec("anchor_aspect_ratios", "float_list", [1.0, 2.0, 0.5], "anchor height / width ratios",
              positive_values),
    ParamSpec("capacity", "str", "medium", "width and depth of the pyramid and heads",
              one_of("low", "medium", "high")),
    ParamSpec("instance_type", "str", "rectangle1", "box type: 'rectangle1' (axis-parallel: bbox_row1, bbox_col1, "
              "bbox_row2, bbox_col2) or 'rectangle2' (oriented: bbox_row, bbox_col, bbox_length1, bbox_length2, "
              "bbox_phi)", instance_types),
    ParamSpec("anchor_angles", "float_list", [0.0], "rectangle2: anchor orientations in radians (each subscale and "
              "aspect ratio once per angle; the aspect ratio is length1 / length2)", finite_angles),
    ParamSpec("ignore_direction", "bool", False, "rectangle2: phi and phi + pi are the same box (angles in "
              "(-pi/2, pi/2]; otherwise (-pi, pi] and the direction of length1 is learned)"),
    ParamSpec("class_ids_no_orientation", "int_list", [], "rectangle2: classes whose boxes are trained and returned "
              "axis-parallel (their enclosing box, phi = 0)", nonnegative_ids),
    ParamSpec("class_heads_weight", "float", 1.0, "factor of the focal loss of the class heads", at_least(0.0)),
    ParamSpec("bbox_heads_weight", "float", 1.0, "factor of the Huber loss of the box heads", at_least(0.0)),
    ParamSpec("min_confidence", "float", 0.5, "boxes scoring below this are dropped before NMS",
              closed_unit_interval),
    ParamSpec("max_overlap", "float", 0.5, "per-class NMS: a box whose IoU with a better one of its class "
              "exceeds this is dropped", closed_unit_interval),
    ParamSpec("max_overlap_class_agnostic", "float", 1.0, "NMS over all classes after the per-class NMS "
              "(1.0: off)", closed_unit_interval),
    ParamSpec("max_num_detections", "int", 100, "at most this many boxes per image", at_least(1)),
    ParamSpec("positive_anchor_average", "float", 100.0, "running average of the positive anchors per training "
              "step, the divisor of the focal and Huber losses (read-only; training state: 100 before the first "
              "step, then 0.9 * average + 0.1 * max(positives of the step, 1))", at_least(1.0),
              settable=False),
)
PARAM_CHECKS: dict[str, Callable[[Any], str | None]] = {"class_weights": focal_alphas}
# the architecture: given at creation (create_dl_model_detection), refused by set_dl_model_param afterwards
FIXED_AFTER_CREATION = frozenset({"image_width", "image_height", "image_dimensions", "min_level", "max_level",
                                  "anchor_num_subscales", "anchor_aspect_ratios", "capacity", "instance_type",
                                  "backbone_docking_layers", "anchor_angles", "ignore_direction"})
TRAINING_STATE = (NORMALIZER_PARAM,)


def check_params(params: dict[str, Any]) -> None:
    """A detector's levels are ordered and its image sides divisible by the coarsest stride."""
    low, high = params["min_level"], params["max_level"]
    if high < low:
        raise DLParamError(f"parameters 'min_level' <= 'max_level' expected, got {low} and {high}")
    unknown = sorted(set(params.get("class_ids_no_orientation") or []) - set(params.get("class_ids") or []))
    if unknown and params.get("class_ids") is not None:
        raise DLParamError(f"parameter 'class_ids_no_orientation': expected ids of the model's class_ids "
                           f"{params['class_ids']}, got {unknown}")
    stride = 2**high
    width, height = params.get("image_width"), params.get("image_height")
    if width is not None and height is not None and (width % stride or height % stride):
        raise DLParamError(f"a detector with max_level {high} needs image sides divisible by 2**{high} = {stride} "
                           f"(the stride of its coarsest level), got {width} x {height}")


def with_classes(network: onnx.ModelProto, params: dict[str, Any], class_ids: list[int]) -> onnx.ModelProto:
    """Refused: the heads' width depends on the class count."""
    raise DLParamError(f"parameter 'class_ids': a detection model keeps the {len(params['class_ids'])} classes it "
                       f"was created with (num_classes); got {len(class_ids)} ids")


def measures(results: list[dict[str, Any]], samples: list[dict[str, Any]], params: dict[str, Any],
             **options: Any) -> dict[str, Any]:
    """``mean_ap`` (IoU 0.5:0.95), mAP@0.5, AP per class and HALCON's nested keys
    (:func:`onnx_dl.measures.detection_measures`, which takes ``options``: ``max_num_detections``,
    ``area_ranges``) with the IoU of the model's box type; oriented boxes add HALCON's ``soap``
    (:func:`onnx_dl.measures.score_of_angle_precision`, over the classes that keep their orientation).
    Ground-truth boxes of ``class_ids_no_orientation`` are compared as the model learns and returns them:
    axis-parallel."""
    kind = box_types.of_params(params)
    truth = [_truth_as_trained(sample, index, params) for index, sample in enumerate(samples)]
    found = measure.detection_measures(results, truth, params["class_ids"], box_type=kind, **options)
    if isinstance(kind, box_types.Rectangle2):
        oriented = [c for c in params["class_ids"] if c not in (params.get("class_ids_no_orientation") or [])]
        found["soap"] = measure.score_of_angle_precision(results, truth, oriented, kind)
    return found


def _truth_as_trained(sample: dict[str, Any], index: int, params: dict[str, Any]) -> dict[str, Any]:
    """A sample whose oriented boxes of ``class_ids_no_orientation`` are their axis-parallel enclosing boxes,
    as the model is trained on them and returns them (:func:`without_orientation`); other samples as given."""
    listed = params.get("class_ids_no_orientation") or []
    if not listed or not isinstance(box_types.of_params(params), box_types.Rectangle2):
        return sample
    boxes, labels = rotated_boxes.checked_boxes(sample, index, positive_size=False)  # as evaluation reads them
    moved = rotated_boxes.enclosing_for_classes(boxes, labels, listed)
    return {**sample, **{key: moved[:, column] for column, key in enumerate(rotated_boxes.BOX_KEYS)}}


def synthetic_samples(count: int, size: int = 128, seed: int = 0) -> list[dict[str, Any]]:
    """Generated images with up to four boxed shapes of three classes (:func:`onnx_dl.synthetic.detection_samples`)."""
    return synthetic.detection_samples(count, size, seed)


def head_weights(network: onnx.ModelProto) -> set[str]:
    """What ``freeze_backbone`` keeps trainable: the feature pyramid and heads the builder added."""
    return {w for w in g.weight_names(network) if w.startswith(HEAD_PREFIX)}


def levels(params: dict[str, Any]) -> list[int]:
    """The pyramid levels with heads: min_level .. max_level."""
    return list(range(params["min_level"], params["max_level"] + 1))


def num_anchors(params: dict[str, Any]) -> int:
    """Anchors per cell: A = anchor_num_subscales * len(anchor_aspect_ratios) (* len(anchor_angles) for
    'rectangle2')."""
    angles = len(params["anchor_angles"]) if box_types.of_params(params).name == "rectangle2" else 1
    return params["anchor_num_subscales"] * len(params["anchor_aspect_ratios"]) * angles


def box_size(params: dict[str, Any]) -> int:
    """Numbers per box and box-head channels per anchor: 4, or 5 for 'rectangle2'."""
    return box_types.of_params(params).size


def result_keys(params: dict[str, Any]) -> tuple[str, ...]:
    """What ``apply_dl_model`` returns per sample for the model's box type."""
    return (*box_types.of_params(params).keys, *CLASS_RESULT_KEYS)


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
        shapes[names[count + index]] = [anchors * box_size(params), *size]
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


def _sample_boxes(sample: dict[str, Any], index: int, params: dict[str, Any],
                  position: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (G, 4) or (G, 5) float64, class indices (G,)) of one sample, validated; oriented boxes of the
    classes in ``class_ids_no_orientation`` replaced by their axis-parallel enclosing box."""
    kind = box_types.of_params(params)
    boxes, labels = kind.checked(sample, index)
    kind.check_inside(boxes, index, params["image_height"], params["image_width"])
    classes = _label_indices(labels, index, position, params["class_ids"])
    return without_orientation(boxes, classes, params), classes


def without_orientation(boxes: np.ndarray, class_index: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Oriented boxes whose class (index into class_ids) is in ``class_ids_no_orientation`` replaced by
    their axis-parallel enclosing box (:func:`onnx_dl.rotated_boxes.enclosing_axis_parallel`); other
    boxes, and axis-parallel ones, as they are."""
    if boxes.shape[-1] != 5:
        return boxes
    ids = np.asarray(params["class_ids"], np.int64)[class_index]
    return rotated_boxes.enclosing_for_classes(boxes, ids, params.get("class_ids_no_orientation"))


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
    finite, row2 > row1, col2 > col1, inside the image, ids in ``class_ids`` (oriented boxes (G, 5):
    length1 > 0, length2 > 0, the centre inside the image)."""
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
    confidence: ``bbox_row1``, ``bbox_col1``, ``bbox_row2``, ``bbox_col2`` (float64 arrays; 'rectangle2':
    ``bbox_row``, ``bbox_col``, ``bbox_length1``, ``bbox_length2``, ``bbox_phi``), ``bbox_class_id`` (int64
    array), ``bbox_class_name`` (list), ``bbox_confidence`` (float64 array). ``keys`` equal to
    :data:`RESULT_KEYS` (apply_dl_model's default) mean every key of the model's box type."""
    kind = box_types.of_params(params)
    count = len(levels(params))
    scores = anchor_targets.flatten_heads(outputs[:count], len(params["class_ids"]))
    deltas = anchor_targets.flatten_heads(outputs[count:], kind.size)
    anchors = anchor_targets.all_anchors(params)
    return [final_boxes(kind.decode(anchors, deltas[n]), scores[n], params, keys) for n in range(len(scores))]


def final_boxes(boxes: np.ndarray, scores: np.ndarray, params: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """One image's result (:func:`results`) from its decoded boxes (M, 4) or (M, 5) and scores (M, K):
    threshold, NMS and cap by the box type's rules, axis-parallel boxes for ``class_ids_no_orientation``."""
    kind = box_types.of_params(params)
    offered = result_keys(params)
    keys = list(offered) if list(keys) == list(RESULT_KEYS) else list(keys)
    unknown = [key for key in keys if key not in offered]
    if unknown:
        raise DLParamError(f"apply_dl_model: unknown outputs {unknown}; this detector offers {list(offered)}")
    ids, names = np.asarray(params["class_ids"], np.int64), params["class_names"]
    kept, index, confidence = kind.postprocess(boxes, scores, params)
    kept = without_orientation(kept, index, params)
    full = {key: kept[:, column].astype(np.float64) for column, key in enumerate(kind.keys)}
    full.update(bbox_class_id=ids[index], bbox_class_name=[names[i] for i in index],
                bbox_confidence=confidence.astype(np.float64))
    return {key: full[key] for key in keys}
