"""Proposing a detector's anchor parameters from a dataset's boxes (HALCON's procedure
``determine_dl_model_detection_param``; HALCON's own rule is not documented in what we read, so the
rule here is ours and written down).

For the boxes at the model's image size (scaled as :func:`onnx_dl.preprocess.preprocess_dl_samples`
scales them), with the anchors of :mod:`onnx_dl.anchors` (level L: sizes 4 * 2**L * 2**(i / S), ratio
r = height / width):

- ``anchor_aspect_ratios``: the centres of at most ``num_aspect_ratios`` clusters (1-D k-means over
  log(height / width), started at evenly spaced quantiles), rounded to two decimals;
- ``min_level`` / ``max_level``: floor(log2(sqrt(height * width) / 4)) of the smallest and the largest
  box (the level whose anchor sizes start at or below the box's size), at least 1, ``max_level``
  lowered until both image sides are divisible by 2**max_level;
- ``anchor_num_subscales``: the smallest S in 1..``max_num_subscales`` whose anchors reach the
  ``coverage`` goal, else the S of the best coverage.

Coverage is what training will see: the share of boxes whose best anchor of the grid has IoU >= 0.5
(:data:`onnx_dl.anchors.POSITIVE_IOU`), i.e. that get a positive anchor by the threshold alone.

Oriented boxes (a dataset with ``bbox_phi``: instance_type 'rectangle2'): the ratios cluster
length1 / length2, a box's size is sqrt(4 length1 length2), and ``anchor_angles`` are T angles evenly
spaced from 0 over the period of phi (pi with ``ignore_direction``, else 2 pi): of the (T, S) pairs with
T in 1, 2, 3, 4, 6, 8, 12 and S in 1..``max_num_subscales`` the one with the fewest anchors per cell
(T * S, then the fewer angles) that reaches the goal, else the best coverage; IoU is the exact IoU of
rotated rectangles, and without ``ignore_direction`` an anchor counts only within 90 degrees of the box's
angle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import anchors as anchor_grid
from . import rotated_boxes
from .boxes import BOX_KEYS, iou_rows
from .dataset import split_indices
from .errors import DLDatasetError, DLParamError
from .preprocess import resize_map, scale_boxes

DEFAULTS = {"num_aspect_ratios": 3, "max_num_subscales": 5, "coverage": 0.98, "max_num_images": 500,
            "ignore_direction": None}
"""gen_param keys of :func:`determine_dl_model_detection_param` and their defaults."""

ANGLE_COUNTS = (1, 2, 3, 4, 6, 8, 12)
"""The numbers of evenly spaced anchor angles tried for oriented boxes."""


def aspect_ratio_clusters(ratios: np.ndarray, count: int, iterations: int = 50) -> list[float]:
    """Centres of at most ``count`` clusters of ``ratios`` (height / width): 1-D k-means over log(ratio),
    started at evenly spaced quantiles; rounded to two decimals, ascending, duplicates and empty clusters
    dropped."""
    values = np.log(np.asarray(ratios, np.float64))
    centres = np.unique(np.quantile(values, (np.arange(count) + 0.5) / count))
    for _ in range(iterations):
        nearest = np.abs(values[:, None] - centres[None, :]).argmin(axis=1)
        moved = np.array([values[nearest == k].mean() if (nearest == k).any() else centres[k]
                          for k in range(len(centres))])
        if np.allclose(moved, centres):
            break
        centres = moved
    used = np.unique(np.abs(values[:, None] - centres[None, :]).argmin(axis=1))  # a cluster left empty is dropped
    return sorted({round(float(np.exp(centres[k])), 2) for k in used})


def anchor_coverage(boxes_per_image: list[np.ndarray], image_width: int, image_height: int, min_level: int,
                    max_level: int, num_subscales: int, aspect_ratios: list[float],
                    angles: list[float] | None = None, ignore_direction: bool = True) -> tuple[float, float]:
    """(share of boxes whose best anchor has IoU >= 0.5, mean best IoU) over the boxes (G, 4) per image, or
    over oriented boxes (G, 5) against the oriented anchors of ``angles``; without ``ignore_direction`` an
    anchor counts for a box only if their angles differ by less than pi/2 (the same rectangle pointing the
    other way would leave the head an angle of about pi to regress)."""
    grid = anchor_grid.grid(image_height, image_width, min_level, max_level, num_subscales, aspect_ratios, angles)
    if angles is None:
        best = np.concatenate([iou_rows(boxes, grid).max(axis=1) for boxes in boxes_per_image if len(boxes)])
    else:
        best = np.concatenate([_oriented_overlaps(boxes, grid, ignore_direction).max(axis=1)
                               for boxes in boxes_per_image if len(boxes)])
    return float(np.mean(best >= anchor_grid.POSITIVE_IOU)), float(best.mean())


def _oriented_overlaps(boxes: np.ndarray, grid: np.ndarray, ignore_direction: bool) -> np.ndarray:
    iou = rotated_boxes.iou_matrix(boxes, grid)
    if not ignore_direction:
        turn = np.abs(rotated_boxes.normalize_angle(boxes[:, None, 4] - grid[None, :, 4], False))
        iou = np.where(turn < 0.5 * np.pi, iou, 0.0)
    return iou


def even_angles(count: int, ignore_direction: bool) -> list[float]:
    """``count`` angles evenly spaced from 0 over the period of phi, normalised (rounded to 6 decimals)."""
    period = np.pi if ignore_direction else 2 * np.pi
    angles = rotated_boxes.normalize_angle(np.arange(count) * period / count, ignore_direction)
    return [round(float(a), 6) for a in angles]


def propose(boxes_per_image: list[np.ndarray], image_width: int, image_height: int,
            gen_param: dict[str, Any] | None = None) -> dict[str, Any]:
    """Anchor parameters for boxes (G, 4) per image at the model's size (see the module docstring): the
    four model parameters, and ``anchor_coverage`` / ``mean_best_iou`` of the proposal."""
    settings = _settings(gen_param)
    width_of_box = 5 if any(np.shape(b)[-1:] == (5,) for b in boxes_per_image) else 4
    boxes = np.concatenate([np.asarray(b, np.float64).reshape(-1, width_of_box) for b in boxes_per_image])
    if width_of_box == 5:  # oriented: the ratio is length1 / length2
        heights, widths = 2 * boxes[:, 2], 2 * boxes[:, 3]
    else:
        heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if not len(boxes) or (heights <= 0).any() or (widths <= 0).any():
        raise DLDatasetError("determine_dl_model_detection_param: expected boxes of positive size, got "
                             f"{'none' if not len(boxes) else 'boxes of zero or negative extent'}")
    ratios = aspect_ratio_clusters(heights / widths, settings["num_aspect_ratios"])
    level = np.floor(np.log2(np.sqrt(heights * widths) / 4.0))
    low, high = max(1, int(level.min())), max(1, int(level.max()))
    while high > low and (image_width % 2**high or image_height % 2**high):
        high -= 1
    if image_width % 2**high or image_height % 2**high:
        raise DLParamError(f"determine_dl_model_detection_param: the image sides {image_width} x {image_height} "
                           f"are not divisible by 2**{high}, the stride of the coarsest level the boxes need")
    if width_of_box == 5:
        return _propose_oriented(boxes_per_image, image_width, image_height, low, high, ratios, settings)
    found = []
    for subscales in range(1, settings["max_num_subscales"] + 1):
        coverage, mean_iou = anchor_coverage(boxes_per_image, image_width, image_height, low, high, subscales, ratios)
        found.append((coverage, subscales, mean_iou))
        if coverage >= settings["coverage"]:
            break
    coverage, subscales, mean_iou = max(found, key=lambda f: (f[0], -f[1])) if found[-1][0] < settings["coverage"] \
        else found[-1]
    return {"min_level": low, "max_level": high, "anchor_num_subscales": subscales, "anchor_aspect_ratios": ratios,
            "anchor_coverage": coverage, "mean_best_iou": mean_iou}


def _propose_oriented(boxes_per_image: list[np.ndarray], image_width: int, image_height: int, low: int, high: int,
                      ratios: list[float], settings: dict[str, Any]) -> dict[str, Any]:
    """Subscales and angles for oriented boxes (module docstring), tried by ascending anchors per cell."""
    ignore = bool(settings["ignore_direction"])
    pairs = sorted(((t, s) for t in ANGLE_COUNTS for s in range(1, settings["max_num_subscales"] + 1)),
                   key=lambda pair: (pair[0] * pair[1], pair[0]))
    found = []
    for count, subscales in pairs:
        angles = even_angles(count, ignore)
        coverage, mean_iou = anchor_coverage(boxes_per_image, image_width, image_height, low, high, subscales, ratios,
                                             angles, ignore)
        found.append((coverage, -count * subscales, subscales, angles, mean_iou))
        if coverage >= settings["coverage"]:
            break
    coverage, _, subscales, angles, mean_iou = found[-1] if found[-1][0] >= settings["coverage"] else max(
        found, key=lambda f: (f[0], f[1]))
    return {"min_level": low, "max_level": high, "anchor_num_subscales": subscales, "anchor_aspect_ratios": ratios,
            "anchor_angles": angles, "ignore_direction": ignore, "anchor_coverage": coverage,
            "mean_best_iou": mean_iou}


def determine_dl_model_detection_param(dataset: dict[str, Any], image_width: int, image_height: int,
                                       gen_param: dict[str, Any] | None = None,
                                       split: str | None = "train") -> dict[str, Any]:
    """HALCON's procedure: ``min_level``, ``max_level``, ``anchor_num_subscales`` and
    ``anchor_aspect_ratios`` for a detector of ``image_width`` x ``image_height`` on ``dataset``'s boxes
    (its ``split``, all samples if None or if the split is empty), with ``anchor_coverage`` and
    ``mean_best_iou`` of the proposal (see the module docstring); for oriented boxes also
    ``anchor_angles`` and ``ignore_direction``. ``gen_param``: ``num_aspect_ratios`` (3),
    ``max_num_subscales`` (5), ``coverage`` (0.98), ``max_num_images`` (500: evenly spaced images when there
    are more), ``ignore_direction`` (oriented boxes; default: the dataset's, else False). Pass the result's model parameters to ``create_dl_model_detection``."""
    settings = _settings(gen_param)
    indices = (split_indices(dataset, split) if split else []) or list(range(len(dataset["samples"])))
    if len(indices) > settings["max_num_images"]:
        indices = [indices[int(i)] for i in np.linspace(0, len(indices) - 1, settings["max_num_images"])]
    if settings["ignore_direction"] is None:
        settings["ignore_direction"] = bool(dataset.get("ignore_direction", False))
    boxes = [_model_boxes(dataset, dataset["samples"][i], (image_height, image_width)) for i in indices]
    return propose(boxes, image_width, image_height, settings)


def _model_boxes(dataset: dict[str, Any], entry: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    """A dataset entry's boxes at the model's image size (the image file's header gives its size)."""
    from PIL import Image

    if "bbox_label_id" not in entry:
        raise DLDatasetError("determine_dl_model_detection_param: expected a detection dataset (bbox_* keys)")
    with Image.open(Path(dataset["image_dir"]) / entry["image_file_name"]) as image:
        width, height = image.size
    if "bbox_phi" in entry:  # oriented: corners scaled, the rectangle refit (as preprocessing does)
        boxes = np.stack([np.asarray(entry[k], np.float64).reshape(-1) for k in rotated_boxes.BOX_KEYS], axis=1)
        return rotated_boxes.transform(boxes, *resize_map((height, width), size), bool(dataset.get("ignore_direction")))
    boxes = np.stack([np.asarray(entry[k], np.float64).reshape(-1) for k in BOX_KEYS], axis=1)
    return scale_boxes(boxes, (height, width), size)


def _settings(gen_param: dict[str, Any] | None) -> dict[str, Any]:
    unknown = sorted(set(gen_param or {}) - set(DEFAULTS))
    if unknown:
        raise DLParamError(f"determine_dl_model_detection_param: unknown gen_param keys {unknown}; known: "
                           f"{sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **(gen_param or {})}
    direction = settings["ignore_direction"]
    if isinstance(direction, str) and direction in ("true", "false"):  # HALCON writes booleans as strings
        settings["ignore_direction"] = direction == "true"
    elif direction is not None and not isinstance(direction, (bool, np.bool_)):
        raise DLParamError(f"determine_dl_model_detection_param: gen_param 'ignore_direction': expected True, False, "
                           f"'true' or 'false', got {direction!r}")
    if not (isinstance(settings["num_aspect_ratios"], int) and settings["num_aspect_ratios"] >= 1
            and isinstance(settings["max_num_subscales"], int) and settings["max_num_subscales"] >= 1
            and 0.0 < float(settings["coverage"]) <= 1.0 and int(settings["max_num_images"]) >= 1):
        raise DLParamError(f"determine_dl_model_detection_param: expected num_aspect_ratios and max_num_subscales "
                           f"ints >= 1, coverage in (0, 1] and max_num_images >= 1, got {settings}")
    return settings
