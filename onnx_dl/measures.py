"""Evaluation measures on results of ``apply_dl_model`` (HALCON's definitions): pure functions of
results and annotated samples; :mod:`onnx_dl.evaluation` runs a model over a dataset and picks them by type.

Segmentation: a confusion matrix with rows = predicted and columns = ground truth over all
non-ignored pixels; TP = diagonal, FP = row sum - TP, FN = column sum - TP; class IoU =
TP / (TP + FP + FN), class pixel accuracy = TP / (TP + FN); classes without ground-truth pixels are
left out of the means; the frequency-weighted IoU weighs each class IoU by its share of the
ground-truth pixels.
Classification: top-K errors (K = 1 .. min(5, classes)), per-class precision, recall and F-score and
their means over the classes where defined, the absolute and the relative (per ground-truth class)
confusion matrix.
Multi-label classification: per class, the average precision of ranking the samples by the class's
confidence (the area under the step precision-recall curve; tied confidences count as one
threshold), its mean over classes present; precision, recall and F1 at ``min_confidence``.
Detection (COCO): per class and IoU threshold, detections by descending confidence are matched
greedily to ground-truth boxes (each at most once, IoU >= threshold); AP is the 101-point
interpolated area under the precision-recall curve; classes without ground truth are left out. Area
ranges ignore the boxes outside them (and detections outside them that match none) and
``max_num_detections`` keeps the best detections of each image and class, as pycocotools does;
HALCON's ``mean_ap`` is the mean over IoU 0.5:0.95.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .box_types import RECTANGLE1, BoxType
from .errors import DLSampleError
from .samples import id_lookup, label_sets


def _check_lengths(results: list[dict[str, Any]], samples: list[dict[str, Any]]) -> None:
    if len(results) != len(samples):
        raise DLSampleError(f"expected one result per sample, got {len(results)} results for {len(samples)} samples")


def confusion_matrix(predicted: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts; rows = predicted index, columns = ground-truth index."""
    return np.bincount(predicted * classes + truth, minlength=classes * classes).reshape(classes, classes)


def segmentation_measures(results: list[dict[str, Any]], samples: list[dict[str, Any]], class_ids: list[int],
                          ignore_class_ids: list[int] | tuple[int, ...] = ()) -> dict[str, Any]:
    """HALCON's segmentation measures over the pixels whose ground truth is not in ``ignore_class_ids``:

    * ``mean_iou``, ``class_iou`` (by class id): IoU_c = TP_c / (TP_c + FP_c + FN_c);
    * ``pixel_accuracy`` = sum TP / number of pixels;
    * ``mean_accuracy``, ``class_pixel_accuracy`` (by class id): TP_c / (TP_c + FN_c), i.e. the share
      of the class's ground-truth pixels predicted as the class;
    * ``frequency_weighted_iou`` = sum_c (GT_c / sum GT) * IoU_c, GT_c = TP_c + FN_c the class's
      ground-truth pixels;
    * ``pixel_confusion_matrix`` (rows: predicted, columns: ground truth).

    A class without ground-truth pixels has NaN IoU and pixel accuracy and is left out of the means
    (it has weight 0 in the frequency-weighted IoU); a measure over no class at all is NaN."""
    _check_lengths(results, samples)
    table = {cid: i for i, cid in enumerate(class_ids)}
    matrix = np.zeros((len(class_ids), len(class_ids)), np.int64)
    for index, (result, sample) in enumerate(zip(results, samples)):
        truth = np.asarray(sample["segmentation_image"]).astype(np.int64)
        predicted = np.asarray(result["segmentation_image"]).astype(np.int64)
        if truth.shape != predicted.shape:
            raise DLSampleError(f"sample {index}: segmentation_image of shape {truth.shape}, result of shape "
                                f"{predicted.shape}")
        keep = ~np.isin(truth, list(ignore_class_ids))
        truth_index, predicted_index = id_lookup(truth[keep], table, -1), id_lookup(predicted[keep], table, -1)
        if (truth_index < 0).any() or (predicted_index < 0).any():
            raise DLSampleError(f"sample {index}: a label or result holds ids outside class_ids")
        matrix += confusion_matrix(predicted_index, truth_index, len(class_ids))
    tp = np.diag(matrix).astype(np.float64)
    ground_truth = matrix.sum(axis=0).astype(np.float64)
    fp, fn = matrix.sum(axis=1) - tp, ground_truth - tp
    present = ground_truth > 0
    iou = np.where(present, tp / np.maximum(tp + fp + fn, 1), np.nan)
    accuracy = np.where(present, tp / np.maximum(ground_truth, 1), np.nan)
    total = ground_truth.sum()
    weighted_iou = float(np.sum(ground_truth[present] * iou[present]) / total) if total > 0 else float("nan")
    by_id = lambda values: {cid: float(v) for cid, v in zip(class_ids, values)}  # noqa: E731
    return {
        "mean_iou": _mean_over_present(iou), "class_iou": by_id(iou),
        "pixel_accuracy": float(tp.sum() / max(matrix.sum(), 1)), "mean_accuracy": _mean_over_present(accuracy),
        "class_pixel_accuracy": by_id(accuracy), "frequency_weighted_iou": weighted_iou,
        "pixel_confusion_matrix": matrix,
    }


