"""Axis-aligned boxes on the host: the box keys and their validation, areas, IoU, the RetinaNet box
encoding, NMS and post-processing.

Boxes are float arrays (..., 4) ordered (row1, col1, row2, col2) in HALCON's pixel-centred
convention (pixel (r, c) covers r-0.5..r+0.5); height = row2 - row1 and width = col2 - col1 are
continuous extents (no "+1"). Geometry is computed in float64.

Tie and threshold rules (the ONNX export reproduces them):

- candidates: score >= min_confidence, compared exactly (float64);
  :func:`onnx_score_threshold` gives the float32 threshold for ONNX's strict ``score > t``;
- NMS suppresses a box when its IoU with an already kept box of the same group is > max_overlap
  (IoU == max_overlap is kept), as ONNX ``NonMaxSuppression``;
- equal scores are taken in ascending index order; in :func:`postprocess` the index of the
  (anchor m, class k) candidate is m * K + k.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import samples as sample_checks
from .errors import DLParamError, DLSampleError

BOX_KEYS = ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2")
"""HALCON's sample and result keys of a box, in the order of the (..., 4) arrays here."""

LABEL_KEY = "bbox_label_id"
"""The key of a sample's box class ids (a result's is ``bbox_class_id``)."""

BOX_SCALES = (0.1, 0.1, 0.2, 0.2)
"""Divisors of the deltas (dr, dc, dh, dw): the Detectron / RetinaNet box-coder weights 10, 10, 5, 5."""

MAX_LOG_SCALE = math.log(1000.0 / 16.0)
"""Upper clamp of the unscaled log-extent deltas in :func:`decode` (Detectron's value)."""


def _coordinates(entry: dict[str, Any], index: int, key: str, what: str) -> np.ndarray:
    """An entry's 1-D array under ``key`` (one number counts as one box), float64."""
    if key not in entry:
        raise DLSampleError(f"{what} {index}: missing key {key!r} (keys present: {sorted(map(str, entry))})")
    raw = entry[key]
    try:
        values = np.asarray(raw)
    except (ValueError, TypeError):  # ragged sequences, odd objects
        values = np.asarray(None)
    if values.dtype.kind not in "fiu" or values.ndim > 1:
        raise DLSampleError(f"{what} {index}, key {key!r}: expected a 1-D numeric array (one value per box), got "
                            f"{sample_checks.describe(raw)}")
    return values.reshape(-1)


