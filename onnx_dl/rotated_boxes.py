"""Oriented boxes on the host (HALCON's instance_type 'rectangle2'): corners, areas, the exact IoU of
rotated rectangles, angle normalisation, the box encoding, NMS and the rectangle of a 4-point polygon.

A box is a float array (..., 5) ordered (row, col, length1, length2, phi), HALCON's rectangle2
(``gen_rectangle2``) in the pixel-centred convention of :mod:`onnx_dl.boxes`:

- (row, col): the centre, rows pointing down, columns to the right;
- length1, length2: HALF edge lengths (the rectangle is 2 length1 x 2 length2); length1 lies along
  the direction phi, length2 perpendicular to it; a length <= 0 makes an empty box (area 0);
- phi: the angle in radians of length1's direction, counter-clockwise from the column axis as seen
  on screen (rows down), i.e. mathematically positive in (x, y) = (col, -row). In (row, col)
  coordinates the two unit axes of a box are

      u = (-sin phi, cos phi)     (the length1 direction)
      v = (-cos phi, -sin phi)    (the length2 direction: u turned by +90 degrees on screen)

  so phi = 0 puts length1 along the columns and phi = pi/2 along the rows (pointing up).

(row, col, l1, l2, phi), (row, col, l1, l2, phi + pi) and (row, col, l2, l1, phi + pi/2) are the
same rectangle. With ``ignore_direction`` (HALCON's parameter of that name) phi and phi + pi are the
same box and angles live in (-pi/2, pi/2]; without it they live in (-pi, pi] and the direction of
length1 matters. Geometry is computed in float64.

The IoU, NMS tie and threshold rules are those of :mod:`onnx_dl.boxes`: NMS suppresses at
IoU > max_overlap (IoU == max_overlap is kept), equal scores are taken in ascending index order, and
an empty union gives IoU 0.
"""

from __future__ import annotations

import math

import numpy as np

from collections.abc import Callable
from typing import Any

from . import boxes as axis_boxes
from .boxes import BOX_SCALES, LABEL_KEY, MAX_LOG_SCALE, as_boxes
from .errors import DLSampleError

BOX_KEYS = ("bbox_row", "bbox_col", "bbox_length1", "bbox_length2", "bbox_phi")
"""HALCON's sample and result keys of an oriented box, in the order of the (..., 5) arrays here."""

ANGLE_SCALE = 1.0
"""Divisor of the angle delta in :func:`encode`: the wrapped angle difference is used as it is (its range,
(-pi, pi] or (-pi/2, pi/2], is already of the size of the other scaled deltas of a matched anchor)."""

ROTATED_BOX_SCALES = (*BOX_SCALES, ANGLE_SCALE)
"""Divisors of the deltas (d1, d2, dl1, dl2, dphi): :data:`onnx_dl.boxes.BOX_SCALES` and :data:`ANGLE_SCALE`."""

_PAIR_CHUNK = 1 << 16
"""Pairs clipped at once by :func:`iou_matrix` (bounds its scratch memory to a few tens of MB)."""


def _as_boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    return as_boxes(boxes, name, ("row", "col", "length1", "length2", "phi"))


