"""Pictures of results and ground truth: :func:`draw` puts a result of ``apply_dl_model`` or an
annotated sample of any model type on its image (Pillow only; no plotting library needed).

What is drawn, by model type (detected from the annotation's keys):

- classification: a frame in the class's colour and a label chip ``name 0.93`` (ground truth
  ``image_label_id``: the label's name); the legend lists the best three classes of a result;
- multi-label classification: one chip per class present (a result: the classes at or above
  ``min_confidence``, with confidences; ground truth ``image_label_ids``: the label names);
- segmentation: the label image blended on the image (``MASK_ALPHA``), each class in its colour;
  classes named ``background`` are not tinted, ids that are no class (ignored pixels) are grey;
  the legend gives each class's share of the pixels;
- detection: the boxes in their class's colour with a chip ``name 0.87`` (ground truth boxes with
  ``bbox_label_id``: the name only).

Colours: ``PALETTE[i % len(PALETTE)]`` for the class at position ``i`` of ``params["class_ids"]``
(:func:`class_colour`), so a class keeps its colour in every picture of a model. Below the image a
dark legend strip holds the title (if given) and one line per class shown (colour swatch, name,
confidence or share), or one line saying that nothing was found.

Size rule (:func:`picture_size`): an image of H x W pixels whose shorter side is below ``min_side``
is scaled up (bilinear; the label image by nearest neighbour; coordinates follow) by
``s = min_side / min(H, W)`` to ``W' = round(W * s)`` x ``H' = round(H * s)``; larger images keep
their size. The font size is ``f = max(12, min(W', H') // 32)``; the strip below is
``2 * (f // 2) + lines * (3 * f // 2)`` pixels high. The picture is ``W'`` wide and ``H'`` + strip
high.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

from . import rotated_boxes
from .boxes import BOX_KEYS, LABEL_KEY
from .errors import DLParamError

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 225, 25), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128))
"""Class colours (distinct colours after Sasha Trubetzkoy), indexed by a class's position in ``class_ids``."""

NO_CLASS_COLOUR = (160, 160, 160)
"""The colour of ids that are no class of the model (a segmentation's ignored pixels)."""

UNTINTED_NAMES = frozenset({"background"})
"""Segmentation classes (by name, any case) whose pixels are not tinted."""

MASK_ALPHA = 0.5
"""Weight of the class colour where a segmentation label image is blended on the image."""

CLASSIFICATION_LEGEND_CLASSES = 3
"""How many of a classification result's classes (best first) the legend lists."""

STRIP_COLOUR = (24, 24, 24)
TEXT_COLOUR = (255, 255, 255)

RESULT_MARKERS = {"classification_all_confidences": "multi_label_classification",
                  "classification_class_ids": "classification", "bbox_class_id": "detection",
                  "segmentation_confidence": "segmentation", "word_confidence": "ocr_recognition"}
TRUTH_MARKERS = {LABEL_KEY: "detection", "image_label_ids": "multi_label_classification",
                 "image_label_id": "classification", "segmentation_image": "segmentation", "word": "ocr_recognition"}


def annotation_kind(annotation: dict[str, Any], params: dict[str, Any] | None = None) -> tuple[str, bool]:
    """The model type an annotation belongs to and whether it is a result (else ground truth), by its keys.

    A classification result without ``classification_all_confidences`` counts as multi-label when
    ``params["type"]`` says so. A ``segmentation_image`` alone (no ``segmentation_confidence``) counts
    as ground truth; it is drawn the same way as a result.
    """
    for key, kind in RESULT_MARKERS.items():
        if key in annotation:
            if kind == "classification" and (params or {}).get("type") == "multi_label_classification":
                kind = "multi_label_classification"
            return kind, True
    for key, kind in TRUTH_MARKERS.items():
        if key in annotation:
            return kind, False
    raise DLParamError(f"draw: the annotation is neither a result nor a labelled sample; it has the keys "
                       f"{sorted(annotation)}, expected one of {sorted({**RESULT_MARKERS, **TRUTH_MARKERS})}")


