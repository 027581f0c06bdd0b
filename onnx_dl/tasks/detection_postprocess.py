"""A detector as one plain ONNX graph that ends in final boxes: decoding, the confidence threshold,
per-class and class-agnostic NMS (ONNX ``NonMaxSuppression``) and the cap per image.

It reproduces :func:`onnx_dl.boxes.postprocess` (what ``apply_dl_model`` returns), tie rules
included. ``NonMaxSuppression`` orders equal scores arbitrarily (a heap), so it is fed unique
priorities instead of the scores: every (anchor m, class k) pair of an image is ranked by
descending score, equal scores by ascending candidate index m * K + k (a stable ``TopK``), and
gets priority M*K - rank; pairs below ``min_confidence`` get 0 and ``score_threshold`` 0.5 drops
them. Greedy NMS on these priorities visits boxes in exactly the host's order.

Inputs: the image (N, C, H, W). Outputs, one row per detection, sorted by image and then by
descending confidence: ``bbox_image_index`` (D,) int64 (the image in the batch), ``bbox_row1``,
``bbox_col1``, ``bbox_row2``, ``bbox_col2`` (D,) float32, ``bbox_class_id`` (D,) int64,
``bbox_class_name`` (D,) string, ``bbox_confidence`` (D,) float32. Decoding runs in float32 (the
host in float64), so coordinates agree to float32 rounding. The parameters (thresholds, cap) are
those of the model when it is exported.

Oriented boxes ('rectangle2'): ONNX's ``NonMaxSuppression`` knows axis-parallel boxes only, so the
file ends before the NMS. Outputs (:data:`ORIENTED_OUTPUTS`): ``bbox_row``, ``bbox_col``,
``bbox_length1``, ``bbox_length2``, ``bbox_phi`` (N, M) float32, every anchor's decoded box
(:func:`onnx_dl.rotated_boxes.decode` in float32, phi normalised), and ``bbox_scores`` (N, M, K) float32,
every anchor's class scores. :func:`finish_oriented` (NumPy, on the host) applies ``min_confidence``,
the rotated NMS, ``max_num_detections`` and ``class_ids_no_orientation`` and returns what
``apply_dl_model`` returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from .. import anchors as anchor_grid
from .. import box_types, rotated_boxes
from .. import boxes as box_ops
from . import detection
from ..errors import DLParamError
from ..onnx_builder import GraphBuilder

MAX_PAIRS = 2**24  # priorities up to this are exact float32 integers
ORIENTED_OUTPUTS = (*rotated_boxes.BOX_KEYS, "bbox_scores")
OUTPUTS = ("bbox_image_index", "bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2", "bbox_class_id",
           "bbox_class_name", "bbox_confidence")


def _flatten(b: GraphBuilder, heads: list[str], anchors: int, channels: int) -> str:
    """(N, M, C) from head outputs (N, A*C, H_l, W_l), anchors ordered as :func:`onnx_dl.anchors.all_anchors`."""
    flat = []
    for head in heads:
        grid = b.op("Reshape", [head, b.const(np.array([0, anchors, channels, -1]), "grid_shape")], "grid")
        moved = b.op("Transpose", [grid], "grid_moved", perm=[0, 1, 3, 2])
        flat.append(b.op("Reshape", [moved, b.const(np.array([0, -1, channels]), "flat_shape")], "flat"))
    return flat[0] if len(flat) == 1 else b.op("Concat", flat, "heads", axis=1)


def _decode(b: GraphBuilder, deltas: str, params: dict[str, Any]) -> str:
    """(N, M, 4) boxes from deltas (N, M, 4): :func:`onnx_dl.boxes.decode` in float32."""
    anchors = anchor_grid.all_anchors(params)
    height, width = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    centre = np.stack([anchors[:, 0] + 0.5 * height, anchors[:, 1] + 0.5 * width], axis=1)[None]
    extent = np.stack([height, width], axis=1)[None]
    scaled = b.op("Mul", [deltas, b.const(np.asarray(box_ops.BOX_SCALES, np.float32), "box_scales")], "scaled")
    shift, log_scale = b.op("Split", [scaled, b.const(np.array([2, 2]), "halves")], "parts", outputs=2, axis=2)
    extent_const = b.const(extent.astype(np.float32), "anchor_extent")
    centre_new = b.op("Add", [b.const(centre.astype(np.float32), "anchor_centre"),
                              b.op("Mul", [shift, extent_const], "shift")], "centre")
    clamped = b.op("Min", [log_scale, b.const(np.float32(box_ops.MAX_LOG_SCALE), "max_log_scale")], "log_scale")
    half = b.op("Mul", [b.op("Mul", [b.op("Exp", [clamped], "scale"), extent_const], "extent"),
                        b.const(np.float32(0.5), "half")], "half_extent")
    return b.op("Concat", [b.op("Sub", [centre_new, half], "corner1"), b.op("Add", [centre_new, half], "corner2")],
                "boxes", axis=2)


def _priorities(b: GraphBuilder, scores: str, count: int, params: dict[str, Any]) -> str:
    """(N, M*K) unique NMS priorities (module docstring) from scores (N, M, K); 0 below min_confidence."""
    flat = b.op("Reshape", [scores, b.const(np.array([0, -1]), "pairs_shape")], "pairs")
    _, order = b.op("TopK", [flat, b.const(np.array([count]), "pair_count")], "ranked", outputs=2, axis=1, largest=1,
                    sorted=1)
    descending = b.const(np.arange(count, 0, -1, dtype=np.float32)[None], "descending")
    zeros = b.op("ConstantOfShape", [b.op("Shape", [flat], "pair_dims")], "zeros",
                 value=onnx.helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    ranks = b.op("ScatterElements", [zeros, order,
                                     b.op("Expand", [descending, b.op("Shape", [flat], "pairs_dims")], "ranks_wide")],
                 "priority_all", axis=1)
    threshold = b.const(box_ops.onnx_score_threshold(params["min_confidence"]), "min_confidence")
    candidate = b.op("Greater", [flat, threshold], "candidate")
    return b.op("Where", [candidate, ranks, b.const(np.float32(0.0), "none")], "priority")


def _batch(b: GraphBuilder) -> tuple[str, str]:
    """(N as a scalar, the image indices 0 .. N-1) of the graph's image input."""
    image = next(i.name for i in b.graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT)
    batch = b.op("Gather", [b.op("Shape", [image], "input_dims"), b.const(np.array(0), "axis0")], "batch")
    return batch, b.op("Range", [b.const(np.array(0), "start"), batch, b.const(np.array(1), "step")], "images")


