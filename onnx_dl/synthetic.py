"""Synthetic datasets: coloured shapes on textured backgrounds, for examples, tests and demos.

Images are float32 (H, W, 3) in the default value range -127..128, as preprocessed samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")


def shape_mask(kind: str, size: int, row: float, col: float, radius: float) -> np.ndarray:
    """Boolean (size, size) mask of one shape centred at (row, col) with half-extent ``radius``."""
    r, c = np.mgrid[0:size, 0:size].astype(np.float32)
    dr, dc = r - row, c - col
    if kind == "circle":
        return dr**2 + dc**2 <= radius**2
    if kind == "square":
        return (np.abs(dr) <= radius * 0.85) & (np.abs(dc) <= radius * 0.85)
    if kind == "triangle":  # apex up: width grows linearly from top to bottom
        inside_rows = (dr >= -radius) & (dr <= radius)
        return inside_rows & (np.abs(dc) <= (dr + radius) / 2.0)
    if kind == "cross":
        arm = radius * 0.35
        return ((np.abs(dr) <= arm) & (np.abs(dc) <= radius)) | ((np.abs(dc) <= arm) & (np.abs(dr) <= radius))
    raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")


def paint(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, contrast: float) -> None:
    """Fill ``mask`` of ``image`` with a random colour differing from the pixels under it by at least
    ``contrast`` in some channel (drawn again until it does), so the shape stays clearly visible."""
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    while np.abs(colour - image[mask].mean(axis=0)).max() < contrast:
        colour = rng.uniform(0, 255, 3).astype(np.float32)
    image[mask] = colour


def textured_background(rng: np.random.Generator, size: int, gradient: float = 25.0,
                        noise: float = 8.0) -> np.ndarray:
    """(size, size, 3) float32 background: a random colour, a gradient of +-``gradient`` and noise of
    standard deviation ``noise``, values 0..255."""
    base = rng.uniform(40, 215, 3).astype(np.float32)
    ramp = np.linspace(-gradient, gradient, size, dtype=np.float32)
    direction = rng.uniform(-1, 1, 2).astype(np.float32)
    ramp_2d = direction[0] * ramp[:, None] + direction[1] * ramp[None, :]
    texture = rng.normal(0, noise, (size, size, 3)).astype(np.float32)
    return np.clip(base + ramp_2d[..., None] + texture, 0, 255)


def classification_samples(count: int, size: int = 32, seed: int = 0,
                           class_ids: tuple[int, ...] = (0, 1, 2, 3)) -> list[dict[str, Any]]:
    """``count`` samples with one shape each; the class is the shape (``SHAPES[i]`` for ``class_ids[i]``)."""
    if not 1 <= len(class_ids) <= len(SHAPES):
        raise ValueError(f"between 1 and {len(SHAPES)} classes, got {len(class_ids)}")
    rng = np.random.default_rng(seed)
    result = []
    for index in range(count):
        label = index % len(class_ids)
        image = textured_background(rng, size, gradient=20.0, noise=5.0)
        radius = rng.uniform(0.32, 0.45) * size
        row, col = rng.uniform(radius, size - radius, 2)
        mask = shape_mask(SHAPES[label], size, row, col, radius)
        paint(image, mask, rng, 100)
        result.append({"image": image - 127.0, "image_label_id": class_ids[label], "image_id": index})
    order = rng.permutation(count)
    return [result[i] for i in order]


def segmentation_samples(count: int, size: int = 64, seed: int = 0, max_shapes: int = 3) -> list[dict[str, Any]]:
    """``count`` samples with 1 to ``max_shapes`` shapes each; ``segmentation_image`` holds the class
    per pixel: 0 background, 1 circle, 2 square, 3 triangle (later shapes cover earlier ones)."""
    rng = np.random.default_rng(seed)
    result = []
    for index in range(count):
        image = textured_background(rng, size)
        labels = np.zeros((size, size), np.uint8)
        for _ in range(rng.integers(1, max_shapes + 1)):
            kind = int(rng.integers(1, 4))
            radius = rng.uniform(0.15, 0.25) * size
            row, col = rng.uniform(radius, size - radius, 2)
            mask = shape_mask(SHAPES[kind - 1], size, row, col, radius)
            paint(image, mask, rng, 60)
            labels[mask] = kind
        result.append({"image": image - 127.0, "segmentation_image": labels, "image_id": index})
    return result


def detection_samples(count: int, size: int = 128, seed: int = 0, max_shapes: int = 4,
                      class_ids: tuple[int, ...] = (0, 1, 2), min_shapes: int = 1) -> list[dict[str, Any]]:
    """``count`` samples with ``min_shapes`` to ``max_shapes`` shapes each, one box per shape
    (``min_shapes=0, max_shapes=0``: background images holding no object at all).

    Class ``class_ids[i]`` is the shape ``SHAPES[i]`` (circle, square, triangle). Boxes are the
    tight extent of each shape's pixels in HALCON's pixel-centred convention (pixel (r, c) covers
    r-0.5..r+0.5): ``bbox_row1`` = top pixel row - 0.5, ``bbox_row2`` = bottom pixel row + 0.5.
    Shapes do not overlap, so every box shows its whole shape.
    """
    if not 1 <= len(class_ids) <= len(SHAPES):
        raise ValueError(f"between 1 and {len(SHAPES)} classes, got {len(class_ids)}")
    if not 0 <= min_shapes <= max_shapes:
        raise ValueError(f"expected 0 <= min_shapes <= max_shapes, got {min_shapes} and {max_shapes}")
    rng = np.random.default_rng(seed)
    result = []
    for index in range(count):
        image = textured_background(rng, size)
        taken = np.zeros((size, size), bool)
        boxes: list[list[float]] = []
        labels: list[int] = []
        for _ in range(rng.integers(min_shapes, max_shapes + 1)):
            label = int(rng.integers(0, len(class_ids)))
            radius = rng.uniform(0.08, 0.2) * size
            row, col = rng.uniform(radius, size - radius, 2)
            mask = shape_mask(SHAPES[label], size, row, col, radius)
            if (mask & taken).any() or not mask.any():
                continue  # keep shapes apart: a covered shape would have a misleading box
            taken |= mask
            paint(image, mask, rng, 60)
            rows, cols = np.nonzero(mask)
            boxes.append([rows.min() - 0.5, cols.min() - 0.5, rows.max() + 0.5, cols.max() + 0.5])
            labels.append(class_ids[label])
        box_array = np.asarray(boxes, np.float32).reshape(-1, 4)
        result.append({
            "image": image - 127.0, "image_id": index,
            "bbox_row1": box_array[:, 0], "bbox_col1": box_array[:, 1],
            "bbox_row2": box_array[:, 2], "bbox_col2": box_array[:, 3],
            "bbox_label_id": np.asarray(labels, np.int64),
        })
    return result


def multi_label_samples(count: int, size: int = 48, seed: int = 0, max_shapes: int = 3,
                        class_ids: tuple[int, ...] = (0, 1, 2, 3)) -> list[dict[str, Any]]:
    """``count`` samples with 0 to ``max_shapes`` different shapes each, apart from each other;
    ``image_label_ids`` lists the classes present (``SHAPES[i]`` for ``class_ids[i]``), empty for an
    image without shapes."""
    if not 1 <= len(class_ids) <= len(SHAPES) or not 0 <= max_shapes <= len(class_ids):
        raise ValueError(f"between 1 and {len(SHAPES)} classes and at most one shape per class, got "
                         f"{len(class_ids)} classes and max_shapes {max_shapes}")
    rng = np.random.default_rng(seed)
    result = []
    for index in range(count):
        image = textured_background(rng, size)
        taken = np.zeros((size, size), bool)
        present: list[int] = []
        for label in rng.permutation(len(class_ids))[:rng.integers(0, max_shapes + 1)]:
            for _attempt in range(20):  # a free place for the shape
                radius = rng.uniform(0.14, 0.2) * size
                row, col = rng.uniform(radius, size - radius, 2)
                mask = shape_mask(SHAPES[label], size, row, col, radius)
                if not (mask & taken).any():
                    break
            else:
                continue
            taken |= mask
            paint(image, mask, rng, 80)
            present.append(class_ids[int(label)])
        result.append({"image": image - 127.0, "image_label_ids": sorted(present), "image_id": index})
    return result


WORD_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # what generated word images spell


def word_image(rng: np.random.Generator, word: str, width: int, height: int, inverted_share: float = 0.0) -> np.ndarray:
    """(height, width) float32 image of ``word`` in Pillow's default font, values 0..255: a random font
    size, letter spacing, position and slant, dark on light (light on dark for a share ``inverted_share``
    of the words), with a gradient and noise. The word is shrunk if it would not fit."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=int(rng.integers(max(8, height * 5 // 8), max(9, height * 3 // 4) + 1)))
    spacing = float(rng.uniform(0.0, 0.25)) * font.size
    advances = [font.getlength(ch) + spacing for ch in word]
    canvas = Image.new("L", (int(sum(advances)) + 2 * height + 2, 2 * height), 0)
    draw = ImageDraw.Draw(canvas)
    x = float(height)
    for ch, advance in zip(word, advances):
        draw.text((x, height / 2), ch, fill=255, font=font)
        x += advance
    slant = float(rng.uniform(-0.25, 0.25))  # horizontal shift per row: italic-like shear
    canvas = canvas.transform(canvas.size, Image.Transform.AFFINE, (1, slant, -slant * height, 0, 1, 0),
                              resample=Image.Resampling.BILINEAR)
    box = canvas.getbbox() or (0, 0, 1, 1)
    ink = canvas.crop(box)
    scale = min(1.0, (width - 4) / ink.width, (height - 2) / ink.height)
    ink = ink.resize((max(1, int(ink.width * scale)), max(1, int(ink.height * scale))), Image.Resampling.BILINEAR)
    left = int(rng.integers(0, width - ink.width + 1))
    top = int(rng.integers(0, height - ink.height + 1))
    mask = np.zeros((height, width), np.float32)
    mask[top:top + ink.height, left:left + ink.width] = np.asarray(ink, np.float32) / 255.0
    background, foreground = rng.uniform(150, 240), rng.uniform(10, 90)
    if rng.random() < inverted_share:
        background, foreground = 255.0 - background, 255.0 - foreground
    ramp = np.linspace(-15.0, 15.0, width, dtype=np.float32)[None, :] * rng.uniform(-1, 1)
    image = background + ramp + (foreground - background) * mask + rng.normal(0, 6.0, (height, width))
    return np.clip(image, 0, 255).astype(np.float32)


