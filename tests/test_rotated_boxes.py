"""Oriented boxes (rectangle2): the convention, IoU against independent references (rasterised, an exact
vertex-collecting polygon intersection, the axis-parallel IoU of onnx_dl.boxes), the encoding, NMS
and the rectangle of a polygon."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnx_dl import boxes as axis_boxes
from onnx_dl import rotated_boxes
from onnx_dl.errors import DLParamError
from onnx_dl.rotated_boxes import (
    ROTATED_BOX_SCALES,
    area,
    canonical,
    corners,
    decode,
    encode,
    from_polygon,
    iou_matrix,
    nms,
    normalize_angle,
    polygon_area,
)

# --------------------------------------------------------------------------------------------- references


def screen_corners(box: np.ndarray) -> list[tuple[float, float]]:
    """Corners as (x, y) = (col, -row), from HALCON's words: length1 at angle phi counter-clockwise from
    the x axis, length2 perpendicular; in counter-clockwise order."""
    row, col, l1, l2, phi = (float(value) for value in box)
    x, y = col, -row
    along, across = (math.cos(phi), math.sin(phi)), (-math.sin(phi), math.cos(phi))
    return [(x + e1 * l1 * along[0] + e2 * l2 * across[0], y + e1 * l1 * along[1] + e2 * l2 * across[1])
            for e1, e2 in ((1, 1), (-1, 1), (-1, -1), (1, -1))]


def _inside(point: tuple[float, float], polygon: list[tuple[float, float]], tolerance: float = 1e-9) -> bool:
    """``point`` in the convex counter-clockwise ``polygon`` (left of every edge)."""
    for (x0, y0), (x1, y1) in zip(polygon, polygon[1:] + polygon[:1]):
        if (x1 - x0) * (point[1] - y0) - (y1 - y0) * (point[0] - x0) < -tolerance:
            return False
    return True


def _segment_crossings(p: list[tuple[float, float]], q: list[tuple[float, float]]) -> list[tuple[float, float]]:
    found = []
    for (ax, ay), (bx, by) in zip(p, p[1:] + p[:1]):
        for (cx, cy), (dx, dy) in zip(q, q[1:] + q[:1]):
            denominator = (bx - ax) * (dy - cy) - (by - ay) * (dx - cx)
            if abs(denominator) < 1e-9 * math.hypot(bx - ax, by - ay) * math.hypot(dx - cx, dy - cy):
                continue  # parallel edges: their common points are vertices found otherwise
            s = ((cx - ax) * (dy - cy) - (cy - ay) * (dx - cx)) / denominator
            t = ((cx - ax) * (by - ay) - (cy - ay) * (bx - ax)) / denominator
            if -1e-12 <= s <= 1 + 1e-12 and -1e-12 <= t <= 1 + 1e-12:
                found.append((ax + s * (bx - ax), ay + s * (by - ay)))
    return found


def exact_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes from the vertices of their intersection: corners of one inside the other and the
    edge crossings, sorted by angle around their mean, then the shoelace area (pure Python)."""
    p, q = screen_corners(a), screen_corners(b)
    points = [v for v in p if _inside(v, q)] + [v for v in q if _inside(v, p)] + _segment_crossings(p, q)
    intersection = 0.0
    if len(points) >= 3:
        mx, my = sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)
        points.sort(key=lambda v: math.atan2(v[1] - my, v[0] - mx))
        intersection = 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1])))
    union = 4 * a[2] * a[3] + 4 * b[2] * b[3] - intersection
    return intersection / union if union > 0 else 0.0