def _column(b: GraphBuilder, indices: str, column: int, hint: str) -> str:
    """Column ``column`` of an (S, 3) int64 index table, shape (S,)."""
    return b.op("Gather", [indices, b.const(np.array(column), "column")], hint, axis=1)


def _nms(b: GraphBuilder, boxes: str, priorities: str, limit: str, overlap: float, hint: str) -> str:
    """NonMaxSuppression of boxes (B, S, 4) with priorities (B, C, S): the (selected, 3) index table."""
    return b.op("NonMaxSuppression", [boxes, priorities, limit, b.const(np.array([overlap], np.float32), "iou"),
                                      b.const(np.array([0.5], np.float32), "priority_threshold")], hint)


def _class_agnostic(b: GraphBuilder, image: str, boxes: str, priority: str, overlap: float) -> str:
    """Indices (into the per-class survivors) kept by NMS over all classes of each image."""
    batch, images = _batch(b)
    own = b.op("Equal", [_unsqueeze(b, images, 1), _unsqueeze(b, image, 0)], "own")  # (N, S)
    per_image = b.op("Where", [own, _unsqueeze(b, priority, 0), b.const(np.float32(0.0), "none")], "priority_per_image")
    spread_dims = b.op("Concat", [_unsqueeze(b, batch, 0), b.op("Shape", [boxes], "boxes_dims")], "spread_dims", axis=0)
    spread = b.op("Expand", [_unsqueeze(b, boxes, 0), spread_dims], "boxes_per_image")  # every survivor, per image
    limit = b.op("Slice", [b.op("Shape", [boxes], "survivor_dims"), b.const(np.array([0]), "first"),
                           b.const(np.array([1]), "second")], "survivors")
    kept = _nms(b, spread, _unsqueeze(b, per_image, 1), limit, overlap, "agnostic_kept")
    return _column(b, kept, 2, "agnostic_index")


