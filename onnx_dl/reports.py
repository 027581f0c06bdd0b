"""Evaluation reports: the measures of :func:`onnx_dl.evaluation.evaluate_dl_model` as readable text,
as JSON and as pictures.

:func:`format_report` gives the global measures, a per-class table and the confusion matrix as text.
:func:`write_report` writes ``evaluation.json`` and ``report.txt`` and, with matplotlib (extra
``plot``), ``confusion_matrix.png`` and ``confusion_matrix_normalized.png`` (classification,
segmentation), ``precision_recall.png`` (detection at IoU 0.5, multi-label), ``class_iou.png``
(segmentation); with the results and samples it also draws ``predictions.png`` (Pillow only): the
predictions next to their ground truth, worst errors first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from . import box_types, drawing
from .dataset import jsonable
from .measures import detection_pr_curves, edit_distance, label_sets, multi_label_pr_curves

PER_CLASS = ("precision", "recall", "f_score", "ap_per_class", "class_iou", "class_pixel_accuracy", "ap_50_per_class",
             "ap_50_95_per_class")
MATRICES = ("absolute_confusion_matrix", "pixel_confusion_matrix")
GRID_SIZE = 16  # predictions drawn, worst first
_told_about_matplotlib = False


def _number(value: Any) -> str:
    value = float(value)
    return "-" if math.isnan(value) else f"{value:.4f}"


def _names(params: dict[str, Any]) -> dict[int, str]:
    return dict(zip(params["class_ids"], params["class_names"]))


def format_report(measures: dict[str, Any], params: dict[str, Any]) -> str:
    """The global measures, a per-class table (one row per class id) and the confusion matrix (rows:
    predicted, columns: ground truth) as text."""
    names = _names(params)
    lines = [f"{params['type']} model, {len(params['class_ids'])} classes"]
    scalars = {k: v for k, v in measures.items() if isinstance(v, (int, float, np.floating, np.integer))}
    width = max((len(k) for k in scalars), default=0)
    lines += [f"  {key.ljust(width)}  {_number(value)}" for key, value in scalars.items()]
    columns = [key for key in PER_CLASS if isinstance(measures.get(key), dict)]
    if columns:
        name_width = max(10, *(len(n) for n in names.values()))
        widths = [max(10, len(c)) for c in columns]
        lines += ["", f"  {'id':>5}  {'class'.ljust(name_width)}  " + "  ".join(c.rjust(w) for c, w in zip(columns, widths))]
        for cid in params["class_ids"]:
            values = "  ".join(_number(measures[c].get(cid, float("nan"))).rjust(w) for c, w in zip(columns, widths))
            lines.append(f"  {cid:>5}  {names[cid].ljust(name_width)}  {values}")
    for key in MATRICES:
        if key in measures:
            lines += ["", f"  {key} (rows: predicted, columns: ground truth)", _matrix_text(measures[key], params)]
    return "\n".join(lines)


def _matrix_text(matrix: np.ndarray, params: dict[str, Any]) -> str:
    labels = [str(n)[:10] for n in params["class_names"]]
    cell = max(6, *(len(label) for label in labels), len(str(int(np.max(matrix, initial=0)))))
    rows = ["  " + " " * cell + "  " + "  ".join(label.rjust(cell) for label in labels)]
    for label, row in zip(labels, np.asarray(matrix)):
        rows.append("  " + label.rjust(cell) + "  " + "  ".join(str(int(v)).rjust(cell) for v in row))
    return "\n".join(rows)


def write_report(folder: str | Path, measures: dict[str, Any], params: dict[str, Any],
                 results: list[dict[str, Any]] | None = None, samples: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write the report files into ``folder`` (created) and return their paths (see the module docstring)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "evaluation.json", out / "report.txt"]
    written[0].write_text(json.dumps(jsonable(measures), indent=1), encoding="utf-8")
    written[1].write_text(format_report(measures, params) + "\n", encoding="utf-8")
    plt = _pyplot()
    if plt is not None:
        written += _confusion_pictures(plt, out, measures, params)
        written += _curve_pictures(plt, out, measures, params, results, samples)
    if results is not None and samples is not None and samples:
        written.append(draw_predictions(out / "predictions.png", results, samples, params))
    return written


def _pyplot() -> Any:
    global _told_about_matplotlib
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _told_about_matplotlib:
            print("onnx_dl: matplotlib is not installed (pip install 'onnx_dl[plot]'); the report's numbers are "
                  "written, its charts are not")
            _told_about_matplotlib = True
        return None
    return plt


def _confusion_pictures(plt: Any, out: Path, measures: dict[str, Any], params: dict[str, Any]) -> list[Path]:
    key = next((k for k in MATRICES if k in measures), None)
    if key is None:
        return []
    matrix = np.asarray(measures[key], np.float64)
    totals = matrix.sum(axis=0, keepdims=True)
    normalized = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    written = []
    for name, values, form in (("confusion_matrix.png", matrix, "{:.0f}"),
                               ("confusion_matrix_normalized.png", normalized, "{:.2f}")):
        size = 2.5 + 0.5 * len(params["class_ids"])
        figure, axis = plt.subplots(figsize=(size + 1, size))
        image = axis.imshow(values, cmap="Blues")
        figure.colorbar(image, ax=axis)
        ticks = range(len(params["class_names"]))
        axis.set_xticks(ticks, params["class_names"], rotation=45, ha="right")
        axis.set_yticks(ticks, params["class_names"])
        axis.set_xlabel("ground truth")
        axis.set_ylabel("predicted")
        if len(params["class_ids"]) <= 20:
            top = values.max() if values.size else 0
            for (row, col), value in np.ndenumerate(values):
                axis.text(col, row, form.format(value), ha="center", va="center",
                          color="white" if value > top / 2 else "black", fontsize=8)
        axis.set_title(("normalised per ground-truth class" if "normalized" in name else "absolute") + f" ({key})")
        figure.tight_layout()
        figure.savefig(out / name, dpi=100)
        plt.close(figure)
        written.append(out / name)
    return written


def _curve_pictures(plt: Any, out: Path, measures: dict[str, Any], params: dict[str, Any],
                    results: list[dict[str, Any]] | None, samples: list[dict[str, Any]] | None) -> list[Path]:
    names = _names(params)
    written = []
    if results is not None and samples is not None and params["type"] in ("detection", "multi_label_classification"):
        curves = (detection_pr_curves(results, samples, params["class_ids"], box_type=box_types.of_params(params))
                  if params["type"] == "detection" else multi_label_pr_curves(results, samples, params["class_ids"]))
        ap = measures.get("ap_50_per_class", measures.get("ap_per_class", {}))
        figure, axis = plt.subplots(figsize=(6, 5))
        for cid, (recall, precision) in curves.items():
            start = precision[:1] if len(precision) else [0.0]  # a class without detections: one point at 0
            axis.step(np.r_[0.0, recall], np.r_[start, precision], where="post",
                      label=f"{names[cid]} (AP {_number(ap.get(cid, 'nan'))})")
        axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
                 title="precision-recall per class" + (" at IoU 0.5" if params["type"] == "detection" else ""))
        axis.legend(fontsize=8, loc="lower left")
        figure.tight_layout()
        figure.savefig(out / "precision_recall.png", dpi=100)
        plt.close(figure)
        written.append(out / "precision_recall.png")
    if isinstance(measures.get("class_iou"), dict):
        ious = measures["class_iou"]
        figure, axis = plt.subplots(figsize=(2.5 + 0.6 * len(ious), 4))
        axis.bar([names[c] for c in ious], [0.0 if math.isnan(v) else v for v in ious.values()], color="tab:blue")
        axis.set(ylim=(0, 1), ylabel="IoU", title=f"IoU per class (mean {_number(measures.get('mean_iou', 'nan'))})")
        axis.tick_params(axis="x", rotation=45)
        figure.tight_layout()
        figure.savefig(out / "class_iou.png", dpi=100)
        plt.close(figure)
        written.append(out / "class_iou.png")
    return written


def error_scores(results: list[dict[str, Any]], samples: list[dict[str, Any]], params: dict[str, Any]) -> np.ndarray:
    """How wrong each result is, larger is worse (the order of the prediction grid): a wrong class 1 +
    its confidence, a right one 1 - its confidence; multi-label the labels missed or added at
    ``min_confidence``; segmentation the share of wrong pixels; detection the ground-truth boxes missed
    plus the boxes found that match none (IoU >= 0.5, same class, from ``min_confidence``)."""
    kind = params["type"]
    if kind == "classification":
        return np.array([float(r["classification_class_ids"][0] != s["image_label_id"])
                         + (1.0 if r["classification_class_ids"][0] != s["image_label_id"] else -1.0)
                         * r["classification_confidences"][0] for r, s in zip(results, samples)])
    if kind == "multi_label_classification":
        truth = label_sets(samples, params["class_ids"])
        scores = np.array([r["classification_all_confidences"] for r in results])
        return ((scores >= params["min_confidence"]) != (truth > 0)).sum(axis=1) + np.abs(scores - truth).mean(axis=1)
    if kind == "segmentation":
        return np.array([float(np.mean(np.asarray(r["segmentation_image"]) != np.asarray(s["segmentation_image"])))
                         for r, s in zip(results, samples)])
    if kind == "ocr_recognition":  # character errors, then the less confident
        return np.array([edit_distance(str(r["word"]), str(s["word"])) + 1.0 - float(r["word_confidence"])
                         for r, s in zip(results, samples)])
    kind = box_types.of_params(params)
    return np.array([_box_errors(r, s, params["min_confidence"], kind) for r, s in zip(results, samples)], np.float64)


def _box_errors(result: dict[str, Any], sample: dict[str, Any], floor: float, kind: box_types.BoxType) -> float:
    keep = np.asarray(result["bbox_confidence"], np.float64) >= floor
    found = np.stack([np.asarray(result[k], np.float64)[keep] for k in kind.keys], axis=1).reshape(-1, kind.size)
    truth = np.stack([np.asarray(sample[k], np.float64) for k in kind.keys], axis=1).reshape(-1, kind.size)
    same = np.asarray(result["bbox_class_id"])[keep][:, None] == np.asarray(sample["bbox_label_id"])[None, :]
    match = (kind.iou(found, truth) >= 0.5) & same if len(found) and len(truth) else \
        np.zeros((len(found), len(truth)), bool)
    return float((~match.any(axis=0)).sum() + (~match.any(axis=1)).sum())


def draw_predictions(path: Path, results: list[dict[str, Any]], samples: list[dict[str, Any]],
                     params: dict[str, Any], count: int = GRID_SIZE, tile: int = 256) -> Path:
    """A grid of the ``count`` worst predictions (:func:`error_scores`), each next to its ground truth,
    two pairs per row; a detector's boxes from ``min_confidence`` up."""
    from PIL import Image

    order = np.argsort(-error_scores(results, samples, params), kind="stable")[:count]
    value_range = (params["image_range_min"], params["image_range_max"])
    tiles = []
    for index in order:
        result = _shown(results[int(index)], params)
        for annotation, title in ((result, "prediction"), (samples[int(index)], "ground truth")):
            picture = drawing.draw(samples[int(index)]["image"], annotation, params, min_side=tile,
                                   value_range=value_range, title=f"#{int(index)} {title}")
            picture.thumbnail((tile * 2, tile * 2))
            tiles.append(picture)
    columns = 4
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (cell_w * min(columns, len(tiles)), cell_h * rows), (255, 255, 255))
    for position, picture in enumerate(tiles):
        grid.paste(picture, ((position % columns) * cell_w, (position // columns) * cell_h))
    grid.save(path)
    return path


def _shown(result: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A detector's result without the boxes below ``min_confidence`` (evaluation keeps them from 0.05)."""
    if "bbox_confidence" not in result:
        return result
    keep = np.asarray(result["bbox_confidence"], np.float64) >= params["min_confidence"]
    return {key: (np.asarray(value)[keep] if key.startswith("bbox_") else value) for key, value in result.items()}