def raster_iou(a: np.ndarray, b: np.ndarray, samples: int = 500) -> float:
    """IoU from the centres of a samples x samples grid over both boxes, each tested against the box's own
    two slabs |(p - c) . u| <= l1, |(p - c) . v| <= l2."""
    reach = max(math.hypot(a[2], a[3]), math.hypot(b[2], b[3]))
    low_row, high_row = min(a[0], b[0]) - reach, max(a[0], b[0]) + reach
    low_col, high_col = min(a[1], b[1]) - reach, max(a[1], b[1]) + reach
    rows = low_row + (np.arange(samples) + 0.5) * (high_row - low_row) / samples
    cols = low_col + (np.arange(samples) + 0.5) * (high_col - low_col) / samples
    grid_row, grid_col = np.meshgrid(rows, cols, indexing="ij")

    def covered(box: np.ndarray) -> np.ndarray:
        row, col, l1, l2, phi = box
        along = (grid_row - row) * -math.sin(phi) + (grid_col - col) * math.cos(phi)
        across = (grid_row - row) * -math.cos(phi) + (grid_col - col) * -math.sin(phi)
        return (np.abs(along) <= l1) & (np.abs(across) <= l2)

    in_a, in_b = covered(a), covered(b)
    return float((in_a & in_b).sum() / max((in_a | in_b).sum(), 1))


def as_rectangle1(boxes: np.ndarray) -> np.ndarray:
    """(row1, col1, row2, col2) of boxes with phi = 0."""
    return np.stack([boxes[:, 0] - boxes[:, 3], boxes[:, 1] - boxes[:, 2],
                     boxes[:, 0] + boxes[:, 3], boxes[:, 1] + boxes[:, 2]], axis=1)


def random_boxes(rng: np.random.Generator, count: int, spread: float = 30.0, angle: bool = True) -> np.ndarray:
    return np.stack([rng.uniform(0, spread, count), rng.uniform(0, spread, count), rng.uniform(0.5, 15, count),
                     rng.uniform(0.5, 15, count), rng.uniform(-4, 4, count) if angle else np.zeros(count)], axis=1)


def same_corners(first: np.ndarray, second: np.ndarray, tolerance: float = 1e-9) -> bool:
    """The two (4, 2) corner sets are equal as sets (each corner of one near a corner of the other)."""
    distance = np.linalg.norm(first[:, None, :] - second[None, :, :], axis=-1)
    return bool((distance.min(axis=1) < tolerance).all() and (distance.min(axis=0) < tolerance).all())


def angle_gap(first: np.ndarray, second: np.ndarray, period: float) -> np.ndarray:
    """|first - second| modulo ``period``, in [0, period / 2]."""
    gap = np.mod(np.asarray(first) - np.asarray(second), period)
    return np.minimum(gap, period - gap)


# ----------------------------------------------------------------------------------------- the convention


def test_direction_convention():
    box = np.array([[10.0, 20.0, 5.0, 1.0, 0.0], [10.0, 20.0, 5.0, 1.0, math.pi / 2]])
    c = corners(box)
    # phi = 0: length1 along the columns; corners counter-clockwise on screen from the top right
    np.testing.assert_array_equal(c[0], [[9, 25], [9, 15], [11, 15], [11, 25]])
    # phi = pi/2: length1 along the rows, first corner up (rows decrease) and to the left
    np.testing.assert_allclose(c[1], [[5, 19], [15, 19], [15, 21], [5, 21]], atol=1e-12)
    # phi = pi/4: length1 points up and to the right on screen
    u, _ = rotated_boxes.axes(np.array(math.pi / 4))
    np.testing.assert_allclose(u, [-math.sqrt(0.5), math.sqrt(0.5)], rtol=1e-15)
    # the same rectangle three ways
    rectangle = np.array([3.0, 4.0, 5.0, 2.0, 0.3])
    for twin in ([3.0, 4.0, 5.0, 2.0, 0.3 + math.pi], [3.0, 4.0, 2.0, 5.0, 0.3 + math.pi / 2]):
        assert same_corners(corners(rectangle), corners(np.array(twin)))


def test_corners_agree_with_area_and_the_screen_formula():
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, 50)
    c = corners(boxes)
    assert c.shape == (50, 4, 2)
    np.testing.assert_allclose(polygon_area(c), area(boxes), rtol=1e-12)  # counter-clockwise: +area
    np.testing.assert_allclose(area(boxes), 4 * boxes[:, 2] * boxes[:, 3], rtol=1e-15)
    for box, box_corners in zip(boxes[:5], c[:5]):
        expected = [(-y, x) for x, y in screen_corners(box)]  # back to (row, col)
        np.testing.assert_allclose(box_corners, expected, atol=1e-12)
    assert area(np.array([[0, 0, 0, 3, 0], [0, 0, -1, 3, 0]], float)).tolist() == [0.0, 0.0]
    assert corners(np.zeros((2, 3, 5))).shape == (2, 3, 4, 2)
    with pytest.raises(ValueError, match=r"\(\.\.\., 5\)"):
        corners(np.zeros((3, 4)))