def _first_per_image(b: GraphBuilder, image: str, priority: str, count: int, cap: int) -> tuple[str, str]:
    """(order, keep): the detections sorted by image, then by descending priority, and the mask of the
    first ``cap`` of each image in that order."""
    key = b.op("Add", [b.op("Mul", [image, b.const(np.array(count + 1), "image_stride")], "image_key"),
                       b.op("Cast", [b.op("Sub", [b.const(np.float32(count), "pair_total"), priority], "rank_f")],
                            "rank", to=TensorProto.INT64)], "sort_key")
    _, order = b.op("TopK", [key, b.op("Shape", [key], "detections")], "sorted", outputs=2, axis=0, largest=0,
                    sorted=1)
    sorted_image = b.op("Gather", [image, order], "sorted_image")
    _, images = _batch(b)
    one_hot = b.op("Cast", [b.op("Equal", [_unsqueeze(b, sorted_image, 1), _unsqueeze(b, images, 0)], "same_image")],
                   "one_hot", to=TensorProto.INT64)
    seen = b.op("CumSum", [one_hot, b.const(np.array(0), "axis0")], "seen")  # detections of each image so far
    position = b.op("GatherElements", [seen, _unsqueeze(b, sorted_image, 1)], "position", axis=1)
    keep = b.op("LessOrEqual", [b.op("Squeeze", [position, b.const(np.array([1]), "axis1")], "position_flat"),
                                b.const(np.array(cap), "cap")], "within_cap")
    return order, keep


def postprocess_graph(network: onnx.ModelProto, params: dict[str, Any]) -> onnx.ModelProto:
    """The detector's inference graph followed by decoding and NMS, ending in the outputs of :data:`OUTPUTS`
    (oriented boxes: decoding only, :func:`oriented_graph`)."""
    if isinstance(box_types.of_params(params), box_types.Rectangle2):
        return oriented_graph(network, params)
    model = detection.inference_graph(network, params)
    names = [output.name for output in model.graph.output]
    levels = len(detection.levels(params))
    anchors, classes = detection.num_anchors(params), len(params["class_ids"])
    count = len(anchor_grid.all_anchors(params)) * classes
    if count >= MAX_PAIRS:
        raise DLParamError(f"write_dl_model(postprocess=True): {count} (anchor, class) pairs per image; the export "
                           f"ranks them with exact float32 integers, so at most {MAX_PAIRS - 1}")
    del model.graph.output[:]
    b = GraphBuilder(model.graph, prefix="postprocess/")
    scores = _flatten(b, names[:levels], anchors, classes)
    boxes = _decode(b, _flatten(b, names[levels:], anchors, 4), params)
    columns = _per_class_survivors(b, scores, boxes, _priorities(b, scores, count, params), classes, params)
    if params["max_overlap_class_agnostic"] < 1.0:
        kept = _class_agnostic(b, columns["image"], columns["boxes"], columns["priority"],
                               params["max_overlap_class_agnostic"])
        columns = {name: b.op("Gather", [value, kept], f"agnostic_{name}", axis=0) for name, value in columns.items()}
    order, keep = _first_per_image(b, columns["image"], columns["priority"], count, params["max_num_detections"])
    final = {name: b.op("Compress", [b.op("Gather", [value, order], f"sorted_{name}", axis=0), keep], f"final_{name}",
                        axis=0) for name, value in columns.items()}
    _declare_outputs(b, final, params)
    onnx.checker.check_model(model)
    return model


def _unsqueeze(b: GraphBuilder, x: str, axis: int) -> str:
    return b.op("Unsqueeze", [x, b.const(np.array([axis]), f"axis{axis}")], "unsqueezed")


