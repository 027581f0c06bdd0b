"""COCO-style mean average precision on hand-computed cases (and against pycocotools when installed)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from onnx_dl.errors import DLSampleError
from onnx_dl.evaluation import COCO_IOU_THRESHOLDS, average_precision, detection_measures, mean_average_precision

TWO_THIRDS_AFTER_HALF = (51 * 1.0 + 50 * 2 / 3) / 101  # precision 1 up to recall 0.5 (51 points), then 2/3


def sample(boxes: list[list[float]], labels: list[int]) -> dict:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return {"bbox_row1": b[:, 0], "bbox_col1": b[:, 1], "bbox_row2": b[:, 2], "bbox_col2": b[:, 3],
            "bbox_label_id": np.asarray(labels, np.int64)}


def result(boxes: list[list[float]], labels: list[int], confidences: list[float]) -> dict:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return {"bbox_row1": b[:, 0], "bbox_col1": b[:, 1], "bbox_row2": b[:, 2], "bbox_col2": b[:, 3],
            "bbox_class_id": np.asarray(labels, np.int64), "bbox_confidence": np.asarray(confidences, np.float64)}


def test_average_precision_by_hand():
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == 1.0
    # envelope (1, 2/3, 2/3): recall points 0..0.5 reach index 0 (precision 1), 0.51..1 index 2 (2/3)
    assert average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(
        TWO_THIRDS_AFTER_HALF)
    assert average_precision(np.array([0.5]), np.array([1.0])) == pytest.approx(51 / 101)  # recall stops at 0.5
    assert average_precision(np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.5, 2 / 3])) == pytest.approx(2 / 3)
    assert average_precision(np.zeros(0), np.zeros(0)) == 0.0


def test_perfect_detections_give_one():
    boxes = [[0, 0, 10, 10], [20, 20, 40, 30]]
    samples = [sample(boxes, [1, 2]), sample([[5, 5, 9, 9]], [1])]
    results = [result(boxes, [1, 2], [0.9, 0.8]), result([[5, 5, 9, 9]], [1], [0.3])]
    m = mean_average_precision(results, samples, [1, 2])
    assert m == {"mean_ap": 1.0, "ap_per_class": {1: 1.0, 2: 1.0}}
    assert detection_measures(results, samples, [1, 2])["map_50_95"] == 1.0


def test_one_false_positive_ranked_first():
    samples = [sample([[0, 0, 10, 10]], [1]), sample([[0, 0, 10, 10]], [1])]
    results = [result([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1], [0.8, 0.9]),  # the FP has the top score
               result([[0, 0, 10, 10]], [1], [0.7])]
    # by confidence: FP, TP, TP -> recall (0, .5, 1), precision (0, .5, 2/3); envelope 2/3 everywhere
    assert mean_average_precision(results, samples, [1])["mean_ap"] == pytest.approx(2 / 3)


def test_missed_ground_truth():
    samples = [sample([[0, 0, 10, 10], [20, 20, 30, 30]], [2, 2])]
    results = [result([[20, 20, 30, 30]], [2], [0.9])]
    # one TP of two boxes: recall 0.5 with precision 1, then nothing: 51 of 101 points
    assert mean_average_precision(results, samples, [2])["mean_ap"] == pytest.approx(51 / 101)
    assert mean_average_precision([result([], [], [])], samples, [2])["mean_ap"] == 0.0  # nothing detected


def test_duplicate_detections_count_as_false_positives():
    samples = [sample([[0, 0, 10, 10], [20, 20, 30, 30]], [3, 3])]
    results = [result([[0, 0, 10, 10], [0, 0, 10, 10.5], [20, 20, 30, 30]], [3, 3, 3], [0.9, 0.8, 0.7])]
    # TP, duplicate (the box is taken) = FP, TP: recall (.5, .5, 1), precision (1, .5, 2/3)
    assert mean_average_precision(results, samples, [3])["mean_ap"] == pytest.approx(TWO_THIRDS_AFTER_HALF)
    low = [result([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]], [3, 3, 3], [0.9, 0.8, 0.7])]
    assert mean_average_precision(low, samples, [3])["mean_ap"] == 1.0  # a duplicate after full recall costs nothing


def test_class_without_ground_truth_is_left_out():
    samples = [sample([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])]
    results = [result([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 1, 3], [0.9, 0.8, 0.95])]
    m = mean_average_precision(results, samples, [1, 2, 3])
    # class 1: TP then FP -> 1; class 2: missed -> 0; class 3: no ground truth, only a FP -> left out
    assert m["ap_per_class"][1] == 1.0 and m["ap_per_class"][2] == 0.0 and np.isnan(m["ap_per_class"][3])
    assert m["mean_ap"] == pytest.approx(0.5)
    assert np.isnan(mean_average_precision([result([], [], [])], [sample([], [])], [1])["mean_ap"])


def test_iou_thresholds_and_the_coco_range():
    samples = [sample([[0, 0, 10, 10]], [1])]
    results = [result([[0, 0, 10, 6]], [1], [0.9])]  # IoU 60 / 100 = 0.6
    m = mean_average_precision(results, samples, [1], iou_thresholds=(0.5, 0.75))
    assert m["mean_ap"] == pytest.approx(0.5) and m["ap_per_class"][1] == pytest.approx(0.5)
    d = detection_measures(results, samples, [1])
    # a match at 0.5, 0.55 and 0.6 (IoU >= threshold, 0.6 included), none at 0.65 .. 0.95
    assert COCO_IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    assert d["map_50"] == 1.0 and d["map_50_95"] == pytest.approx(0.3)
    assert d["ap_50_per_class"] == {1: 1.0} and d["ap_50_95_per_class"][1] == pytest.approx(0.3)


def test_a_detection_takes_the_box_it_overlaps_most():
    samples = [sample([[0, 0, 10, 10], [0, 5, 10, 15]], [1, 1])]
    # first detection: IoU 70/130 = 0.54 with box 0, 80/120 = 0.67 with box 1 -> takes box 1;
    # the second sits exactly on box 0. Taking box 0 first would leave it 50/150 with box 1: a FP
    results = [result([[0, 3, 10, 13], [0, 0, 10, 10]], [1, 1], [0.9, 0.8])]
    assert mean_average_precision(results, samples, [1])["mean_ap"] == 1.0


def test_detections_of_several_images_are_ranked_together():
    samples = [sample([[0, 0, 10, 10]], [1]), sample([[0, 0, 10, 10]], [1])]
    results = [result([[0, 0, 10, 10]], [1], [0.5]), result([[30, 30, 40, 40], [0, 0, 10, 10]], [1, 1], [0.9, 0.4])]
    # by confidence over both images: FP (.9), TP (.5), TP (.4): as the FP-first case, 2/3
    assert mean_average_precision(results, samples, [1])["mean_ap"] == pytest.approx(2 / 3)


def test_bad_input_is_named():
    samples = [sample([[0, 0, 10, 10]], [1])]
    with pytest.raises(DLSampleError, match="one result per sample"):
        mean_average_precision([], samples, [1])
    with pytest.raises(DLSampleError, match="sample 0, key 'bbox_label_id': expected ids in class_ids"):
        mean_average_precision([result([], [], [])], samples, [2])
    with pytest.raises(DLSampleError, match="result 0, key 'bbox_class_id'"):
        mean_average_precision([result([[0, 0, 1, 1]], [5], [0.5])], samples, [1])
    broken = result([[0, 0, 1, 1]], [1], [0.5])
    broken["bbox_row2"] = np.array([1.0, 2.0])
    with pytest.raises(DLSampleError, match=r"result 0, key .bbox_class_id.: expected one value per box .* got lengths \[1, 1, 2, 1, 1\]"):
        mean_average_precision([broken], samples, [1])
    with pytest.raises(DLSampleError, match="result 0: expected 1 bbox_confidence values, got 2"):
        mean_average_precision([result([[0, 0, 1, 1]], [1], [0.5, 0.2])], samples, [1])
    with pytest.raises(DLSampleError, match="sample 0: missing key 'bbox_col2'"):
        mean_average_precision([result([], [], [])], [{"bbox_row1": [], "bbox_col1": [], "bbox_row2": []}], [1])


def random_case(seed: int) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    samples, results = [], []
    for _ in range(8):
        count = int(rng.integers(0, 6))
        corner, extent = rng.uniform(0, 80, (count, 2)), rng.uniform(4, 40, (count, 2))
        boxes = np.concatenate([corner, corner + extent], axis=1)
        labels = rng.integers(0, 3, count)
        samples.append(sample(boxes.tolist(), labels.tolist()))
        keep = rng.random(count) < 0.8
        jitter = boxes[keep] + rng.normal(0, 3, (int(keep.sum()), 4))
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        false = rng.integers(0, 4)
        corner = rng.uniform(0, 80, (false, 2))
        fp = np.concatenate([corner, corner + rng.uniform(4, 40, (false, 2))], axis=1)
        det = np.concatenate([jitter, fp])
        det_labels = np.concatenate([np.where(rng.random(int(keep.sum())) < 0.9, labels[keep], rng.integers(0, 3)),
                                     rng.integers(0, 3, false)])
        results.append(result(det.tolist(), det_labels.tolist(), rng.random(len(det)).tolist()))
    return results, samples


def coco_evaluation(results: list[dict], samples: list[dict], categories: int):
    """pycocotools' COCOeval (bbox) of the results, after evaluate and accumulate (printing silenced)."""
    coco_module = pytest.importorskip("pycocotools.coco")
    cocoeval_module = pytest.importorskip("pycocotools.cocoeval")
    images, annotations, detections = [], [], []
    for image_id, (r, s) in enumerate(zip(results, samples)):
        images.append({"id": image_id, "width": 400, "height": 400})
        for row1, col1, row2, col2, label in zip(s["bbox_row1"], s["bbox_col1"], s["bbox_row2"], s["bbox_col2"],
                                                 s["bbox_label_id"]):
            width, height = col2 - col1, row2 - row1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": [col1, row1, width, height], "area": width * height, "iscrowd": 0})
        for row1, col1, row2, col2, label, score in zip(r["bbox_row1"], r["bbox_col1"], r["bbox_row2"],
                                                        r["bbox_col2"], r["bbox_class_id"], r["bbox_confidence"]):
            detections.append({"image_id": image_id, "category_id": int(label), "score": float(score),
                               "bbox": [col1, row1, col2 - col1, row2 - row1]})
    with contextlib.redirect_stdout(io.StringIO()):
        truth = coco_module.COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": c, "name": str(c)} for c in range(categories)]}
        truth.createIndex()
        evaluation = cocoeval_module.COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pycocotools(seed):
    results, samples = random_case(seed)
    evaluation = coco_evaluation(results, samples, 3)
    ours = detection_measures(results, samples, [0, 1, 2])
    assert ours["map_50_95"] == pytest.approx(evaluation.stats[0], abs=1e-6)
    assert ours["map_50"] == pytest.approx(evaluation.stats[1], abs=1e-6)
    assert 0.1 < ours["map_50"] < 0.99  # a case with real misses and false positives