def word_samples(count: int, width: int = 128, height: int = 32, seed: int = 0, min_length: int = 3,
                 max_length: int = 8, alphabet: str = WORD_ALPHABET) -> list[dict[str, Any]]:
    """``count`` samples of random words (``min_length`` to ``max_length`` characters of ``alphabet``,
    uniformly drawn) rendered by :func:`word_image`: ``image`` (height, width, 1) in -127..128 and ``word``."""
    rng = np.random.default_rng(seed)
    result = []
    for index in range(count):
        word = "".join(rng.choice(list(alphabet), int(rng.integers(min_length, max_length + 1))))
        image = word_image(rng, word, width, height)
        result.append({"image": image[:, :, None] - 127.0, "word": word, "image_id": index})
    return result


ORIENTED_SHAPES = ("rectangle", "ellipse", "triangle")


def oriented_shape_mask(kind: str, size: int, box: tuple[float, float, float, float, float]) -> np.ndarray:
    """Boolean (size, size) mask of a shape filling the oriented box (row, col, length1, length2, phi)
    (:mod:`onnx_dl.rotated_boxes`): the rectangle itself, the inscribed ellipse, or the isosceles
    triangle with its base on the side at -length1 and its apex at +length1 (it points along phi)."""
    row, col, length1, length2, phi = box
    r, c = np.mgrid[0:size, 0:size].astype(np.float64)
    along = -(r - row) * np.sin(phi) + (c - col) * np.cos(phi)  # the axes u and v of rotated_boxes.axes
    across = -(r - row) * np.cos(phi) - (c - col) * np.sin(phi)
    s, t = along / length1, across / length2
    if kind == "rectangle":
        return (np.abs(s) <= 1) & (np.abs(t) <= 1)
    if kind == "ellipse":
        return s**2 + t**2 <= 1
    if kind == "triangle":
        return (np.abs(s) <= 1) & (np.abs(t) <= (1 - s) / 2)
    raise ValueError(f"unknown shape {kind!r}; known: {ORIENTED_SHAPES}")


