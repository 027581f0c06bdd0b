"""The box types of a detector (HALCON's ``instance_type``) behind one interface.

``'rectangle1'``: axis-parallel boxes (row1, col1, row2, col2), :mod:`onnx_dl.boxes`.
``'rectangle2'``: oriented boxes (row, col, length1, length2, phi), :mod:`onnx_dl.rotated_boxes`.

Anchors, target assignment, the detector's results, its evaluation and preprocessing take a box type
(:func:`of_params`) instead of asking which one they have; each type names its sample keys and gives
the validation, IoU, delta encoding and post-processing of its boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import boxes as axis_parallel
from . import rotated_boxes as oriented
from .boxes import LABEL_KEY
from .errors import DLSampleError

BOX_TOLERANCE = 0.01  # pixels a box may reach beyond the image border -0.5 .. size - 0.5 (rounding)


def _check_columns(boxes: np.ndarray, index: int, keys: tuple[str, ...], limits: tuple[int, ...], what: str) -> None:
    """Raise :class:`DLSampleError` for a value of column j (key ``keys[j]``) outside -0.5 .. limits[j] - 0.5."""
    for column, (key, size) in enumerate(zip(keys, limits)):
        values = boxes[:, column]
        bad = np.nonzero((values < -0.5 - BOX_TOLERANCE) | (values > size - 0.5 + BOX_TOLERANCE))[0]
        if len(bad):
            raise DLSampleError(f"sample {index}, key {key!r}: expected {what} inside the image, -0.5 .. "
                                f"{size - 0.5} (pixel centres 0 .. {size - 1}), got {values[bad[0]]} (box {bad[0]})")


class _BoxType:
    keys: tuple[str, ...] = ()
    tie_tolerance = 0.0  # the slack of IoU ties in anchor matching (onnx_dl.anchors.assign)

    @property
    def size(self) -> int:
        """Numbers per box (and box-head channels per anchor)."""
        return len(self.keys)


@dataclass(frozen=True)
class Rectangle1(_BoxType):
    """Axis-parallel boxes (row1, col1, row2, col2)."""

    name = "rectangle1"
    keys = axis_parallel.BOX_KEYS
    tie_tolerance = 0.0  # equal overlaps compute to equal IoUs: ties are exact

    def checked(self, entry: dict[str, Any], index: int, label_key: str = LABEL_KEY, what: str = "sample",
                positive_size: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (G, 4), labels (G,)) of a sample or result (:func:`onnx_dl.boxes.checked_boxes`)."""
        return axis_parallel.checked_boxes(entry, index, label_key, what, positive_size)

    def check_inside(self, boxes: np.ndarray, index: int, height: int, width: int) -> None:
        """Raise :class:`DLSampleError` for a box coordinate outside the image (-0.5 .. size - 0.5)."""
        _check_columns(boxes, index, self.keys, (height, width, height, width), "coordinates")

    def iou(self, boxes_a: np.ndarray, boxes_b: np.ndarray, work: np.ndarray | None = None) -> np.ndarray:
        """(len(a), len(b)) IoU; ``work`` as in :func:`onnx_dl.boxes.iou_rows` (``b`` the long list)."""
        return axis_parallel.iou_rows(boxes_a, boxes_b, work)

    def encode(self, anchors: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The deltas of :func:`onnx_dl.boxes.encode`."""
        return axis_parallel.encode(anchors, targets)

    def decode(self, anchors: np.ndarray, deltas: np.ndarray) -> np.ndarray:
        """The boxes of :func:`onnx_dl.boxes.decode`."""
        return axis_parallel.decode(anchors, deltas)

    def postprocess(self, boxes: np.ndarray, scores: np.ndarray, params: dict[str, Any]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`onnx_dl.boxes.postprocess` with the model's thresholds."""
        return axis_parallel.postprocess(boxes, scores, params["min_confidence"], params["max_overlap"],
                                         params["max_overlap_class_agnostic"], params["max_num_detections"])


@dataclass(frozen=True)
class Rectangle2(_BoxType):
    """Oriented boxes (row, col, length1, length2, phi); ``ignore_direction``: phi and phi + pi are one box."""

    ignore_direction: bool = False
    name = "rectangle2"
    keys = oriented.BOX_KEYS
    tie_tolerance = 1e-9  # IoUs this close to a box's best are ties of the forced-positive rule: the polygon IoU
    # rounds equal overlaps (a small box inside several anchors) differently

    def checked(self, entry: dict[str, Any], index: int, label_key: str = LABEL_KEY, what: str = "sample",
                positive_size: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (G, 5), labels (G,)) of a sample or result (:func:`onnx_dl.rotated_boxes.checked_boxes`)."""
        return oriented.checked_boxes(entry, index, label_key, what, positive_size)

    def check_inside(self, boxes: np.ndarray, index: int, height: int, width: int) -> None:
        """Raise :class:`DLSampleError` for a box whose centre lies outside the image (HALCON drops such
        boxes when it preprocesses; a box may reach beyond the border with its corners)."""
        _check_columns(boxes, index, self.keys[:2], (height, width), "a box centre")

    def iou(self, boxes_a: np.ndarray, boxes_b: np.ndarray, work: np.ndarray | None = None) -> np.ndarray:
        """(len(a), len(b)) IoU of oriented boxes (:func:`onnx_dl.rotated_boxes.iou_matrix`)."""
        return oriented.iou_matrix(boxes_a, boxes_b)

    def encode(self, anchors: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The deltas of :func:`onnx_dl.rotated_boxes.encode`."""
        return oriented.encode(anchors, targets, self.ignore_direction)

    def decode(self, anchors: np.ndarray, deltas: np.ndarray) -> np.ndarray:
        """The boxes of :func:`onnx_dl.rotated_boxes.decode`."""
        return oriented.decode(anchors, deltas, self.ignore_direction)

    def postprocess(self, boxes: np.ndarray, scores: np.ndarray, params: dict[str, Any]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`onnx_dl.rotated_boxes.postprocess` with the model's thresholds."""
        return oriented.postprocess(boxes, scores, params["min_confidence"], params["max_overlap"],
                                    params["max_overlap_class_agnostic"], params["max_num_detections"])


BoxType = Rectangle1 | Rectangle2
RECTANGLE1 = Rectangle1()


def of_params(params: dict[str, Any]) -> BoxType:
    """The box type of a detector's parameters (``instance_type``, ``ignore_direction``)."""
    if params.get("instance_type", "rectangle1") == "rectangle2":
        return Rectangle2(bool(params.get("ignore_direction", False)))
    return RECTANGLE1