def box_columns(entry: dict[str, Any], index: int, keys: tuple[str, ...], label_key: str = LABEL_KEY,
                what: str = "sample") -> tuple[np.ndarray, np.ndarray]:
    """(boxes (G, len(keys)) float64, labels (G,)) of one sample or result: every key of ``keys`` and
    ``label_key`` present as a 1-D numeric array, all of one length, the box values finite."""
    columns = {key: _coordinates(entry, index, key, what) for key in (*keys, label_key)}
    lengths = {key: len(value) for key, value in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DLSampleError(f"{what} {index}, key {label_key!r}: expected one value per box in each of "
                            f"{list(lengths)}, got lengths {list(lengths.values())}")
    for key in keys:
        bad = np.nonzero(~np.isfinite(columns[key]))[0]
        if len(bad):
            raise DLSampleError(f"{what} {index}, key {key!r}: expected finite coordinates, got "
                                f"{columns[key][bad[0]]} (box {bad[0]})")
    boxes = np.stack([columns[key].astype(np.float64) for key in keys], axis=1).reshape(-1, len(keys))
    return boxes, columns[label_key]


def checked_boxes(entry: dict[str, Any], index: int, label_key: str = LABEL_KEY, what: str = "sample",
                  positive_size: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (G, 4) float64, labels (G,)) of one sample (or result: ``label_key`` 'bbox_class_id',
    ``what`` 'result'): the box keys and the label key present as 1-D numeric arrays of equal lengths,
    finite coordinates and, with ``positive_size``, row2 > row1 and col2 > col1. Where the boxes lie is
    the caller's check (it knows the image). The one validator of axis-aligned boxes: training samples,
    preprocessing and evaluation read boxes through it (:mod:`onnx_dl.rotated_boxes` has the oriented one)."""
    boxes, labels = box_columns(entry, index, BOX_KEYS, label_key, what)
    for first, second in ((0, 2), (1, 3)) if positive_size else ():
        bad = np.nonzero(boxes[:, second] <= boxes[:, first])[0]
        if len(bad):
            raise DLSampleError(f"{what} {index}, key {BOX_KEYS[second]!r}: expected a value greater than "
                                f"{BOX_KEYS[first]} (a box of positive size), got {BOX_KEYS[first]} "
                                f"{boxes[bad[0], first]} and {BOX_KEYS[second]} {boxes[bad[0], second]} (box {bad[0]})")
    return boxes, labels


def as_boxes(boxes: np.ndarray, name: str, layout: tuple[str, ...] = ("row1", "col1", "row2", "col2")) -> np.ndarray:
    """``boxes`` as float64 (..., len(layout)), or a ValueError naming ``name`` and the expected layout."""
    array = np.asarray(boxes, np.float64)
    if array.ndim < 1 or array.shape[-1] != len(layout):
        raise ValueError(f"{name}: expected boxes of shape (..., {len(layout)}) as ({', '.join(layout)}), got shape "
                         f"{array.shape}")
    return array


def area(boxes: np.ndarray) -> np.ndarray:
    """Area of each box: max(row2 - row1, 0) * max(col2 - col1, 0), shape (...)."""
    b = as_boxes(boxes, "boxes")
    return np.maximum(b[..., 2] - b[..., 0], 0.0) * np.maximum(b[..., 3] - b[..., 1], 0.0)


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of every box of ``boxes_a`` (N, 4) with every box of ``boxes_b`` (M, 4).

        I = max(min(r2a, r2b) - max(r1a, r1b), 0) * max(min(c2a, c2b) - max(c1a, c1b), 0)
        IoU = I / (area_a + area_b - I), and 0 where that union is 0.
    """
    a, b = as_boxes(boxes_a, "boxes_a").reshape(-1, 4), as_boxes(boxes_b, "boxes_b").reshape(-1, 4)
    if len(a) > len(b):  # the longer list on the inner axis: NumPy broadcasts far faster that way
        return iou_rows(b, a).T
    return iou_rows(a, b)


def iou_rows(short: np.ndarray, long: np.ndarray, work: np.ndarray | None = None) -> np.ndarray:
    """(len(short), len(long)) IoU as :func:`iou_matrix`, faster when ``long`` is the long list.

    ``work``: optional float64 scratch of shape (3, >= len(short), len(long)), reused between
    calls (touching fresh memory is slow); the result is a view of ``work[0]``.
    """
    r1, c1, r2, c2 = np.ascontiguousarray(long.T)
    s_r1, s_c1, s_r2, s_c2 = (short[:, i, None] for i in range(4))
    if work is None:
        work = np.empty((3, len(short), len(long)))
    intersection, buffer, other = work[0, :len(short)], work[1, :len(short)], work[2, :len(short)]
    np.minimum(r2, s_r2, out=intersection)
    intersection -= np.maximum(r1, s_r1, out=buffer)
    np.maximum(intersection, 0.0, out=intersection)  # the overlap's height
    width = np.minimum(c2, s_c2, out=buffer)
    width -= np.maximum(c1, s_c1, out=other)
    intersection *= np.maximum(width, 0.0, out=width)
    short_area, long_area = area(short), area(long)
    union = np.add(short_area[:, None], long_area[None, :], out=buffer)
    union -= intersection
    if short_area.min(initial=1.0) > 0 or long_area.min(initial=1.0) > 0:
        return np.divide(intersection, union, out=intersection)  # every union > 0
    return np.divide(intersection, union, out=intersection, where=union > 0)  # union 0: intersection is 0 too


def _centre_and_extent(boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    height, width = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * height, boxes[..., 1] + 0.5 * width, height, width


def encode(anchors: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Deltas (dr, dc, dh, dw) that move each anchor onto its target box, shape (M, 4), float64.

        dr = (cr_t - cr_a) / h_a / 0.1      dc = (cc_t - cc_a) / w_a / 0.1
        dh = log(h_t / h_a) / 0.2           dw = log(w_t / w_a) / 0.2

    (cr, cc) is a box's centre, h and w its extents. Every extent must be > 0.
    """
    a, t = as_boxes(anchors, "anchors"), as_boxes(targets, "targets")
    if a.shape != t.shape:
        raise ValueError(f"encode: anchors of shape {a.shape} and targets of shape {t.shape} differ")
    cr_a, cc_a, h_a, w_a = _centre_and_extent(a)
    cr_t, cc_t, h_t, w_t = _centre_and_extent(t)
    if (h_a <= 0).any() or (w_a <= 0).any() or (h_t <= 0).any() or (w_t <= 0).any():
        raise ValueError("encode: every anchor and target box needs row2 > row1 and col2 > col1")
    deltas = np.stack([(cr_t - cr_a) / h_a, (cc_t - cc_a) / w_a, np.log(h_t / h_a), np.log(w_t / w_a)], axis=-1)
    return deltas / np.asarray(BOX_SCALES)


def decode(anchors: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Boxes from anchors (M, 4) and deltas (..., M, 4), the inverse of :func:`encode`, float64.

        cr = cr_a + 0.1 dr h_a     h = h_a exp(min(0.2 dh, log(1000/16)))
        cc = cc_a + 0.1 dc w_a     w = w_a exp(min(0.2 dw, log(1000/16)))
        box = (cr - h/2, cc - w/2, cr + h/2, cc + w/2)
    """
    a, d = as_boxes(anchors, "anchors"), as_boxes(deltas, "deltas")
    if d.shape[-2:] != a.shape[-2:]:
        raise ValueError(f"decode: deltas of shape {d.shape} do not end in the anchors' shape {a.shape}")
    cr_a, cc_a, h_a, w_a = _centre_and_extent(a)
    unscaled = d * np.asarray(BOX_SCALES)
    centre_row = cr_a + unscaled[..., 0] * h_a
    centre_col = cc_a + unscaled[..., 1] * w_a
    height = h_a * np.exp(np.minimum(unscaled[..., 2], MAX_LOG_SCALE))
    width = w_a * np.exp(np.minimum(unscaled[..., 3], MAX_LOG_SCALE))
    return np.stack([centre_row - 0.5 * height, centre_col - 0.5 * width,
                     centre_row + 0.5 * height, centre_col + 0.5 * width], axis=-1)


def _overlap_with(box: np.ndarray, box_area: float, columns: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with many given as columns (4, n) and their areas, as :func:`iou_matrix`."""
    height = np.maximum(np.minimum(columns[2], box[2]) - np.maximum(columns[0], box[0]), 0.0)
    width = np.maximum(np.minimum(columns[3], box[3]) - np.maximum(columns[1], box[1]), 0.0)
    intersection = height * width
    union = box_area + areas - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def overlap_function(boxes: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray]:
    """``overlap(i, others)``: the IoU of box i of ``boxes`` (M, 4) with the boxes ``others`` (indices)."""
    columns, areas = np.ascontiguousarray(boxes.T), area(boxes)
    return lambda i, others: _overlap_with(boxes[i], areas[i], columns[:, others], areas[others])


def greedy_nms(scores: np.ndarray, groups: np.ndarray, max_overlap: float,
               overlap: Callable[[int, np.ndarray], np.ndarray], agnostic_overlap: float = 1.0,
               limit: int | None = None) -> np.ndarray:
    """Greedy NMS within groups, then over all: indices kept, by descending score (ties: lower index first).

    Boxes are visited by descending score; the next remaining box is kept by the group NMS, and
    every remaining box of its group with IoU > ``max_overlap`` is dropped. With
    ``agnostic_overlap`` < 1 a box kept by the group NMS is returned only if its IoU with every
    box returned before it is <= ``agnostic_overlap``: the same as a second NMS over the group
    NMS's result, in one pass. Stops once ``limit`` boxes are returned (later ones rank lower).
    ``overlap(i, others)`` gives the IoU of box i with the boxes of the index array ``others``
    (:func:`overlap_function`; oriented boxes have their own), so one rule serves every box type.
    """
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    groups = np.asarray(groups)[order]
    returned: list[int] = []
    limit = len(order) if limit is None else limit
    while order.size and len(returned) < limit:
        first = int(order[0])
        if agnostic_overlap >= 1.0 or not returned or overlap(first, np.asarray(returned)).max() <= agnostic_overlap:
            returned.append(first)
        stay = overlap(first, order[1:]) <= max_overlap
        stay |= groups[1:] != groups[0]
        order, groups = order[1:][stay], groups[1:][stay]
    return np.asarray(returned, np.int64)


def check_overlap(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise DLParamError(f"{name}: expected an IoU threshold in [0, 1], got {value!r}")
    return float(value)


def nms(boxes: np.ndarray, scores: np.ndarray, max_overlap: float) -> np.ndarray:
    """Greedy non-maximum suppression: int64 indices of the kept boxes, by descending score.

    Boxes are visited by descending score (equal scores: lower index first); a box is suppressed
    when IoU > ``max_overlap`` with a box kept before it.
    """
    b = as_boxes(boxes, "boxes").reshape(-1, 4)
    s = np.asarray(scores, np.float64).reshape(-1)
    if len(s) != len(b):
        raise ValueError(f"nms: {len(b)} boxes but {len(s)} scores")
    return greedy_nms(s, np.zeros(len(b), np.int64), check_overlap(max_overlap, "max_overlap"), overlap_function(b))


def onnx_score_threshold(min_confidence: float) -> np.float32:
    """The float32 ``score_threshold`` t for which ONNX's strict ``score > t`` on float32 scores
    selects exactly the scores with ``score >= min_confidence`` (the rule of :func:`postprocess`).

        t = the largest float32 below the smallest float32 that is >= min_confidence
    """
    smallest = np.float32(min_confidence)
    if float(smallest) < min_confidence:
        smallest = np.nextafter(smallest, np.float32(np.inf))
    return np.nextafter(smallest, np.float32(-np.inf))


def postprocess(boxes: np.ndarray, scores: np.ndarray, min_confidence: float, max_overlap: float,
                max_overlap_class_agnostic: float, max_num_detections: int,
                overlap_of: Callable[[np.ndarray], Callable[[int, np.ndarray], np.ndarray]] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Final detections of one image from decoded boxes (M, 4) and class scores (M, K).

    1. candidates: every (anchor m, class k) with scores[m, k] >= min_confidence, in the order
       of m * K + k;
    2. NMS per class with ``max_overlap``;
    3. if ``max_overlap_class_agnostic`` < 1: NMS over all boxes kept by 2 with that threshold;
    4. the ``max_num_detections`` best.

    Every NMS suppresses at IoU > threshold and takes equal scores in candidate order. Returns
    (boxes (D, 4), class_index (D,) int64, confidence (D,)) by descending confidence, in the
    dtypes of ``boxes`` and ``scores``. ``overlap_of(candidate_boxes)`` makes the IoU function of
    :func:`greedy_nms` (default :func:`overlap_function`; oriented boxes (M, 5) pass
    :func:`onnx_dl.rotated_boxes.overlap_function`).
    """
    b, s = np.asarray(boxes), np.asarray(scores)
    width = 4 if overlap_of is None else b.shape[-1]
    if b.ndim != 2 or b.shape[1] != width or s.ndim != 2 or s.shape[0] != b.shape[0]:
        raise ValueError(f"postprocess: expected boxes (M, {width}) and scores (M, K), got {b.shape} and {s.shape}")
    per_class = check_overlap(max_overlap, "max_overlap")
    agnostic = check_overlap(max_overlap_class_agnostic, "max_overlap_class_agnostic")
    if max_num_detections < 0:
        raise DLParamError(f"max_num_detections: expected a value >= 0, got {max_num_detections!r}")
    anchor, class_index = np.nonzero(s.astype(np.float64) >= float(min_confidence))  # row-major: m * K + k order
    candidate_boxes = b[anchor].astype(np.float64)
    confidence = s[anchor, class_index]
    overlap = (overlap_of or overlap_function)(candidate_boxes)
    kept = greedy_nms(confidence, class_index, per_class, overlap, agnostic, max_num_detections)
    return b[anchor[kept]], class_index[kept].astype(np.int64), confidence[kept]