def _per_class_survivors(b: GraphBuilder, scores: str, boxes: str, priority: str, classes: int,
                         params: dict[str, Any]) -> dict[str, str]:
    """Per-class NMS; per survivor (S,): its image, class index, priority, confidence and box (S, 4)."""
    by_class = b.op("Transpose", [b.op("Reshape", [priority, b.const(np.array([0, -1, classes]), "pm_shape")],
                                       "priority_pm")], "priority_by_class", perm=[0, 2, 1])
    anchor_count = b.op("Slice", [b.op("Shape", [boxes], "box_dims"), b.const(np.array([1]), "second"),
                                  b.const(np.array([2]), "third")], "anchor_count")
    selected = _nms(b, boxes, by_class, anchor_count, params["max_overlap"], "per_class_kept")
    image, class_index, anchor = (_column(b, selected, i, hint) for i, hint in enumerate(("image", "class", "anchor")))
    pair = b.op("Add", [b.op("Mul", [anchor, b.const(np.array(classes), "classes")], "anchor_pairs"), class_index],
                "pair")
    image_pair = b.op("Concat", [_unsqueeze(b, image, 1), _unsqueeze(b, pair, 1)], "image_pair", axis=1)
    image_anchor = b.op("Concat", [_unsqueeze(b, image, 1), _unsqueeze(b, anchor, 1)], "image_anchor", axis=1)
    flat_scores = b.op("Reshape", [scores, b.const(np.array([0, -1]), "pairs_shape")], "pair_scores")
    return {"image": image, "class": class_index,
            "priority": b.op("GatherND", [priority, image_pair], "sel_priority"),
            "confidence": b.op("GatherND", [flat_scores, image_pair], "sel_confidence"),
            "boxes": b.op("GatherND", [boxes, image_anchor], "sel_boxes")}


def _declare_outputs(b: GraphBuilder, final: dict[str, str], params: dict[str, Any]) -> None:
    """The graph outputs of :data:`OUTPUTS` from the final columns."""
    corners = b.op("Split", [final["boxes"], b.const(np.array([1, 1, 1, 1]), "ones4")], "corner", outputs=4, axis=1)
    squeeze_axis = b.const(np.array([1]), "axis1")
    outputs = {"bbox_image_index": final["image"],
               **{key: b.op("Squeeze", [corner, squeeze_axis], key) for key, corner in
                  zip(detection.BOX_KEYS, corners)},
               "bbox_class_id": b.op("Gather", [b.const(np.asarray(params["class_ids"], np.int64), "class_ids"),
                                                final["class"]], "bbox_class_id"),
               "bbox_class_name": b.op("Gather", [_string_const(b, params["class_names"]), final["class"]],
                                       "bbox_class_name"),
               "bbox_confidence": final["confidence"]}
    types = {"bbox_image_index": TensorProto.INT64, "bbox_class_id": TensorProto.INT64,
             "bbox_class_name": TensorProto.STRING}
    for key in OUTPUTS:
        b.graph.node.append(onnx.helper.make_node("Identity", [outputs[key]], [key], name=f"{key}_output"))
        b.output(key, ["D"], types.get(key, TensorProto.FLOAT))


def _string_const(b: GraphBuilder, values: list[str]) -> str:
    name = b.fresh("class_names")
    b.graph.initializer.append(onnx.helper.make_tensor(name, TensorProto.STRING, [len(values)],
                                                       [v.encode("utf-8") for v in values]))
    return name


