"""Boxes: IoU, encoding, NMS and post-processing against hand-computed values and slow references."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnx_dl.boxes import (
    BOX_SCALES,
    MAX_LOG_SCALE,
    area,
    decode,
    encode,
    iou_matrix,
    iou_rows,
    nms,
    onnx_score_threshold,
    postprocess,
)
from onnx_dl.errors import DLParamError


def pair_iou(a: list[float], b: list[float]) -> float:
    """IoU of two boxes, written from the definition."""
    height = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    width = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - height * width
    return height * width / union if union > 0 else 0.0


def random_boxes(rng: np.random.Generator, count: int, integer: bool = False) -> np.ndarray:
    corner = rng.integers(0, 40, (count, 2)) if integer else rng.uniform(0, 40, (count, 2))
    extent = rng.integers(1, 20, (count, 2)) if integer else rng.uniform(0.5, 20, (count, 2))
    return np.concatenate([corner, corner + extent], axis=1).astype(np.float64)


def test_area_by_hand():
    boxes = np.array([[0, 0, 2, 3], [1.5, -0.5, 2.0, 3.5], [3, 3, 2, 5]])  # the last one is inverted
    assert area(boxes).tolist() == [6.0, 2.0, 0.0]


def test_iou_by_hand():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 5, 5]], float)  # the last one has no area
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [2, 0, 4, 2], [5, 5, 5, 5]], float)
    expected = [
        [1 / 7, 1.0, 0.0, 0.0],   # overlap 1x1 of two 2x2 boxes: 1 / (4 + 4 - 1); touching edges: 0
        [0.0, 1 / 4, 0.0, 0.0],   # [0,1]^2 touches [1,3]^2 at a corner: 0; inside [0,2]^2: 1 / 4
        [0.0, 0.0, 0.0, 0.0],     # union 0 with itself: 0
    ]
    np.testing.assert_allclose(iou_matrix(a, b), expected, rtol=1e-15)
    np.testing.assert_allclose(iou_matrix(b, a), np.transpose(expected), rtol=1e-15)


def test_iou_matches_the_definition_both_ways():
    rng = np.random.default_rng(3)
    a, b = random_boxes(rng, 7), random_boxes(rng, 30)
    expected = np.array([[pair_iou(x, y) for y in b] for x in a])
    np.testing.assert_allclose(iou_matrix(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(iou_matrix(b, a), expected.T, rtol=1e-12)
    work = np.full((3, 9, 30), np.nan)  # a larger scratch than needed, with garbage in it
    np.testing.assert_allclose(iou_rows(a, b, work), expected, rtol=1e-12)


def test_encode_by_hand():
    anchor = np.array([[0.0, 0.0, 10.0, 20.0]])   # centre (5, 10), height 10, width 20
    target = np.array([[2.0, 4.0, 22.0, 24.0]])   # centre (12, 14), height 20, width 20
    # dr = (12 - 5) / 10 / 0.1 = 7; dc = (14 - 10) / 20 / 0.1 = 2; dh = log(20 / 10) / 0.2; dw = log(1) / 0.2
    np.testing.assert_allclose(encode(anchor, target), [[7.0, 2.0, math.log(2) / 0.2, 0.0]], rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(decode(anchor, encode(anchor, target)), target, rtol=1e-14)
    assert BOX_SCALES == (0.1, 0.1, 0.2, 0.2)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    anchors, targets = random_boxes(rng, 50), random_boxes(rng, 50)
    np.testing.assert_allclose(decode(anchors, encode(anchors, targets)), targets, rtol=1e-12, atol=1e-12)
    deltas = rng.normal(0, 2, (3, 50, 4))  # decode broadcasts over leading axes
    decoded = decode(anchors, deltas)
    assert decoded.shape == (3, 50, 4)
    np.testing.assert_allclose(encode(anchors, decoded[1]), deltas[1], rtol=1e-10, atol=1e-10)


def test_decode_clamps_large_extents_only():
    anchor = np.array([[0.0, 0.0, 16.0, 8.0]])
    boxes = decode(anchor, np.array([[0.0, 0.0, 100.0, -50.0]]))  # 0.2 * 100 = 20 > log(1000 / 16)
    height, width = boxes[0, 2] - boxes[0, 0], boxes[0, 3] - boxes[0, 1]
    assert height == pytest.approx(16.0 * 1000 / 16, rel=1e-12) and MAX_LOG_SCALE == pytest.approx(math.log(62.5))
    assert width == pytest.approx(8.0 * math.exp(-10.0), rel=1e-12)  # shrinking is not clamped
    assert (boxes[0, 0] + boxes[0, 2]) / 2 == pytest.approx(8.0)


def test_encode_rejects_boxes_without_extent():
    with pytest.raises(ValueError, match="row2 > row1"):
        encode(np.array([[0.0, 0, 1, 1]]), np.array([[0.0, 0, 0, 1]]))
    with pytest.raises(ValueError, match="shape"):
        encode(np.zeros((2, 4)), np.zeros((3, 4)))


def test_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
    # IoU(0, 1) = 81 / (100 + 100 - 81) = 0.68 > 0.5: box 1 goes; box 2 overlaps nothing
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.7).tolist() == [0, 1, 2]
    assert nms(boxes, np.array([0.1, 0.8, 0.5]), 0.5).tolist() == [1, 2]  # box 1 now suppresses box 0


def test_nms_a_suppressed_box_suppresses_nothing():
    boxes = np.array([[0, 0, 10, 10], [0, 5, 10, 15], [0, 10, 10, 20]], float)
    # IoU(0, 1) = IoU(1, 2) = 50 / 150 = 1/3 > 0.3, IoU(0, 2) = 0: 1 goes, so 2 stays
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]


def test_nms_threshold_boundary_is_kept():
    boxes = np.array([[0, 0, 2, 2], [0, 0, 2, 1]], float)  # IoU exactly 2 / 4 = 0.5
    assert nms(boxes, np.array([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(boxes, np.array([0.9, 0.8]), 0.49).tolist() == [0]


def test_nms_ties_take_the_lower_index_first():
    same = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2]], float)
    assert nms(same, np.array([0.5, 0.7, 0.7]), 0.5).tolist() == [1]
    apart = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10], [20, 20, 21, 21]], float)
    assert nms(apart, np.array([0.3, 0.6, 0.3, 0.6]), 0.5).tolist() == [1, 3, 0, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).dtype == np.int64
    with pytest.raises(DLParamError, match="max_overlap"):
        nms(apart, np.ones(4), 1.5)


def nms_session() -> ort.InferenceSession:
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score"], ["selected"])
    graph = helper.make_graph(
        [node], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, None]),
         helper.make_tensor_value_info("max_out", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def onnx_nms(session: ort.InferenceSession, boxes: np.ndarray, scores: np.ndarray, iou: float,
             score_threshold: float) -> np.ndarray:
    feeds = {"boxes": boxes.astype(np.float32)[None], "scores": scores.astype(np.float32)[None, None],
             "max_out": np.array([len(boxes)], np.int64), "iou": np.array([iou], np.float32),
             "score": np.array([score_threshold], np.float32)}
    return session.run(None, feeds)[0][:, 2]


def test_nms_agrees_with_onnx_nonmaxsuppression():
    """The export's ONNX operator keeps the same boxes in the same order (ties, IoU == threshold)."""
    session, rng = nms_session(), np.random.default_rng(1)
    for _ in range(100):
        boxes = random_boxes(rng, int(rng.integers(1, 40)), integer=True)  # IoUs exact in float32 too
        scores = rng.integers(0, 5, len(boxes)) / 4.0                       # many equal scores
        threshold = float(rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]))
        assert onnx_nms(session, boxes, scores, threshold, -1.0).tolist() == nms(boxes, scores, threshold).tolist()


