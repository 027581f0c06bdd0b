"""Anchors and target assignment on hand-made cases; the head layout against a slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnx_dl.anchors import (
    NEGATIVE_IOU,
    POSITIVE_IOU,
    all_anchors,
    assign,
    detection_targets,
    flatten_heads,
    level_anchors,
)
from onnx_dl.boxes import encode
from onnx_dl.errors import DLParamError, DLSampleError

SQRT2 = math.sqrt(2.0)


def params(height=64, width=64, min_level=3, max_level=4, subscales=1, ratios=(1.0,), class_ids=(0, 1)):
    return {"image_height": height, "image_width": width, "min_level": min_level, "max_level": max_level,
            "anchor_num_subscales": subscales, "anchor_aspect_ratios": list(ratios), "class_ids": list(class_ids)}


def index_of(p: dict, level: int, a: int, row: int, col: int) -> int:
    """Position of anchor (level, a, row, col) in all_anchors, counted by hand."""
    offset = 0
    for lower in range(p["min_level"], level):
        stride = 2 ** lower
        count = p["anchor_num_subscales"] * len(p["anchor_aspect_ratios"])
        offset += count * math.ceil(p["image_height"] / stride) * math.ceil(p["image_width"] / stride)
    cols = math.ceil(p["image_width"] / 2 ** level)
    rows = math.ceil(p["image_height"] / 2 ** level)
    return offset + (a * rows + row) * cols + col


def test_level_anchors_by_hand():
    anchors = level_anchors(64, 48, 4, 2, [1.0, 4.0])  # stride 16: 4 x 3 cells, 2 subscales x 2 ratios
    assert anchors.shape == (4, 4, 3, 4)
    # base size 4 * 16 = 64; a = subscale * 2 + ratio: (64, 64), (128, 32), (64 sqrt2, 64 sqrt2), (128 sqrt2, 32 sqrt2)
    extents = [(64, 64), (128, 32), (64 * SQRT2, 64 * SQRT2), (128 * SQRT2, 32 * SQRT2)]
    for a, (height, width) in enumerate(extents):
        for row in range(4):
            for col in range(3):
                centre_row, centre_col = 16 * row + 7.5, 16 * col + 7.5  # (i + 0.5) * 16 - 0.5
                np.testing.assert_allclose(anchors[a, row, col], [centre_row - height / 2, centre_col - width / 2,
                                                                  centre_row + height / 2, centre_col + width / 2])
    assert anchors[1, 2, 1].tolist() == [-24.5, 7.5, 103.5, 39.5]
    assert level_anchors(50, 33, 3, 3, [0.5, 1.0, 2.0]).shape == (9, 7, 5, 4)  # ceil(50 / 8), ceil(33 / 8)
    with pytest.raises(DLParamError, match="aspect ratios > 0"):
        level_anchors(64, 64, 3, 1, [1.0, 0.0])


def test_all_anchors_order_count_and_cache():
    p = params(height=48, width=80, min_level=3, max_level=5, subscales=2, ratios=(0.5, 1.0, 2.0))
    anchors = all_anchors(p)
    # 6 anchors per cell; 6 x 10, 3 x 5, 2 x 3 cells
    assert anchors.shape == (6 * (6 * 10 + 3 * 5 + 2 * 3), 4)
    for level, a, row, col in [(3, 0, 0, 0), (3, 5, 5, 9), (4, 2, 1, 3), (5, 4, 1, 2), (5, 5, 1, 2)]:
        expected = level_anchors(48, 80, level, 2, [0.5, 1.0, 2.0])[a, row, col]
        np.testing.assert_array_equal(anchors[index_of(p, level, a, row, col)], expected)
    assert all_anchors(dict(p)) is anchors
    with pytest.raises(ValueError):
        anchors[0, 0] = 1.0


def test_flatten_heads_matches_the_layout():
    p = params(height=32, width=48, min_level=3, max_level=4, subscales=1, ratios=(1.0, 2.0))  # A = 2
    channels, rng = 3, np.random.default_rng(0)
    heads = [rng.normal(size=(2, 2 * channels, 4, 6)), rng.normal(size=(2, 2 * channels, 2, 3))]
    flat = flatten_heads(heads, channels)
    assert flat.shape == (2, all_anchors(p).shape[0], channels)
    for level, head in zip((3, 4), heads):
        for n in range(2):
            for a in range(2):
                for row in range(head.shape[2]):
                    for col in range(head.shape[3]):
                        for c in range(channels):
                            assert flat[n, index_of(p, level, a, row, col), c] == head[n, a * channels + c, row, col]


def test_box_exactly_on_an_anchor():
    p = params()                                       # levels 3 (32 x 32 anchors) and 4 (64 x 64)
    anchors = all_anchors(p)
    on = index_of(p, 3, 0, 3, 3)                       # centre (27.5, 27.5)
    box = np.array([[11.5, 11.5, 43.5, 43.5]])
    np.testing.assert_array_equal(anchors[on], box[0])
    cls_target, weight, box_target, positive = assign(anchors, box, np.array([1]), 2)
    # IoU 1 on the anchor; 0.6 = 32*24 / (2*1024 - 768) one cell (8 px) away in a row or column;
    # 0.39 = 24*24 / (2048 - 576) diagonally (negative); level 4 at most 1024 / 4096 = 0.25
    one_cell = [index_of(p, 3, 0, r, c) for r, c in [(2, 3), (4, 3), (3, 2), (3, 4)]]
    assert sorted(np.nonzero(positive)[0].tolist()) == sorted([on, *one_cell])
    assert box_target[on].tolist() == [0.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(box_target[index_of(p, 3, 0, 3, 4)], [0, (27.5 - 35.5) / 32 / 0.1, 0, 0])
    assert cls_target[on].tolist() == [0.0, 1.0] and cls_target[positive, 1].all() and cls_target.sum() == 5
    assert weight.min() == 1.0  # no anchor in the ignore band
    assert cls_target.dtype == weight.dtype == box_target.dtype == np.float32


def test_ignore_band_boundaries():
    box = np.array([[0.0, 0.0, 10.0, 10.0]])
    anchors = np.array([[0, 0, 10, 10],      # IoU 1: positive
                        [0, 0, 10, 5],       # 50 / 100 = 0.5 exactly: positive
                        [0, 0, 10, 4.5],     # 0.45: ignored
                        [0, 0, 10, 4],       # 40 / 100 = 0.4 exactly: ignored
                        [0, 0, 10, 3.5],     # 0.35: negative
                        [50, 50, 60, 60]],   # 0: negative
                       float)
    _, weight, box_target, positive = assign(anchors, box, np.array([0]), 1)
    assert (POSITIVE_IOU, NEGATIVE_IOU) == (0.5, 0.4)
    assert positive.tolist() == [True, True, False, False, False, False]
    assert weight.tolist() == [1, 1, 0, 0, 1, 1]
    np.testing.assert_allclose(box_target[1], [0, 2.5 / 5 / 0.1, 0, math.log(2) / 0.2], rtol=1e-6)
    assert box_target[2:].tolist() == [[0.0] * 4] * 4


def test_box_between_levels():
    p = params()
    box = np.array([[-0.5, -0.5, 47.5, 47.5]])      # 48 x 48, centre (23.5, 23.5): between 32 and 64
    cls_target, weight, _, positive = assign(all_anchors(p), box, np.array([0]), 2)
    # level 4 cell (1, 1) has the same centre: 48^2 / 64^2 = 0.5625 -> the only positive
    assert np.nonzero(positive)[0].tolist() == [index_of(p, 4, 0, 1, 1)]
    # ignored: the four 32 x 32 anchors inside the box (1024 / 2304 = 0.444) and the four level-4
    # neighbours sharing a row or column (48*40 / (4096 + 2304 - 1920) = 0.4286)
    ignored = [index_of(p, 3, 0, r, c) for r in (2, 3) for c in (2, 3)]
    ignored += [index_of(p, 4, 0, r, c) for r, c in [(0, 1), (1, 0), (1, 2), (2, 1)]]
    assert sorted(np.nonzero(weight == 0)[0].tolist()) == sorted(ignored)
    assert cls_target.sum() == 1


def test_tiny_box_gets_all_its_tied_best_anchors():
    p = params()
    box = np.array([[25.5, 25.5, 29.5, 29.5]])      # 4 x 4 around (27.5, 27.5)
    cls_target, weight, box_target, positive = assign(all_anchors(p), box, np.array([1]), 2)
    # every 32 x 32 anchor containing the box has IoU 16 / 1024 < 0.4: forced positive, all 9 tied
    tied = [index_of(p, 3, 0, r, c) for r in (2, 3, 4) for c in (2, 3, 4)]  # centres 19.5, 27.5, 35.5
    assert sorted(np.nonzero(positive)[0].tolist()) == sorted(tied)
    np.testing.assert_allclose(box_target[index_of(p, 3, 0, 3, 3)], [0, 0, math.log(4 / 32) / 0.2,
                                                                      math.log(4 / 32) / 0.2], rtol=1e-6)
    np.testing.assert_allclose(box_target[index_of(p, 3, 0, 2, 4)][:2], [8 / 32 / 0.1, -8 / 32 / 0.1], rtol=1e-6)
    assert weight.min() == 1.0 and cls_target[:, 1].sum() == 9


def test_huge_box_takes_the_largest_anchors():
    p = params(height=128, width=128)               # largest anchors: 64 x 64 at level 4
    box = np.array([[-0.5, -0.5, 127.5, 127.5]])    # the whole image
    _, weight, box_target, positive = assign(all_anchors(p), box, np.array([0]), 2)
    # every 64 x 64 anchor inside the image has IoU 4096 / 16384 = 0.25: centres 39.5 .. 87.5, 16 tied
    tied = [index_of(p, 4, 0, r, c) for r in range(2, 6) for c in range(2, 6)]
    assert sorted(np.nonzero(positive)[0].tolist()) == sorted(tied)
    np.testing.assert_allclose(box_target[index_of(p, 4, 0, 2, 5)],
                               [(63.5 - 39.5) / 64 / 0.1, (63.5 - 87.5) / 64 / 0.1, math.log(2) / 0.2,
                                math.log(2) / 0.2], rtol=1e-6)
    assert weight.min() == 1.0


def test_image_without_boxes_is_all_negative():
    anchors = all_anchors(params())
    cls_target, weight, box_target, positive = assign(anchors, np.zeros((0, 4)), np.zeros(0, np.int64), 2)
    assert not positive.any() and (weight == 1).all() and not cls_target.any() and not box_target.any()
    assert cls_target.shape == (len(anchors), 2)


def test_forced_match_moves_an_anchor_to_the_box_it_serves_best():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [40, 40, 50, 50]], float)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 1]], float)
    # box 0: IoU 1 with anchor 0, 0.9 with anchor 1; box 1: 0.1 with anchor 0, 10 / 90 = 0.111 with anchor 1
    # anchor 1 is box 1's best: it serves box 1 although box 0 overlaps it more
    cls_target, _, box_target, positive = assign(anchors, boxes, np.array([0, 1]), 2)
    assert positive.tolist() == [True, True, False]
    assert cls_target.tolist() == [[1, 0], [0, 1], [0, 0]]
    np.testing.assert_allclose(box_target[1], encode(anchors[1:2], boxes[1:2])[0], rtol=1e-6)
    # one anchor best for two boxes takes the box of higher IoU
    cls_target, _, _, positive = assign(anchors[[0, 2]], boxes, np.array([0, 1]), 2)
    assert positive.tolist() == [True, False] and cls_target.tolist() == [[1, 0], [0, 0]]


def slow_head_targets(boxes_per_image, classes_per_image, p):
    """The layout built by loops from assign(): channel a * K + k and a * 4 + j."""
    anchors, k_count = all_anchors(p), len(p["class_ids"])
    count = p["anchor_num_subscales"] * len(p["anchor_aspect_ratios"])
    levels = []
    for level in range(p["min_level"], p["max_level"] + 1):
        rows, cols = math.ceil(p["image_height"] / 2 ** level), math.ceil(p["image_width"] / 2 ** level)
        levels.append({"cls_target": np.zeros((len(boxes_per_image), count * k_count, rows, cols)),
                       "cls_weight": np.zeros((len(boxes_per_image), count * k_count, rows, cols)),
                       "box_target": np.zeros((len(boxes_per_image), count * 4, rows, cols)),
                       "box_weight": np.zeros((len(boxes_per_image), count * 4, rows, cols))})
    for n, (boxes, classes) in enumerate(zip(boxes_per_image, classes_per_image)):
        cls_target, weight, box_target, positive = assign(anchors, boxes, classes, k_count)
        for li, level in enumerate(range(p["min_level"], p["max_level"] + 1)):
            target = levels[li]
            for a in range(count):
                for row in range(target["cls_target"].shape[2]):
                    for col in range(target["cls_target"].shape[3]):
                        m = index_of(p, level, a, row, col)
                        for k in range(k_count):
                            target["cls_target"][n, a * k_count + k, row, col] = cls_target[m, k]
                            target["cls_weight"][n, a * k_count + k, row, col] = weight[m]
                        for j in range(4):
                            target["box_target"][n, a * 4 + j, row, col] = box_target[m, j]
                            target["box_weight"][n, a * 4 + j, row, col] = float(positive[m])
    return levels


def test_detection_targets_layout_at_a_known_anchor():
    p = params(height=96, width=80, min_level=3, max_level=4, subscales=2, ratios=(1.0, 2.0, 0.5),
               class_ids=(7, 8, 9))
    # level 3, a = 4 (subscale 1, ratio 2.0: 64 x 32), cell (5, 4): centre (43.5, 35.5)
    box = level_anchors(96, 80, 3, 2, [1.0, 2.0, 0.5])[4, 5, 4]
    np.testing.assert_allclose(box, [11.5, 19.5, 75.5, 51.5])
    levels, num_positive = detection_targets([box[None]], [np.array([2])], p)
    level3 = levels[0]
    assert level3["cls_target"].shape == (1, 6 * 3, 12, 10) and levels[1]["box_target"].shape == (1, 6 * 4, 6, 5)
    assert level3["cls_target"][0, 4 * 3 + 2, 5, 4] == 1.0
    assert level3["cls_target"][0, 4 * 3:4 * 3 + 2, 5, 4].tolist() == [0.0, 0.0]
    assert level3["cls_weight"][0, 4 * 3:4 * 3 + 3, 5, 4].tolist() == [1.0, 1.0, 1.0]
    assert level3["box_target"][0, 16:20, 5, 4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert level3["box_weight"][0, 16:20, 5, 4].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert num_positive == sum(int(level["box_weight"].sum()) // 4 for level in levels)
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for level in levels for v in level.values())


def test_detection_targets_match_assign_everywhere():
    p = params(height=48, width=64, min_level=3, max_level=5, subscales=2, ratios=(1.0, 2.0, 0.5), class_ids=(0, 1, 2))
    rng = np.random.default_rng(5)
    boxes_per_image, classes_per_image = [], []
    for count in (3, 0, 1, 5):                       # the second image has no boxes
        corner = rng.uniform(-0.5, 30, (count, 2))
        extent = rng.uniform(2, 30, (count, 2))
        boxes_per_image.append(np.concatenate([corner, np.minimum(corner + extent, [47.5, 63.5])], axis=1))
        classes_per_image.append(rng.integers(0, 3, count))
    levels, num_positive = detection_targets(boxes_per_image, classes_per_image, p)
    expected = slow_head_targets(boxes_per_image, classes_per_image, p)
    for got, want in zip(levels, expected):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)
    positives = sum(assign(all_anchors(p), b, c, 3)[3].sum() for b, c in zip(boxes_per_image, classes_per_image))
    assert num_positive == positives > 0
    assert not levels[0]["cls_target"][1].any() and (levels[0]["cls_weight"][1] == 1).all()


def test_detection_targets_reject_bad_boxes():
    p = params()
    good = np.array([[0.0, 0.0, 10.0, 10.0]])
    with pytest.raises(DLSampleError, match=r"sample 1: expected finite boxes of positive size \(row2 > row1"):
        detection_targets([good, np.array([[5.0, 0.0, 4.0, 10.0]])], [np.array([0]), np.array([0])], p)
    with pytest.raises(DLSampleError, match="sample 0: expected 1 integer class indices"):
        detection_targets([good], [np.array([0, 1])], p)
    with pytest.raises(DLSampleError, match="sample 0: expected class indices in 0..1, got \\[2\\]"):
        detection_targets([good], [np.array([2])], p)
    with pytest.raises(DLSampleError, match="sample 0: expected boxes of shape"):
        detection_targets([np.zeros((2, 3))], [np.array([0, 1])], p)
    with pytest.raises(DLSampleError, match="sample 0: expected finite"):
        detection_targets([np.array([[np.nan, 0, 1, 1]])], [np.array([0])], p)
    with pytest.raises(DLSampleError, match="2 box arrays but 1"):
        detection_targets([good, good], [np.array([0])], p)
