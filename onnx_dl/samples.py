"""Validating and collating sample dictionaries into the arrays the engine is fed.

Every check runs before anything touches the model, and every error names the sample index,
the key, what was expected and what came.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import DLSampleError


def is_int(value: Any) -> bool:
    """An int (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    """A finite int or float (Python or NumPy), not a bool."""
    return (is_int(value) or isinstance(value, (float, np.floating))) and bool(np.isfinite(value))


def describe(value: Any) -> str:
    """A short description of a bad value for an error message: an array's shape and dtype, else type and repr."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:120]


def check_sample_list(samples: Any, what: str) -> list[dict[str, Any]]:
    """``samples`` as a non-empty list of dicts."""
    if isinstance(samples, dict):
        samples = [samples]
    if not isinstance(samples, Sequence) or isinstance(samples, (str, bytes)):
        raise DLSampleError(f"{what}: expected a list of sample dicts, got {describe(samples)}")
    if len(samples) == 0:
        raise DLSampleError(f"{what}: expected at least one sample, got an empty list")
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise DLSampleError(f"sample {index}: expected a dict, got {describe(sample)}")
    return list(samples)


def chunk_count(count: int, batch_size: int, multiplier: int) -> int:
    """How many chunks of ``batch_size`` one training step of ``count`` samples runs."""
    if multiplier > 1 and count != batch_size * multiplier:
        raise DLSampleError(
            f"train_dl_model_batch: expected batch_size * batch_size_multiplier = {batch_size} * {multiplier} "
            f"= {batch_size * multiplier} samples, got {count}"
        )
    if count % batch_size != 0:
        raise DLSampleError(
            f"train_dl_model_batch: expected a multiple of batch_size = {batch_size} samples, got {count}"
        )
    return count // batch_size


def require(sample: dict[str, Any], index: int, key: str) -> Any:
    """``sample[key]``, or an error naming the sample, the missing key and the keys present."""
    if key not in sample:
        raise DLSampleError(f"sample {index}: missing key {key!r} (keys present: {sorted(map(str, sample))})")
    return sample[key]


def image_hwc_shape(params: dict[str, Any]) -> tuple[int, ...]:
    """One image as ``train_dl_model_batch`` takes it: (H, W, C), or (H, W) for one channel."""
    height, width, channels = params["image_height"], params["image_width"], params["image_num_channels"]
    return (height, width) if channels == 1 else (height, width, channels)


def images(samples: list[dict[str, Any]], params: dict[str, Any]) -> np.ndarray:
    """The samples' ``image`` arrays as one float32 NCHW batch, checked against the model's size."""
    width, height, channels = params["image_width"], params["image_height"], params["image_num_channels"]
    expected = image_hwc_shape(params)
    batch = np.empty((len(samples), channels, height, width), np.float32)
    for index, sample in enumerate(samples):
        image = require(sample, index, "image")
        if not isinstance(image, np.ndarray) or image.dtype.kind not in "fiu":
            raise DLSampleError(f"sample {index}, key 'image': expected a numeric NumPy array of shape "
                                f"{expected}, got {describe(image)}")
        if channels == 1 and image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.shape != expected:
            raise DLSampleError(f"sample {index}, key 'image': expected shape {expected} (height, width"
                                f"{', channels' if channels > 1 else ''}) for the model's {width} x {height} x "
                                f"{channels} input, got shape {image.shape}")
        batch[index] = image if channels == 1 else np.moveaxis(image, 2, 0)
    if not np.isfinite(batch).all():
        index = next(i for i in range(len(batch)) if not np.isfinite(batch[i]).all())
        raise DLSampleError(f"sample {index}, key 'image': expected finite values, got NaN or infinity "
                            f"(or a value beyond float32)")
    return batch


def _as_label(value: Any) -> int | None:
    """An integer label from an int, an integral float or a one-element array/list; else None."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return None


def label_indices(samples: list[dict[str, Any]], class_ids: list[int], key: str = "image_label_id") -> np.ndarray:
    """The class index (position in ``class_ids``) of each sample's ``key``."""
    position = {cid: i for i, cid in enumerate(class_ids)}
    result = np.empty(len(samples), np.int64)
    for index, sample in enumerate(samples):
        raw = require(sample, index, key)
        label = _as_label(raw)
        if label is None or label not in position:
            shown = class_ids if len(class_ids) <= 20 else f"{class_ids[:20]}..."
            raise DLSampleError(f"sample {index}, key {key!r}: expected one of the model's class_ids {shown}, "
                                f"got {describe(raw)}")
        result[index] = position[label]
    return result


def label_sets(samples: list[dict[str, Any]], class_ids: list[int], key: str = "image_label_ids") -> np.ndarray:
    """(N, K) float32 0/1 targets: 1 where the class id is among the sample's ``key`` (a list, tuple or
    1-D array of class ids, or one id; empty: no class present)."""
    position = {cid: i for i, cid in enumerate(class_ids)}
    targets = np.zeros((len(samples), len(class_ids)), np.float32)
    for index, sample in enumerate(samples):
        raw = require(sample, index, key)
        values = raw.reshape(-1).tolist() if isinstance(raw, np.ndarray) and raw.ndim <= 1 else raw
        if not isinstance(values, (list, tuple)):
            values = [values]
        for value in values:
            label = None if isinstance(value, (list, tuple, np.ndarray)) else _as_label(value)
            if label is None or label not in position:
                shown = class_ids if len(class_ids) <= 20 else f"{class_ids[:20]}..."
                raise DLSampleError(f"sample {index}, key {key!r}: expected class ids among the model's class_ids "
                                    f"{shown}, got {describe(raw)}")
            targets[index, position[label]] = 1.0
    return targets


def _plane(sample: dict[str, Any], index: int, key: str, shape: tuple[int, int]) -> np.ndarray:
    """A (H, W) numeric array (a trailing channel of 1 allowed) of the model's size."""
    value = require(sample, index, key)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        raise DLSampleError(f"sample {index}, key {key!r}: expected a numeric NumPy array of shape {shape}, "
                            f"got {describe(value)}")
    if value.ndim == 3 and value.shape[2] == 1:
        value = value[:, :, 0]
    if value.shape != shape:
        raise DLSampleError(f"sample {index}, key {key!r}: expected shape {shape} (the image size), "
                            f"got shape {value.shape}")
    return value


def id_lookup(ids: np.ndarray, table: dict[int, float], missing: float, dtype: Any = np.int64) -> np.ndarray:
    """``table[id]`` for every element of the integer array ``ids``; ``missing`` where an id has no entry."""
    size = max(table, default=-1) + 1
    values = np.full(size + 1, missing, dtype)  # the last slot serves every id outside 0..size-1
    values[list(table)] = list(table.values())
    inside = (ids >= 0) & (ids < size)
    return values[np.where(inside, ids, size)]


def label_image_indices(samples: list[dict[str, Any]], class_ids: list[int], ignore_ids: list[int],
                        shape: tuple[int, int], key: str = "segmentation_image") -> np.ndarray:
    """(N, H, W) class indices of each sample's label image; -1 marks ignored pixels."""
    table = {**dict.fromkeys(ignore_ids, -1), **{cid: i for i, cid in enumerate(class_ids)}}
    result = np.empty((len(samples), *shape), np.int64)
    for index, sample in enumerate(samples):
        plane = _plane(sample, index, key, shape)
        ids = plane.astype(np.int64)
        if plane.dtype.kind == "f" and not np.array_equal(ids, plane):
            raise DLSampleError(f"sample {index}, key {key!r}: expected integer class ids, got non-integer values "
                                f"such as {plane[ids != plane][:3].tolist()}")
        mapped = id_lookup(ids, table, -2)
        if (mapped == -2).any():
            bad = np.unique(ids[mapped == -2])[:5].tolist()
            raise DLSampleError(f"sample {index}, key {key!r}: expected class ids in {class_ids} or ignored ids "
                                f"{ignore_ids}, got {bad}")
        result[index] = mapped
    return result


def weight_images(samples: list[dict[str, Any]], shape: tuple[int, int]) -> list[np.ndarray | None]:
    """Each sample's optional ``weight_image``: finite and >= 0."""
    found: list[np.ndarray | None] = []
    for index, sample in enumerate(samples):
        if "weight_image" not in sample or sample["weight_image"] is None:
            found.append(None)
            continue
        plane = _plane(sample, index, "weight_image", shape).astype(np.float32)
        finite = np.isfinite(plane)
        if not finite.all() or (plane < 0).any():
            raise DLSampleError(f"sample {index}, key 'weight_image': expected finite weights >= 0, got "
                                f"{int((~finite).sum())} non-finite and {int((plane < 0).sum())} negative values")
        found.append(plane)
    return found


def weight_normalizer(weights: np.ndarray) -> tuple[np.ndarray, bool]:
    """The step-wide sum of loss weights as a float32 feed, and whether it is above 0.

    A step whose weights are all 0 is fed 1 instead (0 / 1 keeps the loss finite) and applies
    no update.
    """
    total = float(np.asarray(weights, np.float64).sum())
    return np.array(total if total > 0 else 1.0, np.float32), total > 0


def split_chunks(feeds: list[tuple[np.ndarray, bool]], chunks: int) -> list[list[np.ndarray]]:
    """Per chunk, the feeds in order: arrays marked per-sample are split along axis 0, the others shared."""
    size = len(next(array for array, per_sample in feeds if per_sample)) // chunks
    return [[array[i * size:(i + 1) * size] if per_sample else array for array, per_sample in feeds]
            for i in range(chunks)]
