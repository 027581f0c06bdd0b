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
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        while np.abs(colour - image[mask].mean(axis=0)).max() < 100:  # keep the shape clearly visible
            colour = rng.uniform(0, 255, 3).astype(np.float32)
        image[mask] = colour
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
            colour = rng.uniform(0, 255, 3).astype(np.float32)
            while np.abs(colour - image[mask].mean(axis=0)).max() < 60:
                colour = rng.uniform(0, 255, 3).astype(np.float32)
            image[mask] = colour
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
            colour = rng.uniform(0, 255, 3).astype(np.float32)
            while np.abs(colour - image[mask].mean(axis=0)).max() < 60:
                colour = rng.uniform(0, 255, 3).astype(np.float32)
            image[mask] = colour
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
            colour = rng.uniform(0, 255, 3).astype(np.float32)
            while np.abs(colour - image[mask].mean(axis=0)).max() < 80:
                colour = rng.uniform(0, 255, 3).astype(np.float32)
            image[mask] = colour
            present.append(class_ids[int(label)])
        result.append({"image": image - 127.0, "image_label_ids": sorted(present), "image_id": index})
    return result