def oriented_detection_samples(count: int, size: int = 64, seed: int = 0, max_shapes: int = 3,
                               class_ids: tuple[int, ...] = (0, 1, 2), min_shapes: int = 1,
                               ignore_direction: bool = True, elongation: tuple[float, float] = (1.6, 3.0),
                               lengths: tuple[float, float] = (0.1, 0.22)) -> list[dict[str, Any]]:
    """``count`` samples for detectors of instance_type 'rectangle2': ``min_shapes`` to ``max_shapes``
    shapes each at random angles, class ``class_ids[i]`` the shape ``ORIENTED_SHAPES[i]`` (rectangle,
    ellipse, triangle), one oriented box per shape (``bbox_row``, ``bbox_col``, ``bbox_length1``,
    ``bbox_length2``, ``bbox_phi``, ``bbox_label_id``): the box the shape was drawn in, length1 =
    ``lengths`` x size (uniform), length1 / length2 in ``elongation``, phi in (-pi/2, pi/2] with
    ``ignore_direction`` or (-pi, pi] (then the triangle's apex gives the direction). Shapes lie wholly
    inside the image and apart from each other."""
    if not 1 <= len(class_ids) <= len(ORIENTED_SHAPES):
        raise ValueError(f"between 1 and {len(ORIENTED_SHAPES)} classes, got {len(class_ids)}")
    rng = np.random.default_rng(seed)
    half_turn = np.pi / 2 if ignore_direction else np.pi
    result = []
    for index in range(count):
        image = textured_background(rng, size)
        taken = np.zeros((size, size), bool)
        boxes: list[tuple[float, float, float, float, float]] = []
        labels: list[int] = []
        for _ in range(rng.integers(min_shapes, max_shapes + 1)):
            label = int(rng.integers(0, len(class_ids)))
            length1 = rng.uniform(*lengths) * size
            length2 = length1 / rng.uniform(*elongation)
            phi = float(-rng.uniform(-half_turn, half_turn))  # in (-h, h]
            reach = float(np.hypot(length1, length2))
            row, col = rng.uniform(reach, size - 1 - reach, 2)
            box = (float(row), float(col), float(length1), float(length2), phi)
            mask = oriented_shape_mask(ORIENTED_SHAPES[label], size, box)
            if (mask & taken).any() or not mask.any():
                continue
            taken |= mask
            paint(image, mask, rng, 60)
            boxes.append(box)
            labels.append(class_ids[label])
        array = np.asarray(boxes, np.float64).reshape(-1, 5)
        sample: dict[str, Any] = {"image": image - 127.0, "image_id": index}
        for column, key in enumerate(("bbox_row", "bbox_col", "bbox_length1", "bbox_length2", "bbox_phi")):
            sample[key] = array[:, column]
        sample["bbox_label_id"] = np.asarray(labels, np.int64)
        result.append(sample)
    return result