def _decode_oriented(b: GraphBuilder, deltas: str, params: dict[str, Any]) -> list[str]:
    """(N, M, 1) row, col, length1, length2, phi from deltas (N, M, 5): :func:`onnx_dl.rotated_boxes.decode`
    in float32; the anchors' axes are constants."""
    anchors = anchor_grid.all_anchors(params)
    u, v = rotated_boxes.axes(anchors[:, 4])
    scaled = b.op("Mul", [deltas, b.const(np.asarray(rotated_boxes.ROTATED_BOX_SCALES, np.float32), "box_scales")],
                  "scaled")
    d1, d2, dl1, dl2, dphi = b.op("Split", [scaled, b.const(np.ones(5, np.int64), "fives")], "delta", outputs=5,
                                  axis=2)

    def column(values: np.ndarray, name: str) -> str:
        return b.const(values.reshape(1, -1, 1).astype(np.float32), name)

    centre = []
    for axis, name in ((0, "row"), (1, "col")):
        along = b.op("Mul", [d1, column(anchors[:, 2] * u[:, axis], f"l1_u_{name}")], f"along_{name}")
        across = b.op("Mul", [d2, column(anchors[:, 3] * v[:, axis], f"l2_v_{name}")], f"across_{name}")
        centre.append(b.op("Add", [column(anchors[:, axis], f"anchor_{name}"),
                                   b.op("Add", [along, across], f"offset_{name}")], f"centre_{name}"))
    limit = b.const(np.float32(box_ops.MAX_LOG_SCALE), "max_log_scale")
    lengths = [b.op("Mul", [column(anchors[:, 2 + i], f"anchor_length{i + 1}"),
                            b.op("Exp", [b.op("Min", [d, limit], f"log_length{i + 1}")], f"scale{i + 1}")],
                    f"length{i + 1}") for i, d in enumerate((dl1, dl2))]
    half = np.float32(0.5 * np.pi if params.get("ignore_direction") else np.pi)
    raw = b.op("Add", [column(anchors[:, 4], "anchor_phi"), dphi], "raw_phi")
    # phi' = h - ((h - phi) mod 2h), mod as x - 2h floor(x / 2h): normalize_angle's rule
    gap = b.op("Sub", [b.const(half, "half_period"), raw], "phi_gap")
    period = b.const(np.float32(2 * half), "period")
    wrapped = b.op("Sub", [gap, b.op("Mul", [period, b.op("Floor", [b.op("Div", [gap, period], "turns")],
                                                          "whole_turns")], "period_part")], "phi_mod")
    phi = b.op("Sub", [b.const(half, "half_period2"), wrapped], "phi")
    return [*centre, *lengths, phi]


def oriented_graph(network: onnx.ModelProto, params: dict[str, Any]) -> onnx.ModelProto:
    """The inference graph of an oriented-box detector followed by decoding: the outputs of
    :data:`ORIENTED_OUTPUTS` (module docstring); :func:`finish_oriented` completes them on the host."""
    model = detection.inference_graph(network, params)
    names = [output.name for output in model.graph.output]
    levels = len(detection.levels(params))
    anchors, classes = detection.num_anchors(params), len(params["class_ids"])
    del model.graph.output[:]
    b = GraphBuilder(model.graph, prefix="postprocess/")
    scores = _flatten(b, names[:levels], anchors, classes)
    parts = _decode_oriented(b, _flatten(b, names[levels:], anchors, 5), params)
    squeeze_axis = b.const(np.array([2]), "axis2")
    for key, part in zip(rotated_boxes.BOX_KEYS, parts):
        b.graph.node.append(onnx.helper.make_node("Squeeze", [part, squeeze_axis], [key], name=f"{key}_output"))
        b.output(key, ["N", "M"])
    b.graph.node.append(onnx.helper.make_node("Identity", [scores], ["bbox_scores"], name="bbox_scores_output"))
    b.output("bbox_scores", ["N", "M", classes])
    onnx.checker.check_model(model)
    return model


def finish_oriented(outputs: dict[str, np.ndarray], params: dict[str, Any]) -> list[dict[str, Any]]:
    """``apply_dl_model``'s results from the outputs of a file written by ``write_dl_model(...,
    postprocess=True)`` for an oriented-box detector (a dict of :data:`ORIENTED_OUTPUTS`, e.g.
    ``dict(zip(names, session.run(None, {"image": x})))``) and the model's parameters (the file's
    metadata: :func:`onnx_dl.serialization.file_params`): per image ``min_confidence``, the rotated NMS
    (``max_overlap``, ``max_overlap_class_agnostic``), ``max_num_detections`` and the axis-parallel boxes of
    ``class_ids_no_orientation`` (:func:`onnx_dl.tasks.detection.final_boxes`)."""
    missing = [key for key in ORIENTED_OUTPUTS if key not in outputs]
    if missing:
        raise DLParamError(f"finish_oriented: the outputs miss {missing}; expected {list(ORIENTED_OUTPUTS)}")
    boxes = np.stack([np.asarray(outputs[key], np.float64) for key in rotated_boxes.BOX_KEYS], axis=-1)
    scores = np.asarray(outputs["bbox_scores"])
    return [detection.final_boxes(boxes[n], scores[n], params, list(detection.RESULT_KEYS)) for n in range(len(boxes))]