# ------------------------------------------------------------------------------------------------------ IoU


def test_iou_of_axis_parallel_boxes_equals_the_rectangle1_iou():
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, 40, angle=False), random_boxes(rng, 30, angle=False)
    np.testing.assert_allclose(iou_matrix(a, b), axis_boxes.iou_matrix(as_rectangle1(a), as_rectangle1(b)),
                               rtol=0, atol=1e-12)
    # integer boxes: identical, contained, touching edges and corners, disjoint
    integer = np.concatenate([rng.integers(0, 12, (60, 2)), rng.integers(1, 5, (60, 2)), np.zeros((60, 1))], axis=1)
    integer = integer.astype(np.float64)
    reference = axis_boxes.iou_matrix(as_rectangle1(integer), as_rectangle1(integer))
    assert (reference == 0).any() and (reference == 1).any() and ((reference > 0) & (reference < 1)).any()
    np.testing.assert_allclose(iou_matrix(integer, integer), reference, rtol=0, atol=1e-12)
    # phi = pi is the same rectangle
    turned = integer.copy()
    turned[:, 4] = math.pi
    np.testing.assert_allclose(iou_matrix(turned, integer), reference, rtol=0, atol=1e-12)


def test_iou_by_hand():
    square = np.array([0.0, 0.0, 1.0, 1.0, 0.0])
    diamond = np.array([0.0, 0.0, 1.0, 1.0, math.pi / 4])
    bar = np.array([0.0, 0.0, 5.0, 1.0, 0.0])
    cross_bar = np.array([0.0, 0.0, 5.0, 1.0, math.pi / 2])
    tilted = np.array([3.0, -2.0, 4.0, 1.5, 0.7])
    iou = iou_matrix(np.stack([square, bar, tilted]), np.stack([diamond, cross_bar, tilted]))
    assert iou[0, 0] == pytest.approx(1 / math.sqrt(2), abs=1e-12)  # the octagon 8 (sqrt 2 - 1) / (8 - octagon)
    assert iou[1, 1] == pytest.approx(4 / 36, abs=1e-12)  # a plus sign: 2 x 2 of 20 + 20 - 4
    assert iou[2, 2] == 1.0  # identical rotated boxes: exactly 1
    inner = tilted.copy()
    inner[2:4] *= 0.5
    assert iou_matrix(inner[None], tilted[None])[0, 0] == pytest.approx(0.25, abs=1e-12)  # contained
    assert iou_matrix(diamond[None], square[None])[0, 0] == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_iou_of_touching_disjoint_and_degenerate_boxes_is_zero():
    phi = 0.7
    u, v = rotated_boxes.axes(np.array(phi))
    box = np.array([5.0, 5.0, 2.0, 1.0, phi])
    beside = box.copy()
    beside[:2] += 4.0 * u  # shares the edge at +length1
    above = box.copy()
    above[:2] += 2.0 * v  # shares the edge at +length2
    corner = box.copy()
    corner[:2] += 4.0 * u + 2.0 * v  # touches at one corner only
    far = box.copy()
    far[:2] += 100.0
    iou = iou_matrix(box[None], np.stack([beside, above, corner, far]))
    np.testing.assert_allclose(iou, 0.0, atol=1e-12)
    # zero lengths: IoU 0 and no NaN, also with itself
    flat = np.array([[5.0, 5.0, 0.0, 1.0, phi], [5.0, 5.0, 2.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0, 0.0], box])
    with np.errstate(all="raise"):
        result = iou_matrix(flat, flat)
    assert np.isfinite(result).all()
    np.testing.assert_array_equal(result[:3], 0.0)
    np.testing.assert_array_equal(result[:, :3], 0.0)
    assert result[3, 3] == 1.0
    assert iou_matrix(np.zeros((0, 5)), flat).shape == (0, 4)


