"""Anchors and training targets of the detector (RetinaNet convention), on the host in NumPy.

Level l has stride s = 2**l and a grid of ceil(H / s) x ceil(W / s) cells. Each cell holds
A = num_subscales * len(aspect_ratios) anchors, index a = subscale * len(aspect_ratios) + ratio:

    size = scale * s * 2**(subscale / num_subscales)        (scale = 4: 32 px at level 3)
    h = size * sqrt(r), w = size / sqrt(r)                   (r = height / width)
    centre of cell (i, j) = ((i + 0.5) * s - 0.5, (j + 0.5) * s - 0.5)

in HALCON's pixel-centred coordinates. Head channel layout: channel a * K + k of a class head,
a * 4 + j of a box head; the anchors of all levels in one list (:func:`all_anchors`) are ordered
by level, then (a, row, col).

Oriented boxes (instance_type 'rectangle2', :mod:`onnx_dl.rotated_boxes`): each cell holds
A = num_subscales * len(aspect_ratios) * len(angles) anchors, a = (subscale * len(aspect_ratios) +
ratio) * len(angles) + angle, with r = length1 / length2 (HALCON's definition for rectangle2; at
phi = 0 length1 lies along the columns) and the same area as an axis-parallel anchor of that size:

    length1 = size * sqrt(r) / 2, length2 = size / sqrt(r) / 2, phi = angle

and a box head of a * 5 + j channels. Matching, targets and the head layout are otherwise the same;
the box type (:mod:`onnx_dl.box_types`) supplies the IoU and the delta encoding.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from .box_types import BoxType, of_params
from .errors import DLParamError, DLSampleError

POSITIVE_IOU = 0.5
"""An anchor whose best IoU with a ground-truth box is >= this is positive (takes that box)."""

NEGATIVE_IOU = 0.4
"""An anchor whose best IoU is < this is negative (background); anchors in between are ignored."""


def level_anchors(image_height: int, image_width: int, level: int, num_subscales: int,
                  aspect_ratios: list[float] | tuple[float, ...], scale: float = 4.0) -> np.ndarray:
    """(A, H_l, W_l, 4) float64 anchor boxes (row1, col1, row2, col2) of one level.

        s = 2**level, H_l = ceil(image_height / s), W_l = ceil(image_width / s)
        a = subscale * len(aspect_ratios) + ratio_index
        size = scale * s * 2**(subscale / num_subscales), h = size * sqrt(r), w = size / sqrt(r)
        anchors[a, i, j] = centre ((i + 0.5) * s - 0.5, (j + 0.5) * s - 0.5) -+ (h / 2, w / 2)
    """
    if num_subscales < 1 or len(aspect_ratios) == 0 or min(aspect_ratios) <= 0:
        raise DLParamError(f"anchors: expected anchor_num_subscales >= 1 and aspect ratios > 0, got "
                           f"{num_subscales} and {list(aspect_ratios)}")
    stride = 2 ** level
    rows, cols = math.ceil(image_height / stride), math.ceil(image_width / stride)
    subscale = np.repeat(np.arange(num_subscales), len(aspect_ratios))
    ratio = np.tile(np.asarray(aspect_ratios, np.float64), num_subscales)
    size = scale * stride * 2.0 ** (subscale / num_subscales)
    half_height, half_width = 0.5 * size * np.sqrt(ratio), 0.5 * size / np.sqrt(ratio)
    centre_row = ((np.arange(rows) + 0.5) * stride - 0.5)[None, :, None]
    centre_col = ((np.arange(cols) + 0.5) * stride - 0.5)[None, None, :]
    half_height, half_width = half_height[:, None, None], half_width[:, None, None]
    shape = (len(size), rows, cols)
    return np.stack([np.broadcast_to(centre_row - half_height, shape), np.broadcast_to(centre_col - half_width, shape),
                     np.broadcast_to(centre_row + half_height, shape), np.broadcast_to(centre_col + half_width, shape)],
                    axis=-1)


def oriented_level_anchors(image_height: int, image_width: int, level: int, num_subscales: int,
                           aspect_ratios: list[float] | tuple[float, ...], angles: list[float] | tuple[float, ...],
                           scale: float = 4.0) -> np.ndarray:
    """(A, H_l, W_l, 5) float64 oriented anchors (row, col, length1, length2, phi) of one level:

        a = (subscale * len(aspect_ratios) + ratio_index) * len(angles) + angle_index
        size = scale * s * 2**(subscale / num_subscales)
        length1 = size * sqrt(r) / 2, length2 = size / sqrt(r) / 2  (r = length1 / length2), phi = angle
        centre of cell (i, j) = ((i + 0.5) * s - 0.5, (j + 0.5) * s - 0.5)
    """
    if len(angles) == 0 or not np.isfinite(angles).all():
        raise DLParamError(f"anchors: expected finite anchor_angles, got {list(angles)}")
    boxes = level_anchors(image_height, image_width, level, num_subscales, aspect_ratios, scale)
    count, rows, cols = boxes.shape[:3]
    centre_row, centre_col = 0.5 * (boxes[..., 0] + boxes[..., 2]), 0.5 * (boxes[..., 1] + boxes[..., 3])
    half_height, half_width = 0.5 * (boxes[..., 2] - boxes[..., 0]), 0.5 * (boxes[..., 3] - boxes[..., 1])
    # level_anchors' h = size sqrt(r) is length1 here, its w = size / sqrt(r) length2
    shape = (count, len(angles), rows, cols)
    oriented = np.stack([np.broadcast_to(centre_row[:, None], shape), np.broadcast_to(centre_col[:, None], shape),
                         np.broadcast_to(half_height[:, None], shape), np.broadcast_to(half_width[:, None], shape),
                         np.broadcast_to(np.asarray(angles, np.float64)[None, :, None, None], shape)], axis=-1)
    return oriented.reshape(count * len(angles), rows, cols, 5)


@lru_cache(maxsize=16)
def _cached_anchors(image_height: int, image_width: int, min_level: int, max_level: int, num_subscales: int,
                    aspect_ratios: tuple[float, ...], angles: tuple[float, ...] | None
                    ) -> tuple[np.ndarray, tuple[tuple[int, int, int], ...]]:
    if angles is None:
        per_level = [level_anchors(image_height, image_width, level, num_subscales, aspect_ratios)
                     for level in range(min_level, max_level + 1)]
    else:
        per_level = [oriented_level_anchors(image_height, image_width, level, num_subscales, aspect_ratios, angles)
                     for level in range(min_level, max_level + 1)]
    anchors = np.concatenate([a.reshape(-1, a.shape[-1]) for a in per_level])
    anchors.flags.writeable = False  # shared by every caller through the cache
    return anchors, tuple(a.shape[:3] for a in per_level)


def grid(image_height: int, image_width: int, min_level: int, max_level: int, num_subscales: int,
         aspect_ratios: Any, angles: Any = None) -> np.ndarray:
    """(M, 4) read-only anchors of levels min_level..max_level (oriented (M, 5) with ``angles``), in the order
    of :func:`all_anchors`, cached per configuration."""
    return _cached_anchors(int(image_height), int(image_width), int(min_level), int(max_level), int(num_subscales),
                           tuple(float(r) for r in aspect_ratios),
                           None if angles is None else tuple(float(a) for a in angles))[0]


def _anchors_and_shapes(params: dict[str, Any]) -> tuple[np.ndarray, tuple[tuple[int, int, int], ...]]:
    oriented = params.get("instance_type", "rectangle1") == "rectangle2"
    return _cached_anchors(int(params["image_height"]), int(params["image_width"]), int(params["min_level"]),
                           int(params["max_level"]), int(params["anchor_num_subscales"]),
                           tuple(float(r) for r in params["anchor_aspect_ratios"]),
                           tuple(float(a) for a in params["anchor_angles"]) if oriented else None)


def all_anchors(params: dict[str, Any]) -> np.ndarray:
    """(M, 4) (oriented: (M, 5)) read-only anchors of all levels min_level..max_level, in the order of :func:`flatten_heads`:
    levels ascending, within a level the (A, H_l, W_l) grid flattened. Cached per configuration."""
    return _anchors_and_shapes(params)[0]


def flatten_heads(per_level_arrays: list[np.ndarray], channels: int) -> np.ndarray:
    """(N, M, C) from head outputs (N, A*C, H_l, W_l) per level, channel a * C + c; M = sum_l A*H_l*W_l
    in the order of :func:`all_anchors`."""
    flat = []
    for array in per_level_arrays:
        n, a_times_c, height, width = array.shape
        if a_times_c % channels:
            raise ValueError(f"flatten_heads: {a_times_c} channels is not a multiple of {channels}")
        grid = array.reshape(n, a_times_c // channels, channels, height, width)
        flat.append(grid.transpose(0, 1, 3, 4, 2).reshape(n, -1, channels))
    return np.concatenate(flat, axis=1)


def _match(anchors: np.ndarray, gt_boxes: np.ndarray, box_type: BoxType, work: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(matched box index (M,), positive (M,), negative (M,)) by the rule of :func:`assign`; G >= 1."""
    iou = box_type.iou(gt_boxes, anchors, work)  # (G, M): reductions over the few boxes run fastest this way
    matched = iou.argmax(axis=0)
    best_iou = iou[matched, np.arange(len(anchors))]
    best_per_box = iou.max(axis=1)
    forced_box, forced_anchor = np.nonzero(iou >= best_per_box[:, None] - box_type.tie_tolerance)
    useful = best_per_box[forced_box] > 0
    forced_box, forced_anchor = forced_box[useful], forced_anchor[useful]
    # an anchor forced by several boxes takes the one of highest IoU, equal IoU: the lower box index
    order = np.lexsort((forced_box, -iou[forced_box, forced_anchor], forced_anchor))
    forced_box, forced_anchor = forced_box[order], forced_anchor[order]
    first = np.ones(len(order), bool)
    first[1:] = forced_anchor[1:] != forced_anchor[:-1]
    matched[forced_anchor[first]] = forced_box[first]
    positive = best_iou >= POSITIVE_IOU
    positive[forced_anchor] = True
    return matched, positive, (best_iou < NEGATIVE_IOU) & ~positive