TOP_K_MAX = 5
"""The largest K of the ``top<K>_error`` measures of a classifier (HALCON's ``top1_error`` .. ``top5_error``
where the model has that many classes)."""


def relative_confusion_matrix(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` (rows: predicted, columns: ground truth) with each column divided by its sum: entry
    (p, t) is the share of the samples of ground-truth class t predicted as p; a column without
    samples stays 0."""
    matrix = np.asarray(matrix, np.float64)
    totals = matrix.sum(axis=0, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def classification_measures(results: list[dict[str, Any]], samples: list[dict[str, Any]],
                            class_ids: list[int]) -> dict[str, Any]:
    """HALCON's classification measures (per-class values by class id; rows of the matrices: predicted,
    columns: ground truth):

    * ``top<K>_error`` for K = 1 .. min(5, classes): the share of samples whose label is not among the
      first K of the result's ``classification_class_ids`` (sorted by descending confidence);
    * ``precision`` = TP / predicted (NaN for a class never predicted), ``recall`` = TP / ground truth
      (NaN for a class without samples), ``f_score`` = 2 P R / (P + R) (0 where P = R = 0, NaN where P
      or R is NaN), by class id;
    * ``mean_precision``, ``mean_recall``, ``mean_f_score``: their means over the classes where
      defined (HALCON's ``'global'`` values; NaN where no class is);
    * ``absolute_confusion_matrix`` (counts) and ``relative_confusion_matrix`` (each column divided
      by the ground-truth count of its class, :func:`relative_confusion_matrix`)."""
    _check_lengths(results, samples)
    position = {cid: i for i, cid in enumerate(class_ids)}
    ranked = [list(r["classification_class_ids"]) for r in results]
    predicted = np.array([position[r[0]] for r in ranked], np.int64)
    truth = np.array([position[s["image_label_id"]] for s in samples], np.int64)
    matrix = confusion_matrix(predicted, truth, len(class_ids))
    tp = np.diag(matrix).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(matrix.sum(axis=1) > 0, tp / np.maximum(matrix.sum(axis=1), 1), np.nan)
        recall = np.where(matrix.sum(axis=0) > 0, tp / np.maximum(matrix.sum(axis=0), 1), np.nan)
        f_score = np.where((precision == 0) & (recall == 0), 0.0, 2 * precision * recall / (precision + recall))
    labels = [s["image_label_id"] for s in samples]
    top_k = {}
    for k in range(1, min(TOP_K_MAX, len(class_ids)) + 1):
        misses = [label not in r[:k] for r, label in zip(ranked, labels)]
        top_k[f"top{k}_error"] = float(np.mean(misses)) if misses else float("nan")
    by_id = lambda values: {cid: float(v) for cid, v in zip(class_ids, values)}  # noqa: E731
    return {
        **top_k,
        "precision": by_id(precision), "recall": by_id(recall), "f_score": by_id(f_score),
        "mean_precision": _mean_over_present(precision), "mean_recall": _mean_over_present(recall),
        "mean_f_score": _mean_over_present(f_score),
        "absolute_confusion_matrix": matrix, "relative_confusion_matrix": relative_confusion_matrix(matrix),
    }


def ranking_average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Average precision of ranking by descending ``scores`` with 0/1 ``relevant``:

        AP = sum_t (R_t - R_{t-1}) * P_t

    over the distinct score thresholds t (every score at or above t counts as retrieved), R_0 = 0;
    NaN when nothing is relevant (scikit-learn's ``average_precision_score``)."""
    scores, relevant = np.asarray(scores, np.float64).ravel(), np.asarray(relevant).ravel().astype(bool)
    positives = int(relevant.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, relevant = scores[order], relevant[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    hits = np.cumsum(relevant)[last_of_tie]
    retrieved = np.arange(1, len(scores) + 1)[last_of_tie]
    recall = hits / positives
    precision = hits / retrieved
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multi_label_measures(results: list[dict[str, Any]], samples: list[dict[str, Any]], class_ids: list[int],
                         min_confidence: float) -> dict[str, Any]:
    """``mean_ap`` (mean over classes present in the samples), ``ap_per_class``, and at ``min_confidence``
    per-class ``precision``, ``recall``, ``f_score`` (by class id; NaN where undefined) and their means
    ``mean_precision``, ``mean_recall``, ``mean_f_score`` over the classes where defined."""
    _check_lengths(results, samples)
    scores = np.array([r["classification_all_confidences"] for r in results], np.float64).reshape(len(results), -1)
    truth = label_sets(samples, class_ids)
    ap = np.array([ranking_average_precision(scores[:, k], truth[:, k]) for k in range(len(class_ids))])
    predicted = scores >= min_confidence
    tp = (predicted & (truth > 0)).sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / predicted.sum(axis=0)
        recall = tp / truth.sum(axis=0)
        f_score = 2 * precision * recall / (precision + recall)
    f_score = np.where((precision == 0) & (recall == 0), 0.0, f_score)
    by_id = lambda values: {cid: float(v) for cid, v in zip(class_ids, values)}  # noqa: E731
    mean = lambda values: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")  # noqa: E731
    return {"mean_ap": mean(ap), "ap_per_class": by_id(ap), "precision": by_id(precision), "recall": by_id(recall),
            "f_score": by_id(f_score), "mean_precision": mean(precision), "mean_recall": mean(recall),
            "mean_f_score": mean(f_score)}


RECALL_POINTS = np.linspace(0.0, 1.0, 101)
"""The recall values 0, 0.01, ..., 1 at which COCO samples the precision."""

COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""IoU thresholds 0.5, 0.55, ..., 0.95 of COCO's (and HALCON's default) mean AP."""

def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO's 101-point interpolated average precision of one precision-recall curve.

    ``recall`` and ``precision`` hold one value per detection in order of descending confidence
    (so recall does not decrease):

        p_interp(r) = max {precision_i : recall_i >= r}   (0 where no recall_i >= r)
        AP = 1/101 * sum over r in 0, 0.01, ..., 1 of p_interp(r)
    """
    recall, precision = np.asarray(recall, np.float64).ravel(), np.asarray(precision, np.float64).ravel()
    if recall.shape != precision.shape:
        raise ValueError(f"average_precision: {recall.size} recall but {precision.size} precision values")
    if recall.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
    first = np.searchsorted(recall, RECALL_POINTS, side="left")
    reached = first < recall.size
    return float(envelope[first[reached]].sum() / RECALL_POINTS.size)


def _boxes_of(entry: dict[str, Any], index: int, what: str, label_key: str,
              box_type: BoxType = RECTANGLE1) -> tuple[np.ndarray, np.ndarray]:
    """(G, 4) boxes and (G,) labels of one sample or result (:func:`onnx_dl.boxes.checked_boxes`; a result's
    boxes may be empty in extent)."""
    return box_type.checked(entry, index, label_key, what, positive_size=False)


def _greedy_matches(iou: np.ndarray, thresholds: np.ndarray, gt_ignored: np.ndarray | None = None) -> np.ndarray:
    """(T, D) the ground-truth box each detection (rows of ``iou`` (D, G), by descending confidence) takes
    at each IoU threshold, -1 for none.

    COCO's greedy rule per threshold t: a detection takes the unmatched box of highest IoU >= t,
    a box that is not ignored before an ignored one (pycocotools' ``evaluateImg``).
    """
    matches = np.full((len(thresholds), len(iou)), -1, np.int64)
    if iou.shape[1] == 0:
        return matches
    ignored = np.zeros(iou.shape[1], bool) if gt_ignored is None else np.asarray(gt_ignored, bool)
    rank_bonus = np.where(ignored, 0.0, 2.0)  # IoU <= 1: any box kept outranks every ignored one
    taken = np.zeros((len(thresholds), iou.shape[1]), bool)
    for detection, overlaps in enumerate(iou):  # sequential: earlier detections take boxes first
        allowed = ~taken & (overlaps[None, :] >= thresholds[:, None])
        best = np.where(allowed, (overlaps + rank_bonus)[None, :], -1.0).argmax(axis=1)
        hit = allowed.any(axis=1)
        taken[hit, best[hit]] = True
        matches[hit, detection] = best[hit]
    return matches


def _true_positives(boxes: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray,
                    gt_ignored: np.ndarray | None = None, box_type: BoxType = RECTANGLE1) -> np.ndarray:
    """(T, D) whether each detection (already by descending confidence) matches a ground-truth box
    (:func:`_greedy_matches`): 1 a box, 0 none, -1 an ignored box (``gt_ignored``, e.g. outside the area
    range; such a detection counts neither as a true nor as a false positive)."""
    if len(gt_boxes) == 0:
        return np.zeros((len(thresholds), len(boxes)), np.int8)
    ignored = np.zeros(len(gt_boxes), bool) if gt_ignored is None else np.asarray(gt_ignored, bool)
    matches = _greedy_matches(box_type.iou(boxes, gt_boxes), thresholds, ignored)
    return np.where(matches < 0, 0, np.where(ignored[np.maximum(matches, 0)], -1, 1)).astype(np.int8)


def _box_areas(boxes: np.ndarray) -> np.ndarray:
    """(row2 - row1) * (col2 - col1) of (N, 4) boxes, 4 * length1 * length2 of oriented (N, 5) ones: the
    area COCO's area ranges compare."""
    if boxes.shape[1] == 5:
        return 4.0 * boxes[:, 2] * boxes[:, 3]
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _ranked_hits(results: list[dict[str, Any]], samples: list[dict[str, Any]], class_ids: list[int],
                 thresholds: tuple[float, ...], max_detections: int | None = None,
                 area_range: tuple[float, float] | None = None, box_type: BoxType = RECTANGLE1
                 ) -> tuple[list[np.ndarray | None], np.ndarray]:
    """Per class, (T, D) whether each of its detections (over all images, by descending confidence)
    matches a ground-truth box at each IoU threshold (1 / 0, -1 ignored: :func:`_true_positives`; None
    for a class without detections), and the ground-truth box count per class (ignored boxes left out).

    ``max_detections``: only the best of each image and class count (pycocotools' ``maxDets``).
    ``area_range`` (min, max): boxes whose area lies outside are ignored, and so are detections outside
    it that match no box (pycocotools' ``areaRng``)."""
    _check_lengths(results, samples)
    position = {cid: i for i, cid in enumerate(class_ids)}
    limits = np.asarray(thresholds, np.float64)
    confidences: list[list[np.ndarray]] = [[] for _ in class_ids]
    hits: list[list[np.ndarray]] = [[] for _ in class_ids]
    gt_count = np.zeros(len(class_ids), np.int64)
    for index, (result, sample) in enumerate(zip(results, samples)):
        gt_boxes, gt_labels = _boxes_of(sample, index, "sample", "bbox_label_id", box_type)
        boxes, labels = _boxes_of(result, index, "result", "bbox_class_id", box_type)
        confidence = np.asarray(result.get("bbox_confidence", []), np.float64).reshape(-1)
        if len(confidence) != len(boxes):
            raise DLSampleError(f"result {index}: expected {len(boxes)} bbox_confidence values, got {len(confidence)}")
        for what, ids, key in (("sample", gt_labels, "bbox_label_id"), ("result", labels, "bbox_class_id")):
            unknown = sorted({int(i) for i in ids} - set(position))
            if unknown:
                raise DLSampleError(f"{what} {index}, key {key!r}: expected ids in class_ids {class_ids}, got {unknown}")
        for cid in {int(i) for i in gt_labels} | {int(i) for i in labels}:
            k, mine = position[cid], labels == cid
            order = np.argsort(-confidence[mine], kind="stable")[:max_detections]
            theirs = gt_boxes[gt_labels == cid]
            outside = np.zeros(len(theirs), bool) if area_range is None else \
                ~((_box_areas(theirs) >= area_range[0]) & (_box_areas(theirs) <= area_range[1]))
            gt_count[k] += int((~outside).sum())
            confidences[k].append(confidence[mine][order])
            found = _true_positives(boxes[mine][order], theirs, limits, outside, box_type)
            if area_range is not None:
                area = _box_areas(boxes[mine][order])
                found[(found == 0) & ((area < area_range[0]) | (area > area_range[1]))[None, :]] = -1
            hits[k].append(found)
    ranked: list[np.ndarray | None] = []
    for k in range(len(class_ids)):
        if not confidences[k]:
            ranked.append(None)
            continue
        order = np.argsort(-np.concatenate(confidences[k]), kind="stable")
        ranked.append(np.concatenate(hits[k], axis=1)[:, order])
    return ranked, gt_count


def _ap_table(results: list[dict[str, Any]], samples: list[dict[str, Any]], class_ids: list[int],
              thresholds: tuple[float, ...], max_detections: int | None = None,
              area_range: tuple[float, float] | None = None, box_type: BoxType = RECTANGLE1) -> np.ndarray:
    """(T, K) AP per IoU threshold and class; NaN for classes without ground-truth boxes (in the area
    range); ignored detections count neither way (:func:`_ranked_hits`)."""
    ranked, gt_count = _ranked_hits(results, samples, class_ids, thresholds, max_detections, area_range, box_type)
    table = np.full((len(thresholds), len(class_ids)), np.nan)
    for k in np.nonzero(gt_count)[0]:
        if ranked[k] is None:
            table[:, k] = 0.0
            continue
        true_positive = (ranked[k] == 1).cumsum(axis=1)
        counted = (ranked[k] >= 0).cumsum(axis=1)
        precision = true_positive / np.maximum(counted, 1)
        for t in range(len(thresholds)):
            table[t, k] = average_precision(true_positive[t] / gt_count[k], precision[t])
    return table


def detection_pr_curves(results: list[dict[str, Any]], samples: list[dict[str, Any]], class_ids: list[int],
                        iou: float = 0.5, box_type: BoxType = RECTANGLE1) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per class with ground-truth boxes, (recall, precision) after each detection by descending
    confidence, matched at ``iou`` as :func:`mean_average_precision` matches them."""
    ranked, gt_count = _ranked_hits(results, samples, class_ids, (iou,), box_type=box_type)
    curves = {}
    for k, cid in enumerate(class_ids):
        if gt_count[k] and ranked[k] is not None:
            true_positive = ranked[k][0].cumsum()
            curves[cid] = (true_positive / gt_count[k], true_positive / np.arange(1, len(true_positive) + 1))
    return curves


def multi_label_pr_curves(results: list[dict[str, Any]], samples: list[dict[str, Any]],
                          class_ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per class present in the samples, (recall, precision) of ranking the images by the class's confidence."""
    scores = np.array([r["classification_all_confidences"] for r in results], np.float64).reshape(len(results), -1)
    truth = label_sets(samples, class_ids) > 0
    curves = {}
    for k, cid in enumerate(class_ids):
        if truth[:, k].any():
            hits = truth[np.argsort(-scores[:, k], kind="stable"), k].cumsum()
            curves[cid] = (hits / truth[:, k].sum(), hits / np.arange(1, len(hits) + 1))
    return curves


def _mean_over_present(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")


def mean_average_precision(results: list[dict[str, Any]], samples: list[dict[str, Any]], class_ids: list[int],
                           iou_thresholds: tuple[float, ...] | list[float] = (0.5,),
                           box_type: BoxType = RECTANGLE1) -> dict[str, Any]:
    """COCO mean average precision of ``apply_dl_model`` detections against the samples' boxes.

    Per class c and threshold t: AP(c, t) by :func:`average_precision` over the detections of all
    images by descending confidence, each matched greedily (per image) to the unmatched box of
    class c with the highest IoU >= t; recall = TP / (number of boxes of class c).
    ``mean_ap`` = mean of AP(c, t) over every t and every class with ground-truth boxes (NaN if
    there are none); ``ap_per_class`` = the mean over t per class id (NaN without ground truth).
    Results use the keys bbox_row1, bbox_col1, bbox_row2, bbox_col2, bbox_class_id,
    bbox_confidence; samples bbox_row1, ..., bbox_label_id. ``box_type``
    (:func:`onnx_dl.box_types.of_params`) gives the keys and the IoU of other boxes: oriented boxes
    (bbox_row, bbox_col, bbox_length1, bbox_length2, bbox_phi) are matched by their exact IoU.
    """
    table = _ap_table(results, samples, class_ids, tuple(iou_thresholds), box_type=box_type)
    per_class = table.mean(axis=0)
    return {"mean_ap": _mean_over_present(per_class),
            "ap_per_class": {cid: float(v) for cid, v in zip(class_ids, per_class)}}


COCO_AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10)}
"""COCO's box-area ranges in pixels (pycocotools' ``areaRng``; bounds inclusive): :func:`detection_measures`'s
``area_ranges``. HALCON's default evaluates ``'all'`` only (0 .. 2e8)."""


def iou_key(threshold: float) -> str:
    """HALCON's key of the AP at one IoU threshold: ``ap_iou_`` and the threshold without its dot
    (0.5 -> ``ap_iou_05``, 0.55 -> ``ap_iou_055``)."""
    return "ap_iou_" + f"{threshold:.2f}".rstrip("0").replace(".", "")


def detection_measures(results: list[dict[str, Any]], samples: list[dict[str, Any]], class_ids: list[int],
                       max_num_detections: tuple[int, ...] | list[int] = (-1,),
                       area_ranges: dict[str, tuple[float, float]] | None = None,
                       box_type: BoxType = RECTANGLE1) -> dict[str, Any]:
    """COCO / HALCON detection measures; definitions of :func:`mean_average_precision` at IoU 0.5, 0.55,
    ..., 0.95 (:data:`COCO_IOU_THRESHOLDS`).

    HALCON's nested result: ``result['max_num_detections_<n>']['area_<name>']`` (``n`` = ``all`` for
    -1, else only the ``n`` most confident detections of each image and class count) holds ``mean_ap``
    (mean over the IoU thresholds and the classes with ground truth in the range), ``ap_iou_05``,
    ``ap_iou_055``, ..., ``ap_iou_095`` (mean over classes at one threshold, :func:`iou_key`) and
    ``mean_iou_ap`` (per class id, the mean over the thresholds). ``area_ranges`` maps a name to
    (min, max) box area in pixels (default ``{'all': (0, 1e10)}``; :data:`COCO_AREA_RANGES` has COCO's
    small / medium / large): boxes outside the range are ignored, and so are detections outside it that
    match no box (pycocotools' rule).

    Flat keys, from the first level and ``area_all`` (else the first range): ``mean_ap`` (HALCON's
    comparison key, = ``map_50_95``), ``map_50`` (mean AP at IoU 0.5), ``map_50_95``, and per class id
    ``ap_50_per_class`` and ``ap_50_95_per_class``.
    """
    ranges = {"all": COCO_AREA_RANGES["all"]} if area_ranges is None else dict(area_ranges)
    if not ranges or not list(max_num_detections):
        raise ValueError("detection_measures: expected at least one max_num_detections level and one area range")
    nested: dict[str, Any] = {}
    tables: dict[tuple[str, str], np.ndarray] = {}
    for level in max_num_detections:
        level_key = "max_num_detections_" + ("all" if level < 0 else str(int(level)))
        nested[level_key] = {}
        for name, bounds in ranges.items():
            table = _ap_table(results, samples, class_ids, COCO_IOU_THRESHOLDS, None if level < 0 else int(level),
                              (float(bounds[0]), float(bounds[1])), box_type)
            tables[level_key, name] = table
            per_class = table.mean(axis=0)
            nested[level_key][f"area_{name}"] = {
                "mean_ap": _mean_over_present(per_class),
                **{iou_key(t): _mean_over_present(row) for t, row in zip(COCO_IOU_THRESHOLDS, table)},
                "mean_iou_ap": {cid: float(v) for cid, v in zip(class_ids, per_class)}}
    first_level = next(iter(nested))
    table = tables[first_level, "all" if "all" in ranges else next(iter(ranges))]
    per_class = table.mean(axis=0)
    return {"mean_ap": _mean_over_present(per_class),
            "map_50": _mean_over_present(table[0]), "map_50_95": _mean_over_present(per_class),
            "ap_50_per_class": {cid: float(v) for cid, v in zip(class_ids, table[0])},
            "ap_50_95_per_class": {cid: float(v) for cid, v in zip(class_ids, per_class)},
            **nested}


def score_of_angle_precision(results: list[dict[str, Any]], samples: list[dict[str, Any]], class_ids: list[int],
                             box_type: BoxType, iou: float = 0.5) -> float:
    """HALCON's ``soap`` (score of angle precision) of oriented detections, our reading of its definition:

        SoAP = 1 - (1 / N) sum_i |normalize_angle(phi_I,i - phi_GT,i)| / h

    over the N true positives at IoU ``iou`` of the classes in ``class_ids`` (each detection matched as
    :func:`mean_average_precision` matches, per image and class by descending confidence); the angle
    difference wraps to (-pi, pi] and h = pi, or with ``ignore_direction`` to (-pi/2, pi/2] and h = pi/2,
    so the score spans 0 (every angle as wrong as it can be) to 1 (perfect) in both modes; NaN without
    true positives.
    """
    from .rotated_boxes import normalize_angle

    _check_lengths(results, samples)
    gaps: list[float] = []
    for index, (result, sample) in enumerate(zip(results, samples)):
        gt_boxes, gt_labels = _boxes_of(sample, index, "sample", "bbox_label_id", box_type)
        boxes, labels = _boxes_of(result, index, "result", "bbox_class_id", box_type)
        confidence = np.asarray(result.get("bbox_confidence", []), np.float64).reshape(-1)
        for cid in set(int(i) for i in labels) & set(int(i) for i in gt_labels) & set(class_ids):
            mine, theirs = np.nonzero(labels == cid)[0], gt_boxes[gt_labels == cid]
            mine = mine[np.argsort(-confidence[mine], kind="stable")]
            matched = _greedy_matches(box_type.iou(boxes[mine], theirs), np.array([iou]))[0]
            found = matched >= 0
            turn = normalize_angle(boxes[mine[found], 4] - theirs[matched[found], 4], box_type.ignore_direction)
            gaps.extend(np.abs(turn).tolist())
    largest = 0.5 * np.pi if box_type.ignore_direction else np.pi
    return 1.0 - float(np.mean(gaps)) / largest if gaps else float("nan")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions of single characters
    that turn ``a`` into ``b``."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _word(entry: dict[str, Any], index: int, what: str) -> str:
    """The ``word`` of a sample or result, or a DLSampleError naming it (missing, or not a string)."""
    if "word" not in entry:
        raise DLSampleError(f"{what} {index}: missing key 'word' (keys present: {sorted(map(str, entry))})")
    if not isinstance(entry["word"], str):
        raise DLSampleError(f"{what} {index}, key 'word': expected a string, got {entry['word']!r} "
                            f"({type(entry['word']).__name__})")
    return entry["word"]


def ocr_recognition_measures(results: list[dict[str, Any]], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Word recognition measures of results ``word`` against the samples' ``word``:

    * ``word_accuracy`` = share of words recognised exactly;
    * ``character_error_rate`` = sum_n edit_distance(result_n, word_n) / sum_n len(word_n) (NaN when every
      ground-truth word is empty);
    * ``num_words``: the number of samples.
    """
    _check_lengths(results, samples)
    exact = errors = characters = 0
    for index, (result, sample) in enumerate(zip(results, samples)):
        found, truth = (_word(entry, index, what) for entry, what in ((result, "result"), (sample, "sample")))
        exact += found == truth
        errors += edit_distance(found, truth)
        characters += len(truth)
    return {"word_accuracy": exact / len(samples),
            "character_error_rate": errors / characters if characters else float("nan"),
            "num_words": len(samples)}