def test_onnx_score_threshold_turns_strict_into_at_least():
    session, rng = nms_session(), np.random.default_rng(2)
    for min_confidence in (0.5, 0.1, 1 / 3, 0.05, 0.7, 0.0):
        f = np.float32(min_confidence)
        scores = np.concatenate([rng.random(200), [f, np.nextafter(f, np.float32(0)), np.nextafter(f, np.float32(1))]])
        scores = scores.astype(np.float32)
        boxes = np.arange(len(scores))[:, None] * 2.0 + np.array([0.0, 0.0, 1.0, 1.0])  # disjoint
        kept = np.sort(onnx_nms(session, boxes, scores, 0.5, float(onnx_score_threshold(min_confidence))))
        assert kept.tolist() == np.nonzero(scores.astype(np.float64) >= min_confidence)[0].tolist()
    assert onnx_score_threshold(0.5) == np.nextafter(np.float32(0.5), np.float32(0))


def reference_postprocess(boxes, scores, min_confidence, max_overlap, agnostic, max_num):
    """Straightforward loops: candidates by (-score, m * K + k), greedy NMS per class, then over all."""
    m_count, k_count = scores.shape
    candidates = [(-float(scores[m, k]), m * k_count + k, m, k) for m in range(m_count) for k in range(k_count)
                  if float(scores[m, k]) >= min_confidence]
    candidates.sort()
    kept = []
    for candidate in candidates:
        if all(c[3] != candidate[3] or pair_iou(boxes[c[2]], boxes[candidate[2]]) <= max_overlap for c in kept):
            kept.append(candidate)
    if agnostic < 1.0:
        survivors = []
        for candidate in kept:
            if all(pair_iou(boxes[c[2]], boxes[candidate[2]]) <= agnostic for c in survivors):
                survivors.append(candidate)
        kept = survivors
    kept = kept[:max_num]
    return ([boxes[c[2]] for c in kept], [c[3] for c in kept], [scores[c[2], c[3]] for c in kept])