def crowded_case(seed: int) -> tuple[list[dict], list[dict]]:
    """Images of 0 to 12 boxes from 3 to 160 pixels a side (COCO's small, medium and large areas), each
    found by several scored detections, plus false ones: max_num_detections 1 and 10 cut real hits."""
    rng = np.random.default_rng(seed)
    samples, results = [], []
    for _ in range(10):
        count = int(rng.integers(0, 13))
        corner, extent = rng.uniform(0, 200, (count, 2)), np.exp(rng.uniform(np.log(3), np.log(160), (count, 2)))
        boxes = np.concatenate([corner, corner + extent], axis=1)
        labels = rng.integers(0, 3, count)
        samples.append(sample(boxes.tolist(), labels.tolist()))
        copies = rng.integers(0, 5, count)
        found = np.repeat(boxes, copies, axis=0)
        found = found + rng.normal(0, 1, found.shape) * np.repeat(extent, copies, axis=0).repeat(2, axis=1) * 0.04
        found[:, 2:] = np.maximum(found[:, 2:], found[:, :2] + 1)
        false = int(rng.integers(0, 6))
        corner = rng.uniform(0, 200, (false, 2))
        det = np.concatenate([found, np.concatenate([corner, corner + rng.uniform(2, 120, (false, 2))], axis=1)])
        det_labels = np.concatenate([np.repeat(labels, copies), rng.integers(0, 3, false)])
        results.append(result(det.tolist(), det_labels.tolist(), rng.random(len(det)).tolist()))
    return results, samples


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_area_ranges_and_detection_levels_agree_with_pycocotools(seed):
    """HALCON's nested keys (max_num_detections_<n> / area_<name>: mean_ap, ap_iou_*) equal COCOeval's
    precision table for every area range (all, small, medium, large) and maxDets 1, 10, 100, to 1e-6."""
    from onnx_dl.measures import COCO_AREA_RANGES, iou_key

    results, samples = crowded_case(seed)
    evaluation = coco_evaluation(results, samples, 3)
    precision = evaluation.eval["precision"]  # (T, R, K, A, M): IoU, recall point, class, area, maxDets
    ours = detection_measures(results, samples, [0, 1, 2], max_num_detections=(1, 10, 100),
                              area_ranges=COCO_AREA_RANGES)
    compared = 0
    for a, area in enumerate(["all", "small", "medium", "large"]):
        for m, level in enumerate([1, 10, 100]):
            entry = ours[f"max_num_detections_{level}"][f"area_{area}"]
            table = precision[:, :, :, a, m]
            assert (table > -1).any(), (area, level)  # every range holds boxes in these cases
            assert entry["mean_ap"] == pytest.approx(np.mean(table[table > -1]), abs=1e-6), (area, level)
            for t, threshold in enumerate(COCO_IOU_THRESHOLDS):
                row = table[t]
                assert entry[iou_key(threshold)] == pytest.approx(np.mean(row[row > -1]), abs=1e-6)
                compared += 1
    assert compared == 120
    flat = detection_measures(results, samples, [0, 1, 2])
    assert flat["mean_ap"] == flat["map_50_95"] == flat["max_num_detections_all"]["area_all"]["mean_ap"]
    assert flat["mean_ap"] == pytest.approx(evaluation.stats[0], abs=1e-6)  # maxDets 100 cuts nothing here
    assert ours["max_num_detections_1"]["area_all"]["mean_ap"] < flat["mean_ap"]  # the level cuts hits


def test_halcon_iou_keys():
    from onnx_dl.measures import iou_key

    assert [iou_key(t) for t in COCO_IOU_THRESHOLDS] == [
        "ap_iou_05", "ap_iou_055", "ap_iou_06", "ap_iou_065", "ap_iou_07", "ap_iou_075", "ap_iou_08", "ap_iou_085",
        "ap_iou_09", "ap_iou_095"]