def assign(anchors: np.ndarray, gt_boxes: np.ndarray, gt_class_index: np.ndarray, num_classes: int,
           box_type: BoxType | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Targets of one image: (cls_target (M, K), anchor_weight (M,), box_target (M, 4), positive (M,)).

    With IoU_m = max_g IoU(anchor m, box g):
    - positive if IoU_m >= 0.5, matched to the box of highest IoU (equal IoU: lower box index);
    - forced positive: every box g with max_m IoU(m, g) > 0 also gets all anchors at that maximum
      (ties included, within the box type's ``tie_tolerance``), matched to g even if another box overlaps them more (mmdetection's
      ``gt_max_assign_all``); an anchor that is the best of several boxes takes the one of highest
      IoU (equal IoU: lower box index);
    - negative if IoU_m < 0.4 and not positive; ignored otherwise (0.4 <= IoU_m < 0.5).
    cls_target[m, k] = 1 for positive m matched to a box of class k, else 0; anchor_weight = 1 for
    positive and negative anchors, 0 for ignored; box_target = :func:`onnx_dl.boxes.encode` of the
    matched box for positives, 0 elsewhere. All float32; no boxes: every anchor negative.
    ``box_type`` (:mod:`onnx_dl.box_types`, default axis-parallel) gives the IoU and the encoding;
    oriented anchors and boxes are (M, 5) and (G, 5).
    """
    kind = box_type or of_params({})
    anchors = np.asarray(anchors, np.float64)
    boxes = np.asarray(gt_boxes, np.float64).reshape(-1, kind.size)
    count = len(anchors)
    cls_target = np.zeros((count, num_classes), np.float32)
    box_target = np.zeros((count, kind.size), np.float32)
    if len(boxes) == 0:
        return cls_target, np.ones(count, np.float32), box_target, np.zeros(count, bool)
    matched, positive, negative = _match(anchors, boxes, kind)
    rows = np.nonzero(positive)[0]
    cls_target[rows, np.asarray(gt_class_index, np.int64)[matched[rows]]] = 1.0
    box_target[rows] = kind.encode(anchors[rows], boxes[matched[rows]])
    return cls_target, (positive | negative).astype(np.float32), box_target, positive


def _checked_boxes(boxes: Any, classes: Any, index: int, num_classes: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(boxes, np.float64)
    c = np.asarray(classes)
    if b.size == 0 and c.size == 0:
        return b.reshape(0, size), c.reshape(0).astype(np.int64)
    if b.ndim != 2 or b.shape[1] != size:
        raise DLSampleError(f"sample {index}: expected boxes of shape (G, {size}), got shape {b.shape}")
    if c.shape != (len(b),) or c.dtype.kind not in "iu":
        raise DLSampleError(f"sample {index}: expected {len(b)} integer class indices for {len(b)} boxes, got "
                            f"shape {c.shape} and dtype {c.dtype}")
    positive = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) if size == 4 else (b[:, 2] > 0) & (b[:, 3] > 0)
    if not np.isfinite(b).all() or not positive.all():
        raise DLSampleError(f"sample {index}: expected finite boxes of positive size (row2 > row1 and col2 > col1; "
                            f"oriented: length1 > 0 and length2 > 0)")
    if (c < 0).any() or (c >= num_classes).any():
        raise DLSampleError(f"sample {index}: expected class indices in 0..{num_classes - 1}, got "
                            f"{np.unique(c[(c < 0) | (c >= num_classes)]).tolist()}")
    return b, c.astype(np.int64)


def detection_targets(samples_boxes: list[np.ndarray], samples_class_index: list[np.ndarray],
                      params: dict[str, Any]) -> tuple[list[dict[str, np.ndarray]], int]:
    """Per level min_level..max_level the float32 head targets of a batch, and the number of positives.

    Each level's dict holds ``cls_target`` and ``cls_weight`` (N, A*K, H_l, W_l) at channel a * K + k
    (the weight is the anchor weight of :func:`assign`, repeated for every class) and
    ``box_target`` and ``box_weight`` (N, A*C, H_l, W_l) at channel a * C + j (weight 1 for
    positives, else 0; C = 4, oriented boxes 5). ``num_positive`` counts positive anchors over the batch
    and all levels. ``params`` needs image_width, image_height, min_level, max_level, anchor_num_subscales,
    anchor_aspect_ratios and class_ids (oriented boxes: instance_type, anchor_angles, ignore_direction).
    """
    if not samples_boxes:
        raise DLSampleError("detection_targets: expected at least one image, got an empty list")
    if len(samples_boxes) != len(samples_class_index):
        raise DLSampleError(f"detection_targets: {len(samples_boxes)} box arrays but {len(samples_class_index)} "
                            f"class index arrays")
    anchors, shapes = _anchors_and_shapes(params)
    kind, num_classes = of_params(params), len(params["class_ids"])
    size = kind.size
    checked = [_checked_boxes(b, c, i, num_classes, size)
               for i, (b, c) in enumerate(zip(samples_boxes, samples_class_index))]
    positives, ignored = _match_batch(anchors, [boxes for boxes, _ in checked], kind)
    image, anchor, box = positives
    deltas = kind.encode(anchors[anchor], np.concatenate([b for b, _ in checked])[box]).astype(np.float32)
    box_class = np.concatenate([c for _, c in checked])[box]
    levels, start = [], 0
    for count, rows, cols in shapes:
        level = {"cls_target": np.zeros((len(checked), count * num_classes, rows, cols), np.float32),
                 "cls_weight": np.ones((len(checked), count * num_classes, rows, cols), np.float32),
                 "box_target": np.zeros((len(checked), count * size, rows, cols), np.float32),
                 "box_weight": np.zeros((len(checked), count * size, rows, cols), np.float32)}
        stop = start + count * rows * cols
        inside = (anchor >= start) & (anchor < stop)
        a, row, col = np.unravel_index(anchor[inside] - start, (count, rows, cols))
        level["cls_target"][image[inside], a * num_classes + box_class[inside], row, col] = 1.0
        channel = a[:, None] * size + np.arange(size)
        level["box_target"][image[inside, None], channel, row[:, None], col[:, None]] = deltas[inside]
        level["box_weight"][image[inside, None], channel, row[:, None], col[:, None]] = 1.0
        inside = (ignored[1] >= start) & (ignored[1] < stop)
        a, row, col = np.unravel_index(ignored[1][inside] - start, (count, rows, cols))
        channel = a[:, None] * num_classes + np.arange(num_classes)
        level["cls_weight"][ignored[0][inside, None], channel, row[:, None], col[:, None]] = 0.0
        levels.append(level)
        start = stop
    return levels, len(anchor)


def _match_batch(anchors: np.ndarray, boxes_per_image: list[np.ndarray], box_type: BoxType
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(3, P) (image, anchor, box) of every positive anchor, the box numbered over the whole batch,
    and (2, I) (image, anchor) of every ignored anchor, by the rule of :func:`assign`."""
    work = np.empty((3, max(len(b) for b in boxes_per_image), len(anchors)))  # IoU scratch, shared
    positives, ignored = [np.zeros((3, 0), np.int64)], [np.zeros((2, 0), np.int64)]
    offset = 0
    for image, boxes in enumerate(boxes_per_image):
        if len(boxes):
            matched, positive, negative = _match(anchors, boxes, box_type, work)
            anchor = np.nonzero(positive)[0]
            positives.append(np.stack([np.full(len(anchor), image), anchor, matched[anchor] + offset]))
            anchor = np.nonzero(~(positive | negative))[0]
            ignored.append(np.stack([np.full(len(anchor), image), anchor]))
        offset += len(boxes)
    return np.concatenate(positives, axis=1), np.concatenate(ignored, axis=1)