def test_postprocess_matches_a_slow_reference():
    rng = np.random.default_rng(4)
    for trial in range(60):
        count, classes = int(rng.integers(1, 40)), int(rng.integers(1, 4))
        boxes = random_boxes(rng, count, integer=trial % 2 == 0).astype(np.float32)
        scores = (rng.integers(0, 9, (count, classes)) / 8.0 if trial % 3 else rng.random((count, classes)))
        scores = scores.astype(np.float32)
        settings = (float(rng.choice([0.0, 0.25, 0.5, 0.6])), float(rng.choice([0.0, 0.3, 0.5, 1.0])),
                    float(rng.choice([0.2, 0.5, 1.0])), int(rng.choice([1, 3, 100])))
        got_boxes, got_class, got_confidence = postprocess(boxes, scores, *settings)
        want_boxes, want_class, want_confidence = reference_postprocess(boxes, scores, *settings)
        assert got_class.tolist() == want_class and got_class.dtype == np.int64
        np.testing.assert_array_equal(got_boxes, np.reshape(want_boxes, (-1, 4)))
        np.testing.assert_array_equal(got_confidence, want_confidence)
        assert got_boxes.dtype == np.float32 and got_confidence.dtype == np.float32


def test_postprocess_by_hand():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60]], np.float32)
    scores = np.array([[0.9, 0.8], [0.5, 0.85], [0.49, 0.6]], np.float32)
    # candidates >= 0.5: (0,0) .9, (0,1) .8, (1,0) .5, (1,1) .85, (2,1) .6 ; IoU(box 0, box 1) = 0.9
    got_boxes, got_class, got_confidence = postprocess(boxes, scores, 0.5, 0.5, 1.0, 100)
    # class 0: .9 (box 0) suppresses .5 (box 1); class 1: .85 (box 1) suppresses .8 (box 0), .6 (box 2) stays
    assert got_class.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(got_confidence, np.float32([0.9, 0.85, 0.6]))
    np.testing.assert_array_equal(got_boxes, boxes[[0, 1, 2]])
    # class-agnostic NMS at 0.5: box 1 (.85) overlaps box 0 (.9) by 0.9 and goes
    assert postprocess(boxes, scores, 0.5, 0.5, 0.5, 100)[1].tolist() == [0, 1]
    assert postprocess(boxes, scores, 0.5, 0.5, 0.5, 100)[2].tolist() == [np.float32(0.9), np.float32(0.6)]
    assert postprocess(boxes, scores, 0.5, 0.5, 1.0, 2)[2].tolist() == [np.float32(0.9), np.float32(0.85)]
    assert len(postprocess(boxes, scores, 0.95, 0.5, 1.0, 100)[0]) == 0
    half = np.array([[0, 0, 2, 2], [0, 0, 2, 1]], np.float32)  # IoU exactly 0.5, one box per class
    two_classes = np.array([[0.9, 0.0], [0.0, 0.8]], np.float32)
    assert postprocess(half, two_classes, 0.5, 0.0, 0.5, 100)[1].tolist() == [0, 1]  # boundary kept
    assert postprocess(half, two_classes, 0.5, 0.0, 0.49, 100)[1].tolist() == [0]
    with pytest.raises(DLParamError, match="max_overlap_class_agnostic"):
        postprocess(boxes, scores, 0.5, 0.5, -0.1, 100)