def axes(phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The unit axes (u, v) of boxes with angles ``phi`` (...), each (..., 2) in (row, col):

        u = (-sin phi, cos phi)  along length1,      v = (-cos phi, -sin phi)  along length2
    """
    sin, cos = np.sin(phi), np.cos(phi)
    return np.stack([-sin, cos], axis=-1), np.stack([-cos, -sin], axis=-1)


def corners(boxes: np.ndarray) -> np.ndarray:
    """The 4 corners (..., 4, 2) as (row, col), counter-clockwise on screen, with c the centre:

        c + l1 u + l2 v,   c - l1 u + l2 v,   c - l1 u - l2 v,   c + l1 u - l2 v

    (phi = 0: top right, top left, bottom left, bottom right). The shoelace sum
    sum_i (r_i c_{i+1} - r_{i+1} c_i) / 2 of this order is +area.
    """
    b = _as_boxes(boxes, "boxes")
    u, v = axes(b[..., 4])
    half1, half2 = b[..., 2, None] * u, b[..., 3, None] * v
    offsets = np.stack([half1 + half2, -half1 + half2, -half1 - half2, half1 - half2], axis=-2)
    return b[..., None, 0:2] + offsets


def area(boxes: np.ndarray) -> np.ndarray:
    """Area of each box: 4 * max(length1, 0) * max(length2, 0), shape (...)."""
    b = _as_boxes(boxes, "boxes")
    return 4.0 * np.maximum(b[..., 2], 0.0) * np.maximum(b[..., 3], 0.0)


def polygon_area(points: np.ndarray) -> np.ndarray:
    """Signed shoelace area of polygons (..., N, 2) in (row, col): sum_i (r_i c_{i+1} - r_{i+1} c_i) / 2,
    positive for a counter-clockwise order on screen. Repeated consecutive points add nothing."""
    p = np.asarray(points, np.float64)
    following = np.roll(p, -1, axis=-2)
    return 0.5 * (p[..., 0] * following[..., 1] - following[..., 0] * p[..., 1]).sum(axis=-1)


def _clip(x: np.ndarray, y: np.ndarray, count: np.ndarray, bound: np.ndarray, sign: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Sutherland-Hodgman step for P polygons at once: keep their part with sign * x <= bound.

    Polygon p has the vertices (x[p, i], y[p, i]) for i < count[p], in order, padded to the width W
    with copies of its last vertex (count 0: empty). With d = bound - sign * x, each edge
    (i, i + 1) emits vertex i if d_i >= 0 and, where d changes side, the point on the line,
    x = sign * bound, y = y_i + (y_i+1 - y_i) d_i / (d_i - d_i+1). The padding adds only edges of
    length 0, which never change side; the edge from slot W - 1 to slot 0 closes the polygon.
    Returns the clipped (x, y), padded the same way to the largest new count, and the new counts.
    """
    polygons, width = x.shape
    distance = bound[:, None] - sign * x
    inside = distance >= 0.0
    crossing = inside != np.roll(inside, -1, axis=1)
    step = np.where(crossing, distance - np.roll(distance, -1, axis=1), 1.0)  # != 0 where crossing
    cut_y = y + (np.roll(y, -1, axis=1) - y) * (np.where(crossing, distance, 0.0) / step)
    keep = np.empty((polygons, width, 2), bool)  # slot 2i: vertex i, 2i + 1: the cut on edge (i, i + 1)
    keep[..., 0] = inside & (np.arange(width) < count[:, None])
    keep[..., 1] = crossing
    points_x, points_y = np.empty((polygons, width, 2)), np.empty((polygons, width, 2))
    points_x[..., 0], points_y[..., 0] = x, y
    points_x[..., 1], points_y[..., 1] = sign * bound[:, None], cut_y
    kept = np.flatnonzero(keep)  # row-major: polygon by polygon, in order
    new_count = keep.reshape(polygons, -1).sum(axis=1)
    new_width = max(int(new_count.max(initial=0)), 1)
    end = np.cumsum(new_count)
    # each polygon's last kept point (an empty polygon takes any point: all its slots stay equal, it stays empty)
    last = kept[np.maximum(end - 1, 0)] if len(kept) else np.zeros(polygons, np.int64)
    owner = np.repeat(np.arange(polygons), new_count)
    target = owner * new_width + np.arange(len(kept)) - np.repeat(end - new_count, new_count)
    clipped = []
    for points in (points_x.reshape(-1), points_y.reshape(-1)):
        padded = np.repeat(points[last][:, None], new_width, axis=1)  # every slot the last vertex ...
        padded.reshape(-1)[target] = points[kept]  # ... then the kept vertices in front
        clipped.append(padded)
    return clipped[0], clipped[1], new_count


def intersection_area(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Area of the intersection of boxes ``a`` (P, 5) and ``b`` (P, 5), pair by pair, shape (P,).

    Sutherland-Hodgman in b's own frame, where b is the axis-parallel |s| <= l1_b, |t| <= l2_b
    (s along u_b, t along v_b, origin at b's centre): a's corners there are

        (s0, t0) +- l1_a (cos dphi, sin dphi) +- l2_a (-sin dphi, cos dphi),
        s0 = (c_a - c_b) . u_b,  t0 = (c_a - c_b) . v_b,  dphi = phi_a - phi_b,

    clipped by s <= l1_b, -s <= l1_b, t <= l2_b, -t <= l2_b (a cut lands exactly on the line); the
    shoelace area of the result, clamped to [0, min(area_a, area_b)], and 0 where either box is empty.
    """
    a, b = _as_boxes(a, "a").reshape(-1, 5), _as_boxes(b, "b").reshape(-1, 5)
    u, v = axes(b[:, 4])
    offset = a[:, :2] - b[:, :2]
    s0, t0 = (offset * u).sum(axis=1), (offset * v).sum(axis=1)
    cos, sin = np.cos(a[:, 4] - b[:, 4]), np.sin(a[:, 4] - b[:, 4])
    signs = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])  # the order of corners()
    along, across = signs[:, 0] * a[:, 2, None], signs[:, 1] * a[:, 3, None]  # (P, 4)
    s = s0[:, None] + along * cos[:, None] - across * sin[:, None]
    t = t0[:, None] + along * sin[:, None] + across * cos[:, None]
    count = np.full(len(a), 4)
    for sign in (1.0, -1.0):
        s, t, count = _clip(s, t, count, b[:, 2], sign)
    for sign in (1.0, -1.0):
        t, s, count = _clip(t, s, count, b[:, 3], sign)
    overlap = np.clip(polygon_area(np.stack([s, t], axis=-1)), 0.0, np.minimum(area(a), area(b)))
    return np.where(count >= 3, overlap, 0.0)


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of every box of ``boxes_a`` (N, 5) with every box of ``boxes_b`` (M, 5).

        I = area of the intersection polygon (:func:`intersection_area`)
        IoU = I / (area_a + area_b - I), and 0 where that union is 0.

    Pairs whose circumscribed circles (radius sqrt(l1^2 + l2^2)) are apart, |c_a - c_b| > r_a + r_b,
    cannot overlap and get 0 without clipping.
    """
    a, b = _as_boxes(boxes_a, "boxes_a").reshape(-1, 5), _as_boxes(boxes_b, "boxes_b").reshape(-1, 5)
    return _iou(a, b, area(a), area(b), _radius(a), _radius(b))


def _radius(boxes: np.ndarray) -> np.ndarray:
    """The radius of each box's circumscribed circle, sqrt(l1^2 + l2^2) (negative lengths as 0)."""
    return np.hypot(np.maximum(boxes[:, 2], 0.0), np.maximum(boxes[:, 3], 0.0))


def _iou(a: np.ndarray, b: np.ndarray, area_a: np.ndarray, area_b: np.ndarray, radius_a: np.ndarray,
         radius_b: np.ndarray) -> np.ndarray:
    """:func:`iou_matrix` of checked (N, 5) and (M, 5) boxes given their areas and circumscribed radii."""
    distance = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    reach = (radius_a[:, None] + radius_b[None, :]) * (1.0 + 1e-9)  # a margin for the rounding of distance
    near = (distance <= reach) & (area_a[:, None] > 0) & (area_b[None, :] > 0)
    rows, cols = np.nonzero(near)
    iou = np.zeros((len(a), len(b)))
    for start in range(0, len(rows), _PAIR_CHUNK):
        r, c = rows[start:start + _PAIR_CHUNK], cols[start:start + _PAIR_CHUNK]
        overlap = intersection_area(a[r], b[c])
        iou[r, c] = overlap / (area_a[r] + area_b[c] - overlap)  # both areas > 0: union >= max area > 0
    return iou


def normalize_angle(phi: np.ndarray, ignore_direction: bool) -> np.ndarray:
    """``phi`` moved by whole periods into (-pi, pi], or with ``ignore_direction`` (period pi) into (-pi/2, pi/2]:

        phi' = h - ((h - phi) mod 2h),   h = pi (pi/2 with ignore_direction)
    """
    half = 0.5 * math.pi if ignore_direction else math.pi
    p = np.asarray(phi, np.float64)
    result = half - np.mod(half - p, 2.0 * half)
    return np.where(result <= -half, result + 2.0 * half, result)  # mod may round up to the period itself


def canonical(boxes: np.ndarray, ignore_direction: bool) -> np.ndarray:
    """The boxes with phi normalised by :func:`normalize_angle`; the lengths are left as they are.

    Two boxes with equal lengths then have equal canonical forms exactly when they are the same box
    (for ignore_direction: the same up to direction). The swap (l1, l2, phi) -> (l2, l1, phi + pi/2),
    which gives the same rectangle, is not applied: which side is length1 is kept as part of the box
    (a detector's length1 is the side along its phi).
    """
    b = _as_boxes(boxes, "boxes").copy()
    b[..., 4] = normalize_angle(b[..., 4], ignore_direction)
    return b


def encode(anchors: np.ndarray, targets: np.ndarray, ignore_direction: bool) -> np.ndarray:
    """Deltas (d1, d2, dl1, dl2, dphi) that move each anchor onto its target box, shape (..., 5), float64.

        d1 = (c_t - c_a) . u_a / l1_a / 0.1      dl1 = log(l1_t / l1_a) / 0.2
        d2 = (c_t - c_a) . v_a / l2_a / 0.1      dl2 = log(l2_t / l2_a) / 0.2
        dphi = normalize_angle(phi_t - phi_a, ignore_direction) / 1.0

    (c the centre, u_a, v_a the anchor's axes (:func:`axes`): the offset in the anchor's own frame).
    Every length must be > 0.
    """
    a, t = _as_boxes(anchors, "anchors"), _as_boxes(targets, "targets")
    if a.shape != t.shape:
        raise ValueError(f"encode: anchors of shape {a.shape} and targets of shape {t.shape} differ")
    if (a[..., 2:4] <= 0).any() or (t[..., 2:4] <= 0).any():
        raise ValueError("encode: every anchor and target box needs length1 > 0 and length2 > 0")
    u, v = axes(a[..., 4])
    offset = t[..., :2] - a[..., :2]
    deltas = np.stack([(offset * u).sum(axis=-1) / a[..., 2], (offset * v).sum(axis=-1) / a[..., 3],
                       np.log(t[..., 2] / a[..., 2]), np.log(t[..., 3] / a[..., 3]),
                       normalize_angle(t[..., 4] - a[..., 4], ignore_direction)], axis=-1)
    return deltas / np.asarray(ROTATED_BOX_SCALES)


def decode(anchors: np.ndarray, deltas: np.ndarray, ignore_direction: bool) -> np.ndarray:
    """Boxes from anchors (M, 5) and deltas (..., M, 5), the inverse of :func:`encode`, float64.

        c = c_a + 0.1 d1 l1_a u_a + 0.1 d2 l2_a v_a
        l1 = l1_a exp(min(0.2 dl1, log(1000/16)))     l2 = l2_a exp(min(0.2 dl2, log(1000/16)))
        phi = normalize_angle(phi_a + 1.0 dphi, ignore_direction)
    """
    a, d = _as_boxes(anchors, "anchors"), _as_boxes(deltas, "deltas")
    if d.shape[-2:] != a.shape[-2:]:
        raise ValueError(f"decode: deltas of shape {d.shape} do not end in the anchors' shape {a.shape}")
    u, v = axes(a[..., 4])
    unscaled = d * np.asarray(ROTATED_BOX_SCALES)
    centre = (a[..., :2] + (unscaled[..., 0] * a[..., 2])[..., None] * u
              + (unscaled[..., 1] * a[..., 3])[..., None] * v)
    length1 = a[..., 2] * np.exp(np.minimum(unscaled[..., 2], MAX_LOG_SCALE))
    length2 = a[..., 3] * np.exp(np.minimum(unscaled[..., 3], MAX_LOG_SCALE))
    phi = normalize_angle(a[..., 4] + unscaled[..., 4], ignore_direction)
    return np.concatenate([centre, np.stack([length1, length2, phi], axis=-1)], axis=-1)


def overlap_function(boxes: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray]:
    """``overlap(i, others)``: the IoU of box i of ``boxes`` (M, 5) with the boxes ``others`` (indices),
    for :func:`onnx_dl.boxes.greedy_nms`."""
    b = _as_boxes(boxes, "boxes").reshape(-1, 5)
    areas, radii = area(b), _radius(b)  # once, not at every greedy step
    return lambda i, others: _iou(b[i:i + 1], b[others], areas[i:i + 1], areas[others], radii[i:i + 1],
                                  radii[others])[0]


def nms(boxes: np.ndarray, scores: np.ndarray, max_overlap: float) -> np.ndarray:
    """Greedy non-maximum suppression: int64 indices of the kept boxes, by descending score.

    Boxes are visited by descending score (equal scores: lower index first); a box is suppressed
    when IoU > ``max_overlap`` with a box kept before it (:func:`onnx_dl.boxes.nms` for oriented boxes).
    """
    b = _as_boxes(boxes, "boxes").reshape(-1, 5)
    s = np.asarray(scores, np.float64).reshape(-1)
    if len(s) != len(b):
        raise ValueError(f"nms: {len(b)} boxes but {len(s)} scores")
    return axis_boxes.greedy_nms(s, np.zeros(len(b), np.int64), axis_boxes.check_overlap(max_overlap, "max_overlap"),
                                 overlap_function(b))


def postprocess(boxes: np.ndarray, scores: np.ndarray, min_confidence: float, max_overlap: float,
                max_overlap_class_agnostic: float, max_num_detections: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Final detections of one image from decoded oriented boxes (M, 5) and class scores (M, K): the
    rules of :func:`onnx_dl.boxes.postprocess` with the IoU of oriented boxes."""
    return axis_boxes.postprocess(boxes, scores, min_confidence, max_overlap, max_overlap_class_agnostic,
                                  max_num_detections, overlap_function)


def checked_boxes(entry: dict[str, Any], index: int, label_key: str = LABEL_KEY, what: str = "sample",
                  positive_size: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (G, 5) float64, labels (G,)) of one sample or result: the keys :data:`BOX_KEYS` and
    ``label_key`` as 1-D numeric arrays of equal lengths, finite values and, with ``positive_size``,
    length1 > 0 and length2 > 0 (the oriented counterpart of :func:`onnx_dl.boxes.checked_boxes`)."""
    boxes, labels = axis_boxes.box_columns(entry, index, BOX_KEYS, label_key, what)
    for column in (2, 3) if positive_size else ():
        bad = np.nonzero(boxes[:, column] <= 0)[0]
        if len(bad):
            raise DLSampleError(f"{what} {index}, key {BOX_KEYS[column]!r}: expected a half edge length > 0, got "
                                f"{boxes[bad[0], column]} (box {bad[0]})")
    return boxes, labels


def enclosing_axis_parallel(boxes: np.ndarray) -> np.ndarray:
    """The smallest axis-parallel rectangle around each box, as an oriented box with phi = 0
    (length1 = half the column extent, length2 = half the row extent): what HALCON trains and predicts
    for the classes of ``class_ids_no_orientation``."""
    b = _as_boxes(boxes, "boxes")
    sin, cos = np.abs(np.sin(b[..., 4])), np.abs(np.cos(b[..., 4]))
    half_cols = b[..., 2] * cos + b[..., 3] * sin
    half_rows = b[..., 2] * sin + b[..., 3] * cos
    return np.stack([b[..., 0], b[..., 1], half_cols, half_rows, np.zeros_like(half_rows)], axis=-1)


def enclosing_for_classes(boxes: np.ndarray, labels: np.ndarray, listed: Any) -> np.ndarray:
    """``boxes`` (G, 5) with those whose label (G,) is in ``listed`` replaced by their axis-parallel enclosing
    box (:func:`enclosing_axis_parallel`; HALCON's ``class_ids_no_orientation``); the others as they are."""
    listed = list(listed or [])
    if not listed or not len(boxes):
        return boxes
    flat = np.isin(np.asarray(labels).reshape(-1), listed)
    return np.where(flat[:, None], enclosing_axis_parallel(boxes), boxes)


def transform(boxes: np.ndarray, matrix: np.ndarray, offset: np.ndarray, ignore_direction: bool) -> np.ndarray:
    """Boxes (G, 5) moved by the affine map p -> matrix @ p + offset of (row, col) points (a resize
    with unequal scales, a mirror, a rotation): the four corners are mapped and the rectangle is refit
    (:func:`from_polygon`, HALCON's rule for anisotropic scaling). Of the refit rectangle's equivalent
    forms the one whose length1 points closest to the mapped length1 direction is taken, so a
    similarity transform (rotation, mirror, equal scales) maps each box exactly, its direction included;
    phi is normalised (:func:`normalize_angle`)."""
    b = _as_boxes(boxes, "boxes").reshape(-1, 5)
    m, t = np.asarray(matrix, np.float64).reshape(2, 2), np.asarray(offset, np.float64).reshape(2)
    mapped = corners(b) @ m.T + t
    fit = from_polygon(mapped)
    direction = axes(b[:, 4])[0] @ m.T  # where the old length1 axis points now
    candidates = [(fit[:, 2], fit[:, 3], fit[:, 4]), (fit[:, 2], fit[:, 3], fit[:, 4] + math.pi),
                  (fit[:, 3], fit[:, 2], fit[:, 4] + 0.5 * math.pi), (fit[:, 3], fit[:, 2], fit[:, 4] - 0.5 * math.pi)]
    alignment = np.stack([(axes(phi)[0] * direction).sum(axis=-1) for _, _, phi in candidates])
    best = alignment.argmax(axis=0)
    pick = np.arange(len(b))
    length1 = np.stack([c[0] for c in candidates])[best, pick]
    length2 = np.stack([c[1] for c in candidates])[best, pick]
    phi = np.stack([c[2] for c in candidates])[best, pick]
    return np.stack([fit[:, 0], fit[:, 1], length1, length2, normalize_angle(phi, ignore_direction)], axis=-1)


_PAIRS = ((0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (1, 3))


def from_polygon(points: np.ndarray) -> np.ndarray:
    """The minimum-area rectangle (..., 5) around 4-point polygons (..., 4, 2) given as (row, col)
    (DOTA's x1 y1 ... x4 y4 are (col, row) pairs: swap them first).

    One side of a minimum-area enclosing rectangle lies along an edge of the points' convex hull, so
    the candidates are the directions of the 6 point pairs: for each, the points' extents along it
    (s) and across it (t) give a rectangle of area (s_max - s_min)(t_max - t_min); the smallest wins
    (the first on ties). A true rectangle is reproduced up to rounding. The result is put in HALCON's
    ``smallest_rectangle2`` form: length1 >= length2 and phi in (-pi/2, pi/2] (a polygon's point order
    carries no direction here). Coincident points give a zero length, all four the same phi = 0.
    """
    p = np.asarray(points, np.float64)
    if p.ndim < 2 or p.shape[-2:] != (4, 2):
        raise ValueError(f"from_polygon: expected points of shape (..., 4, 2) as (row, col), got shape {p.shape}")
    mean = p.mean(axis=-2, keepdims=True)
    local = p - mean  # (..., 4, 2)
    edges = np.stack([p[..., j, :] - p[..., i, :] for i, j in _PAIRS], axis=-2)  # (..., 6, 2)
    norm = np.hypot(edges[..., 0], edges[..., 1])
    fallback = np.broadcast_to(np.array([0.0, 1.0]), edges.shape)  # phi = 0 where two points coincide
    u = np.where(norm[..., None] > 0, edges / np.where(norm > 0, norm, 1.0)[..., None], fallback)
    v = np.stack([-u[..., 1], u[..., 0]], axis=-1)  # u turned by +90 degrees on screen (see axes)
    s = np.einsum("...pk,...ek->...ep", local, u)  # (..., 6, 4): each point along each candidate direction
    t = np.einsum("...pk,...ek->...ep", local, v)
    s_low, s_high, t_low, t_high = s.min(-1), s.max(-1), t.min(-1), t.max(-1)
    best = np.argmin((s_high - s_low) * (t_high - t_low), axis=-1)[..., None]

    def pick(values: np.ndarray) -> np.ndarray:
        return np.take_along_axis(values, best, axis=-1)[..., 0]

    u_best = np.stack([pick(u[..., 0]), pick(u[..., 1])], axis=-1)
    v_best = np.stack([pick(v[..., 0]), pick(v[..., 1])], axis=-1)
    s_mid, t_mid = 0.5 * (pick(s_low) + pick(s_high)), 0.5 * (pick(t_low) + pick(t_high))
    centre = mean[..., 0, :] + s_mid[..., None] * u_best + t_mid[..., None] * v_best
    length1, length2 = 0.5 * (pick(s_high) - pick(s_low)), 0.5 * (pick(t_high) - pick(t_low))
    phi = np.arctan2(-u_best[..., 0], u_best[..., 1])
    swap = length2 > length1
    phi = np.where(swap, phi + 0.5 * math.pi, phi)
    length1, length2 = np.where(swap, length2, length1), np.where(swap, length1, length2)
    return np.concatenate([centre, np.stack([length1, length2, normalize_angle(phi, True)], axis=-1)], axis=-1)