def class_colour(class_id: int, params: dict[str, Any]) -> tuple[int, int, int]:
    """The colour of ``class_id``: ``PALETTE`` at its position in ``params["class_ids"]`` (else grey)."""
    ids = list(params.get("class_ids") or [])
    return PALETTE[ids.index(int(class_id)) % len(PALETTE)] if int(class_id) in ids else NO_CLASS_COLOUR


def class_name(class_id: int, params: dict[str, Any]) -> str:
    """The name of ``class_id`` in ``params["class_names"]``, else the id as text."""
    ids, names = list(params.get("class_ids") or []), list(params.get("class_names") or [])
    position = ids.index(int(class_id)) if int(class_id) in ids else -1
    return str(names[position]) if 0 <= position < len(names) else str(int(class_id))


def font_size(width: int, height: int) -> int:
    """The text size of a picture whose image part is ``width`` x ``height``."""
    return max(12, min(width, height) // 32)


def strip_height(lines: int, width: int, height: int) -> int:
    """Height of the legend strip holding ``lines`` lines under an image part of ``width`` x ``height``."""
    size = font_size(width, height)
    return 2 * (size // 2) + lines * (3 * size // 2)


def scaled_size(height: int, width: int, min_side: int = 384) -> tuple[int, int]:
    """(W', H'): the image part's size, scaled up so that its shorter side is at least ``min_side``."""
    scale = max(1.0, min_side / max(1, min(height, width)))
    return round(width * scale), round(height * scale)


def picture_size(image_shape: Sequence[int], legend_lines: int, min_side: int = 384) -> tuple[int, int]:
    """(width, height) of the picture :func:`draw` makes of an image of ``image_shape`` (H, W[, C]) with
    ``legend_lines`` lines in its legend strip (the title counts as one)."""
    width, height = scaled_size(int(image_shape[0]), int(image_shape[1]), min_side)
    return width, height + strip_height(legend_lines, width, height)


def _resampling(name: str) -> Any:
    """A resampling filter by name (``Image.Resampling`` from Pillow 9.1 on, module constants before)."""
    from PIL import Image

    return getattr(getattr(Image, "Resampling", Image), name)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, AttributeError, ImportError, OSError):
        return ImageFont.load_default()


def _rgb(image: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """(H, W, 3) uint8 of an (H, W) or (H, W, C) image: 1 or 2 channels grey (the first), 3 or more RGB."""
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3:
        array = array[..., :3] if array.shape[2] >= 3 else array[..., 0]
    if array.ndim not in (2, 3) or array.size == 0:  # (H, W) or (H, W, 3) from here on
        raise DLParamError(f"draw: expected an image of shape (H, W) or (H, W, C), got {np.shape(image)}")
    if value_range is not None:
        low, high = float(value_range[0]), float(value_range[1])
        if not high > low:
            raise DLParamError(f"draw: value_range must be (low, high) with high > low, got {value_range}")
        array = (array - low) * (255.0 / (high - low))
    array = np.clip(np.rint(np.nan_to_num(array)), 0, 255).astype(np.uint8)
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


class _Canvas:
    """The scaled image being drawn on, its font and the legend lines collected."""

    def __init__(self, rgb: np.ndarray, min_side: int) -> None:
        from PIL import Image, ImageDraw

        self.source_height, self.source_width = rgb.shape[:2]
        self.width, self.height = scaled_size(self.source_height, self.source_width, min_side)
        picture = Image.fromarray(rgb)
        if (self.width, self.height) != picture.size:
            picture = picture.resize((self.width, self.height), _resampling("BILINEAR"))
        self.picture = picture
        self.draw = ImageDraw.Draw(picture)
        self.size = font_size(self.width, self.height)
        self.font = _font(self.size)
        self.line = max(2, min(self.width, self.height) // 128)
        self.legend: list[tuple[tuple[int, int, int] | None, str]] = []

    def text_size(self, text: str) -> tuple[int, int]:
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=self.font)
        return right - left, bottom - top

    def text(self, draw: Any, x: float, middle: float, text: str, colour: tuple[int, int, int]) -> None:
        """``text`` starting at x, centred vertically on ``middle`` (no anchors: bitmap fonts lack them)."""
        left, top, _, bottom = draw.textbbox((0, 0), text, font=self.font)
        draw.text((x - left, middle - (top + bottom) / 2), text, font=self.font, fill=colour)

    def chip(self, x: float, y: float, text: str, colour: tuple[int, int, int], above: bool = False) -> float:
        """A label ``text`` on a ``colour`` background at (x, y) (above: its bottom at y if there is room);
        returns the y below it."""
        width, _ = self.text_size(text)
        pad = max(1, self.size // 6)
        chip_w, chip_h = width + 2 * pad, 3 * self.size // 2 - 2
        if above and y - chip_h >= 0:
            y -= chip_h
        x = max(0.0, min(x, self.width - chip_w))
        self.draw.rectangle([x, y, x + chip_w - 1, y + chip_h - 1], fill=colour)
        self.text(self.draw, x + pad, y + chip_h / 2, text, _text_colour(colour))
        return y + chip_h + 1

    def frame(self, colour: tuple[int, int, int]) -> None:
        self.draw.rectangle([0, 0, self.width - 1, self.height - 1], outline=colour, width=2 * self.line)

    def finish(self, title: str | None) -> Image.Image:
        """The picture with the legend strip (title first) below the image."""
        from PIL import Image, ImageDraw

        lines = ([(None, title)] if title is not None else []) + self.legend
        picture = Image.new("RGB", (self.width, self.height + strip_height(len(lines), self.width, self.height)),
                            STRIP_COLOUR)
        picture.paste(self.picture, (0, 0))
        draw = ImageDraw.Draw(picture)
        step, pad = 3 * self.size // 2, self.size // 2
        for index, (colour, text) in enumerate(lines):
            top = self.height + pad + index * step
            x = pad
            if colour is not None:
                swatch = self.size - 2
                middle = top + step // 2
                draw.rectangle([x, middle - swatch // 2, x + swatch - 1, middle - swatch // 2 + swatch - 1],
                               fill=colour, outline=TEXT_COLOUR)
                x += swatch + pad
            self.text(draw, x, top + step / 2, text, TEXT_COLOUR)
        return picture


def _confidences(annotation: dict[str, Any], count: int) -> list[float | None]:
    found = annotation.get("classification_confidences")
    return [None] * count if found is None else [float(c) for c in np.asarray(found).reshape(-1)]


def _classification(canvas: _Canvas, annotation: dict[str, Any], params: dict[str, Any], result: bool) -> None:
    if result:
        ids = [int(i) for i in annotation["classification_class_ids"]]
        confidences = _confidences(annotation, len(ids))
        shown = list(zip(ids, confidences))[:CLASSIFICATION_LEGEND_CLASSES]
    else:
        shown = [(int(np.asarray(annotation["image_label_id"]).reshape(-1)[0]), None)]
    if not shown:
        canvas.legend.append((None, "no class"))
        return
    texts = [class_name(cid, params) + ("" if conf is None else f" {conf:.2f}") for cid, conf in shown]
    canvas.frame(class_colour(shown[0][0], params))
    canvas.chip(2 * canvas.line + 2, 2 * canvas.line + 2, texts[0], class_colour(shown[0][0], params))
    canvas.legend += [(class_colour(cid, params), text) for (cid, _), text in zip(shown, texts)]


def _multi_label(canvas: _Canvas, annotation: dict[str, Any], params: dict[str, Any], result: bool) -> None:
    if result:
        ids = [int(i) for i in annotation["classification_class_ids"]]
        confidences = _confidences(annotation, len(ids))
    else:
        ids = [int(i) for i in np.asarray(annotation["image_label_ids"]).reshape(-1)]
        confidences = [None] * len(ids)
    if not ids:
        floor = params.get("min_confidence")
        canvas.legend.append((None, "no class" + (f" at or above {floor:g}" if result and floor is not None else "")))
        return
    y = float(canvas.line + 2)
    for cid, conf in zip(ids, confidences):
        text = class_name(cid, params) + ("" if conf is None else f" {conf:.2f}")
        y = canvas.chip(canvas.line + 2, y, text, class_colour(cid, params))
        canvas.legend.append((class_colour(cid, params), text))


def _segmentation(canvas: _Canvas, annotation: dict[str, Any], params: dict[str, Any]) -> None:
    from PIL import Image

    labels = np.asarray(annotation["segmentation_image"])
    labels = labels.reshape(labels.shape[:2]) if labels.ndim == 3 and labels.shape[2] == 1 else labels
    if labels.ndim != 2:
        raise DLParamError(f"draw: segmentation_image must be (H, W) class ids, got shape {labels.shape}")
    labels = np.rint(labels).astype(np.int64)
    ids, counts = np.unique(labels, return_counts=True)
    class_ids = [int(i) for i in params.get("class_ids") or []]
    order = sorted(range(len(ids)), key=lambda k: (int(ids[k]) not in class_ids,
                                                   class_ids.index(int(ids[k])) if int(ids[k]) in class_ids else 0,
                                                   int(ids[k])))
    colours = np.zeros((*labels.shape, 3), np.float64)
    tint = np.zeros(labels.shape, bool)
    for k in order:
        cid, percent = int(ids[k]), 100.0 * counts[k] / labels.size
        share = f"{percent:.1f}%" if percent >= 0.05 else "<0.1%"
        name = class_name(cid, params)
        if cid not in class_ids:
            colour, text = NO_CLASS_COLOUR, f"{cid} (no class)"
        else:
            colour, text = class_colour(cid, params), name
        if cid in class_ids and name.lower() in UNTINTED_NAMES:
            canvas.legend.append((None, f"{text} {share} (not tinted)"))
            continue
        colours[labels == cid] = colour
        tint |= labels == cid
        canvas.legend.append((colour, f"{text} {share}"))
    size = (canvas.width, canvas.height)
    nearest = _resampling("NEAREST")
    colour_plane = np.asarray(Image.fromarray(colours.astype(np.uint8)).resize(size, nearest), np.float64)
    tint_plane = np.asarray(Image.fromarray(tint.astype(np.uint8) * 255).resize(size, nearest)) > 0
    image = np.asarray(canvas.picture, np.float64)
    image[tint_plane] = (1 - MASK_ALPHA) * image[tint_plane] + MASK_ALPHA * colour_plane[tint_plane]
    canvas.picture.paste(Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)), (0, 0))


def _detection(canvas: _Canvas, annotation: dict[str, Any], params: dict[str, Any], result: bool,
               frame: tuple[int, int]) -> None:
    keys = rotated_boxes.BOX_KEYS if any(k in annotation for k in rotated_boxes.BOX_KEYS) else BOX_KEYS
    boxes = np.stack([np.asarray(annotation.get(k, []), np.float64).reshape(-1) for k in keys], axis=-1)
    ids = np.asarray(annotation["bbox_class_id" if result else LABEL_KEY]).reshape(-1)
    confidences = np.asarray(annotation["bbox_confidence"], np.float64).reshape(-1) if result else None
    if len(ids) != len(boxes) or (confidences is not None and len(confidences) != len(boxes)):
        raise DLParamError(f"draw: box keys of different lengths: {len(boxes)} boxes, {len(ids)} class ids")
    row_scale, col_scale = canvas.height / frame[0], canvas.width / frame[1]
    order = np.argsort(-confidences, kind="stable")[::-1] if confidences is not None else range(len(ids))
    for k in order:  # the best box last, on top
        colour = class_colour(int(ids[k]), params)
        if boxes.shape[1] == 5:  # an oriented box: its outline, labelled at its top corner
            corners = (rotated_boxes.corners(boxes[k]) + 0.5) * np.array([row_scale, col_scale])
            outline = [(float(c), float(r)) for r, c in corners]
            canvas.draw.line([*outline, outline[0]], fill=colour, width=canvas.line)
            top, left = float(corners[:, 0].min()), float(corners[np.argmin(corners[:, 0]), 1])
        else:
            r1, c1, r2, c2 = boxes[k]
            top, left = round((r1 + 0.5) * row_scale), round((c1 + 0.5) * col_scale)
            bottom, right = round((r2 + 0.5) * row_scale) - 1, round((c2 + 0.5) * col_scale) - 1
            canvas.draw.rectangle([left, top, max(left, right), max(top, bottom)], outline=colour,
                                  width=canvas.line)
        text = class_name(int(ids[k]), params) + ("" if confidences is None else f" {confidences[k]:.2f}")
        canvas.chip(left, top, text, colour, above=True)
    class_ids = [int(i) for i in params.get("class_ids") or []]
    shown = sorted({int(i) for i in ids}, key=lambda cid: (cid not in class_ids,
                                                           class_ids.index(cid) if cid in class_ids else cid))
    for cid in shown:
        count = int(np.sum(ids == cid))
        canvas.legend.append((class_colour(cid, params), f"{class_name(cid, params)}: {count} box"
                              + ("es" if count != 1 else "")))
    if not shown:
        canvas.legend.append((None, "no boxes"))


def draw(image: np.ndarray, annotation: dict[str, Any], params: dict[str, Any], min_side: int = 384,
         title: str | None = None, value_range: tuple[float, float] | None = None) -> Image.Image:
    """A picture (``PIL.Image.Image``, RGB) of ``annotation`` drawn on ``image``.

    Args:
        image: (H, W) or (H, W, C) array; values 0..255 as read from a file (clipped), or any range
            given by ``value_range`` (a preprocessed sample: ``(params["image_range_min"],
            params["image_range_max"])``), which is mapped to 0..255.
        annotation: a result of ``apply_dl_model`` or a labelled sample of any model type (which one
            is told by the keys, :func:`annotation_kind`).
        params: the model's parameters: ``class_ids`` and ``class_names`` (names and colours),
            ``image_width`` / ``image_height`` (the frame of a detection result's boxes), ``type``.
        min_side: the shorter side of the image part is scaled up to at least this (see the module's
            size rule, :func:`picture_size`).
        title: an optional first line of the legend strip.
        value_range: the (low, high) of the image's values, mapped to 0..255 (default: 0..255, clipped).

    Coordinates: a detection result's boxes are in the model's input frame
    (``image_height`` x ``image_width``), a ground-truth sample's boxes in the frame of its own
    ``image`` if it holds one, else in ``image``'s; a label image covers the whole image. The frame is
    stretched onto ``image`` (as preprocessing resizes), so a result is drawn on the raw image it was
    computed from.
    """
    kind, result = annotation_kind(annotation, params)
    if min_side < 1:
        raise DLParamError(f"draw: min_side must be at least 1, got {min_side}")
    canvas = _Canvas(_rgb(image, value_range), int(min_side))
    if kind == "classification":
        _classification(canvas, annotation, params, result)
    elif kind == "multi_label_classification":
        _multi_label(canvas, annotation, params, result)
    elif kind == "segmentation":
        _segmentation(canvas, annotation, params)
    elif kind == "ocr_recognition":  # the word (and a result's confidence) in the legend
        confidence = f" {float(annotation['word_confidence']):.2f}" if result else ""
        canvas.legend.append((None, repr(str(annotation["word"])) + confidence))
    else:
        if result and params.get("image_height") and params.get("image_width"):
            frame = (int(params["image_height"]), int(params["image_width"]))
        elif not result and "image" in annotation:
            frame = tuple(np.shape(annotation["image"])[:2])
        else:
            frame = (canvas.source_height, canvas.source_width)
        _detection(canvas, annotation, params, result, frame)  # type: ignore[arg-type]
    return canvas.finish(title)