def test_corner_touching_squares_pass_the_circle_prefilter_and_give_zero():
    # the circumscribed circles touch exactly: the pair is clipped, and its intersection is one point
    a = np.array([[0.0, 0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0, math.pi / 4]])
    b = np.array([[2.0, 2.0, 1.0, 1.0, 0.0], [0.0, 2.0 * math.sqrt(2), 1.0, 1.0, math.pi / 4]])
    np.testing.assert_allclose(iou_matrix(a, b), 0.0, atol=1e-12)


def _assorted_pairs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of boxes: overlapping at random angles, at 45 degrees, thin, contained, disjoint, identical."""
    first = random_boxes(rng, 12, spread=8.0)
    second = random_boxes(rng, 12, spread=8.0)
    turned = first[:4].copy()
    turned[:, 4] += math.pi / 4
    thin = first[4:8].copy()
    thin[:, 3] = 0.3
    contained = first[8:10].copy()
    contained[:, 2:4] *= rng.uniform(0.2, 0.9, (2, 2))
    contained[:, 4] += rng.uniform(-0.2, 0.2, 2)
    disjoint = first[:2].copy()
    disjoint[:, :2] += 60.0
    return (np.concatenate([first, first[:4], first[4:8], first[8:10], first[:2], first[:2]]),
            np.concatenate([second, turned, thin, contained, disjoint, first[:2]]))


def test_iou_against_an_exact_vertex_collecting_reference():
    rng = np.random.default_rng(2)
    for _ in range(3):
        a, b = _assorted_pairs(rng)
        iou = np.diagonal(iou_matrix(a, b))
        expected = [exact_iou(x, y) for x, y in zip(a, b)]
        np.testing.assert_allclose(iou, expected, rtol=0, atol=1e-9)
        assert ((iou > 0) & (iou < 1)).sum() >= len(iou) // 2


def test_iou_against_rasterisation():
    rng = np.random.default_rng(4)
    a, b = _assorted_pairs(rng)
    iou = np.diagonal(iou_matrix(a, b))
    raster = [raster_iou(x, y) for x, y in zip(a, b)]
    np.testing.assert_allclose(iou, raster, rtol=0, atol=1e-2)


def test_iou_is_symmetric_and_the_pair_chunks_do_not_matter(monkeypatch):
    rng = np.random.default_rng(5)
    a, b = random_boxes(rng, 25), random_boxes(rng, 35)
    iou = iou_matrix(a, b)
    np.testing.assert_allclose(iou, iou_matrix(b, a).T, rtol=0, atol=1e-12)
    assert ((iou > 0) & (iou < 1)).any() and (iou == 0).any()
    assert (iou >= 0).all() and (iou <= 1).all()
    monkeypatch.setattr(rotated_boxes, "_PAIR_CHUNK", 7)
    np.testing.assert_array_equal(iou_matrix(a, b), iou)


# ---------------------------------------------------------------------------------------- angles, encoding


def test_normalize_angle():
    pi = math.pi
    values = np.array([0.0, pi, -pi, pi / 2, -pi / 2, 3 * pi / 2, -3 * pi / 2, 2 * pi, 7.0, -7.0, 1e-300, -1e-17])
    full, half = normalize_angle(values, False), normalize_angle(values, True)
    assert ((full > -pi) & (full <= pi)).all() and ((half > -pi / 2) & (half <= pi / 2)).all()
    assert full[1] == pi and full[2] == pi and half[3] == pi / 2 and half[4] == pi / 2
    assert full[5] == pytest.approx(-pi / 2) and half[1] == pytest.approx(0.0, abs=1e-15)
    np.testing.assert_allclose(angle_gap(full, values, 2 * pi), 0.0, atol=1e-14)
    np.testing.assert_allclose(angle_gap(half, values, pi), 0.0, atol=1e-14)
    boxes = np.array([[1.0, 2.0, 3.0, 4.0, 4.0], [1.0, 2.0, 3.0, 4.0, -2.0]])
    result = canonical(boxes, True)
    np.testing.assert_array_equal(result[:, :4], boxes[:, :4])
    np.testing.assert_allclose(result[:, 4], [4.0 - pi, -2.0 + pi])
    assert same_corners(corners(result[0]), corners(boxes[0]))


@pytest.mark.parametrize("ignore_direction", [False, True])
def test_encode_decode_round_trip(ignore_direction):
    rng = np.random.default_rng(6)
    anchors, targets = random_boxes(rng, 200), random_boxes(rng, 200)
    deltas = encode(anchors, targets, ignore_direction)
    limit = math.pi / 2 if ignore_direction else math.pi
    assert deltas.shape == (200, 5) and (np.abs(deltas[:, 4] * ROTATED_BOX_SCALES[4]) <= limit + 1e-12).all()
    decoded = decode(anchors, deltas, ignore_direction)
    expected = canonical(targets, ignore_direction)
    np.testing.assert_allclose(decoded[:, :4], expected[:, :4], rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(angle_gap(decoded[:, 4], expected[:, 4], 2 * limit), 0.0, atol=1e-12)
    np.testing.assert_allclose(decode(anchors, np.zeros((3, 200, 5)), ignore_direction)[1],
                               canonical(anchors, ignore_direction), atol=1e-12)


def test_encoding_by_hand_and_in_the_anchors_frame():
    anchor = np.array([[10.0, 10.0, 4.0, 2.0, math.pi / 2]])  # length1 points up (towards row 0)
    target = np.array([[9.0, 9.0, 8.0, 2.0, math.pi / 2 + 0.25]])
    deltas = encode(anchor, target, False)
    # one row up: +1 along length1 (4); one column left: +1 along length2 (2); l1 doubled; angle + 0.25
    np.testing.assert_allclose(deltas, [[1 / 4 / 0.1, 1 / 2 / 0.1, math.log(2) / 0.2, 0.0, 0.25]], atol=1e-12)
    # moving and turning anchor and target together leaves the deltas alone
    rng = np.random.default_rng(7)
    anchors, targets = random_boxes(rng, 20), random_boxes(rng, 20)
    angle, shift = 0.9, np.array([3.0, -5.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])  # +angle on screen

    def moved(boxes: np.ndarray) -> np.ndarray:
        out = boxes.copy()
        out[:, :2] = boxes[:, :2] @ rotation.T + shift
        out[:, 4] += angle
        return out

    assert same_corners(corners(moved(anchors[:1]))[0], corners(anchors[:1])[0] @ rotation.T + shift)
    np.testing.assert_allclose(encode(moved(anchors), moved(targets), False), encode(anchors, targets, False),
                               atol=1e-10)
    # the log-length deltas are clamped on decoding, as in onnx_dl.boxes
    huge = decode(anchor, np.array([[0.0, 0.0, 100.0, -100.0, 0.0]]), False)
    np.testing.assert_allclose(huge[0, 2:4], [4.0 * 1000 / 16, 2.0 * math.exp(-20.0)], rtol=1e-12)
    with pytest.raises(ValueError, match="length1 > 0"):
        encode(anchor, np.array([[9.0, 9.0, 0.0, 2.0, 0.0]]), False)


def test_ignore_direction_treats_opposite_angles_as_one_box():
    anchor = np.array([[0.0, 0.0, 6.0, 2.0, 0.1]])
    target = np.array([[1.0, 1.0, 6.0, 2.0, 0.1 + math.pi + 0.2]])
    assert encode(anchor, target, True)[0, 4] == pytest.approx(0.2 / ROTATED_BOX_SCALES[4])
    assert encode(anchor, target, False)[0, 4] == pytest.approx((0.2 - math.pi) / ROTATED_BOX_SCALES[4])
    decoded = decode(anchor, encode(anchor, target, True), True)
    assert same_corners(corners(decoded)[0], corners(target)[0])


# ---------------------------------------------------------------------------------------------------- NMS


def test_nms_by_hand():
    boxes = np.array([
        [0.0, 0.0, 2.0, 1.0, 0.0],        # 0: score .8
        [0.0, 2.0, 2.0, 1.0, 0.0],        # 1: IoU 1/3 with 0 (overlap 2 x 2 of 8 + 8 - 4)
        [0.0, 0.0, 2.0, 1.0, 0.0],        # 2: box 0 again, score .9
        [20.0, 20.0, 3.0, 1.0, 0.5],      # 3: apart, equal score with 4
        [20.0, 20.0, 3.0, 1.0, 0.5],      # 4: box 3 again
    ])
    scores = np.array([0.8, 0.7, 0.9, 0.6, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [2, 1, 3]  # 0 is box 2 again; of 3 and 4 the lower index
    assert nms(boxes, scores, 1 / 3).tolist() == [2, 1, 3]  # IoU == max_overlap is kept
    assert nms(boxes, scores, 0.33).tolist() == [2, 3]
    assert nms(boxes, scores, 1.0).tolist() == [2, 0, 1, 3, 4]
    assert nms(np.zeros((0, 5)), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(DLParamError, match="max_overlap"):
        nms(boxes, scores, 1.5)
    with pytest.raises(ValueError, match="scores"):
        nms(boxes, scores[:3], 0.5)


def test_nms_of_axis_parallel_boxes_equals_the_rectangle1_nms():
    rng = np.random.default_rng(8)
    boxes = random_boxes(rng, 60, angle=False)
    scores = rng.integers(0, 10, 60) / 10.0  # many ties
    for threshold in (0.0, 0.3, 0.7):
        np.testing.assert_array_equal(nms(boxes, scores, threshold),
                                      axis_boxes.nms(as_rectangle1(boxes), scores, threshold))


# ------------------------------------------------------------------------------------------------ polygons


def test_from_polygon_reproduces_rectangles():
    rng = np.random.default_rng(9)
    boxes = random_boxes(rng, 100)
    points = corners(boxes)
    for order in ([0, 1, 2, 3], [2, 3, 0, 1], [3, 2, 1, 0], [1, 0, 3, 2]):  # any start, either direction
        fitted = from_polygon(points[:, order])
        assert ((fitted[:, 2] >= fitted[:, 3]) & (fitted[:, 4] > -math.pi / 2) & (fitted[:, 4] <= math.pi / 2)).all()
        np.testing.assert_allclose(area(fitted), area(boxes), rtol=1e-9)
        np.testing.assert_allclose(fitted[:, :2], boxes[:, :2], atol=1e-9)
        for original, found in zip(points, corners(fitted)):
            assert same_corners(original, found)
    # the swap to length1 >= length2: (l2, l1, phi + pi/2) with phi normalised for ignore_direction
    tall = np.array([7.0, 8.0, 1.0, 3.0, 0.2])
    np.testing.assert_allclose(from_polygon(corners(tall)), [7.0, 8.0, 3.0, 1.0, 0.2 + math.pi / 2 - math.pi],
                               atol=1e-12)


def test_from_polygon_of_other_quadrilaterals():
    # a DOTA-like quadrilateral, not a rectangle: the result holds the points and beats every other angle
    points = np.array([[0.0, 0.0], [1.0, 6.0], [5.0, 7.0], [3.0, -1.0]])
    box = from_polygon(points)
    u, v = rotated_boxes.axes(box[4])
    local = points - box[:2]
    assert (np.abs(local @ u) <= box[2] + 1e-9).all() and (np.abs(local @ v) <= box[3] + 1e-9).all()
    angles = np.linspace(0, math.pi, 20001)
    direction = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    normal = np.stack([-np.sin(angles), np.cos(angles)], axis=1)
    along, across = points @ direction.T, points @ normal.T
    brute = (np.ptp(along, axis=0) * np.ptp(across, axis=0)).min()
    assert area(box) == pytest.approx(brute, rel=1e-3) and area(box) <= brute + 1e-12
    # batches, and coincident points: zero lengths without NaN
    batch = from_polygon(np.stack([points, np.full((4, 2), 3.0), [[0.0, 0.0], [0.0, 2.0], [0.0, 2.0], [0.0, 0.0]]]))
    assert np.isfinite(batch).all()
    np.testing.assert_allclose(batch[1], [3.0, 3.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(batch[2], [0.0, 1.0, 1.0, 0.0, 0.0], atol=1e-15)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 2\)"):
        from_polygon(np.zeros((3, 2)))
