"""Preprocessing and augmentation of samples (HALCON's ``preprocess_dl_samples`` and
``augment_dl_samples``).

Coordinates are HALCON's pixel-centred ones: pixel (r, c) covers r-0.5..r+0.5, an image of
width W spans columns -0.5..W-0.5. Every geometric change moves the image, its boxes, its label
image and its weight image together. Functions return new sample dicts; the input is left as
it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .boxes import BOX_KEYS, LABEL_KEY, checked_boxes
from .errors import DLSampleError
from .samples import check_sample_list

NORMALIZATION_TYPES = ("none", "all_channels", "first_channel", "constant_values")
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_DEVIATION = (58.395, 57.12, 57.375)
LABEL_PLANES = ("segmentation_image", "weight_image")  # resized with nearest neighbour
AUGMENT_METHODS = ("mirror", "rotate", "brightness", "contrast", "crop")


# --- resizing -----------------------------------------------------------------------------------

def source_positions(new: int, old: int) -> np.ndarray:
    """Pixel-centred source coordinate of each of ``new`` target pixels: (i + 0.5) * old / new - 0.5."""
    return (np.arange(new, dtype=np.float64) + 0.5) * (old / new) - 0.5


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) float32 resized to (height, width, C) with pixel-centred bilinear interpolation.

    Shrinking by more than 2 first averages blocks (area filter), so small details are not
    skipped as plain bilinear sampling would.
    """
    image = np.asarray(image, np.float32)
    rows, cols = image.shape[:2]
    if (rows, cols) == (height, width):
        return image.copy()
    row_factor, col_factor = max(1, rows // (2 * height)), max(1, cols // (2 * width))
    if row_factor > 1 or col_factor > 1:  # area pre-filter for strong shrinking
        rows, cols = rows // row_factor * row_factor, cols // col_factor * col_factor
        image = image[:rows, :cols].reshape(rows // row_factor, row_factor, cols // col_factor, col_factor, -1)
        image = image.mean(axis=(1, 3), dtype=np.float32)
        rows, cols = image.shape[:2]
    r = np.clip(source_positions(height, rows), 0, rows - 1)
    c = np.clip(source_positions(width, cols), 0, cols - 1)
    r0, c0 = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
    r1, c1 = np.minimum(r0 + 1, rows - 1), np.minimum(c0 + 1, cols - 1)
    fr = (r - r0).astype(np.float32)[:, None, None]
    fc = (c - c0).astype(np.float32)[None, :, None]
    top = image[r0][:, c0] * (1 - fc) + image[r0][:, c1] * fc
    bottom = image[r1][:, c0] * (1 - fc) + image[r1][:, c1] * fc
    return (top * (1 - fr) + bottom * fr).astype(np.float32)


def resize_nearest(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) label or weight image resized to (height, width) by nearest neighbour (values kept)."""
    rows, cols = plane.shape[:2]
    r = np.clip(np.floor(source_positions(height, rows) + 0.5), 0, rows - 1).astype(np.int64)
    c = np.clip(np.floor(source_positions(width, cols) + 0.5), 0, cols - 1).astype(np.int64)
    return plane[r][:, c]


def scale_boxes(boxes: np.ndarray, old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """(K, 4) boxes (row1, col1, row2, col2) moved from an image of size ``old`` (H, W) to ``new``:
    x' = (x + 0.5) * new / old - 0.5."""
    factors = np.array([new[0] / old[0], new[1] / old[1]] * 2)
    return (boxes + 0.5) * factors - 0.5


# --- sample parts -------------------------------------------------------------------------------

def _boxes(sample: dict[str, Any]) -> np.ndarray:
    return np.stack([np.asarray(sample[k], np.float64).reshape(-1) for k in BOX_KEYS], axis=1)


def _set_boxes(sample: dict[str, Any], boxes: np.ndarray, keep: np.ndarray | None = None) -> None:
    if keep is not None:
        boxes = boxes[keep]
        sample[LABEL_KEY] = np.asarray(sample[LABEL_KEY]).reshape(-1)[keep]
    for column, key in enumerate(BOX_KEYS):
        sample[key] = boxes[:, column].astype(np.float32)


def _has_boxes(sample: dict[str, Any]) -> bool:
    return LABEL_KEY in sample or any(k in sample for k in BOX_KEYS)


def _image(sample: dict[str, Any], index: int, channels: int) -> np.ndarray:
    """The raw image as float32 (H, W, channels): 1 and 3 channels convert into each other."""
    if "image" not in sample:
        raise DLSampleError(f"sample {index}: missing key 'image' (keys present: {sorted(map(str, sample))})")
    image = sample["image"]
    if not isinstance(image, np.ndarray) or image.dtype.kind not in "fiub" or image.ndim not in (2, 3) \
            or image.size == 0:
        got = f"an array of shape {image.shape} and dtype {image.dtype}" if isinstance(image, np.ndarray) \
            else type(image).__name__
        raise DLSampleError(f"sample {index}, key 'image': expected a non-empty numeric (H, W) or (H, W, C) "
                            f"array, got {got}")
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[:, :, None]
    have = image.shape[2]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    if have in (3, 4) and channels == 1:  # rgb1_to_gray; an alpha channel is dropped
        return (image[:, :, :3] @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
    if have == 4 and channels == 3:
        return image[:, :, :3]
    raise DLSampleError(f"sample {index}, key 'image': the model takes {channels} channels, got an image with "
                        f"{have}")


def normalize(image: np.ndarray, kind: str, low: float, high: float, input_range: float = 255.0) -> np.ndarray:
    """Values of a (H, W, C) float32 image moved into the model's range ``low..high``.

    - ``'none'``: v' = v * (high - low) / input_range + low (8-bit 0..255 -> low..high);
    - ``'all_channels'``: a min-max stretch of each channel to low..high (a constant channel: low);
    - ``'first_channel'``: the stretch of the first channel applied to all channels;
    - ``'constant_values'``: v' = (v - mean_c) / deviation_c with ImageNet's mean and deviation.
    """
    if kind == "none":
        return image * np.float32((high - low) / input_range) + np.float32(low)
    if kind in ("all_channels", "first_channel"):
        source = image if kind == "all_channels" else image[:, :, :1]
        least = source.min(axis=(0, 1), keepdims=True)
        spread = source.max(axis=(0, 1), keepdims=True) - least
        scale = np.where(spread > 0, (high - low) / np.where(spread > 0, spread, 1), 1.0).astype(np.float32)
        return ((image - least) * scale + np.float32(low)).astype(np.float32)
    if kind == "constant_values":
        if image.shape[2] != 3:
            raise DLSampleError(f"normalization_type 'constant_values': expected 3 channels, got {image.shape[2]}")
        mean, deviation = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_DEVIATION, np.float32)
        return (image - mean) / deviation
    raise DLSampleError(f"normalization_type: expected one of {list(NORMALIZATION_TYPES)}, got {kind!r}")


def preprocess_dl_samples(samples: Sequence[dict[str, Any]], params: dict[str, Any],
                          normalization_type: str = "none", input_range: float = 255.0) -> list[dict[str, Any]]:
    """Raw samples (``gen_dl_samples``) made fit for a model with parameters ``params``.

    The image gets the model's channel count (gray <-> RGB), is resized (bilinear, aspect ratio
    not kept) to ``image_width`` x ``image_height`` and its values are moved into
    ``image_range_min..image_range_max`` (see :func:`normalize`; raw values 0..``input_range``).
    Boxes follow the resize (x' = (x + 0.5) * new / old - 0.5; boxes left without area are
    dropped); ``segmentation_image`` and ``weight_image`` are resized by nearest neighbour and must
    have the raw image's size. Raw boxes are checked by :func:`onnx_dl.boxes.checked_boxes`.
    """
    samples = check_sample_list(samples, "preprocess_dl_samples")
    height, width = int(params["image_height"]), int(params["image_width"])
    low, high = float(params["image_range_min"]), float(params["image_range_max"])
    result = []
    for index, sample in enumerate(samples):
        image = _image(sample, index, int(params["image_num_channels"]))
        size = image.shape[:2]
        done = dict(sample)
        done["image"] = normalize(resize_bilinear(image, height, width), normalization_type, low, high, input_range)
        if params["image_num_channels"] == 1:
            done["image"] = done["image"][:, :, 0]
        for key in LABEL_PLANES:
            if sample.get(key) is None:
                continue
            plane = np.asarray(sample[key])
            plane = plane[:, :, 0] if plane.ndim == 3 and plane.shape[2] == 1 else plane
            if plane.shape != size:
                raise DLSampleError(f"sample {index} (image_id {sample.get('image_id')}), key {key!r}: expected "
                                    f"the raw image's size {size}, got shape {plane.shape}")
            done[key] = resize_nearest(plane, height, width)
        if _has_boxes(sample):
            boxes = scale_boxes(checked_boxes(sample, index)[0], size, (height, width))
            _set_boxes(done, boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        result.append(done)
    return result


# --- augmentation -------------------------------------------------------------------------------

def mirror(sample: dict[str, Any], rows: bool, cols: bool) -> dict[str, Any]:
    """The sample mirrored along rows (upside down) and/or columns (left-right).

    A column mirror maps col to W - 1 - col, so col1' = W - 1 - col2 and col2' = W - 1 - col1.
    """
    axes = tuple(axis for axis, chosen in ((0, rows), (1, cols)) if chosen)
    done = _map_planes(sample, lambda a: np.flip(a, axes).copy())
    if _has_boxes(sample):
        height, width = np.asarray(sample["image"]).shape[:2]
        b = _boxes(sample)
        if rows:
            b = np.stack([height - 1 - b[:, 2], b[:, 1], height - 1 - b[:, 0], b[:, 3]], axis=1)
        if cols:
            b = np.stack([b[:, 0], width - 1 - b[:, 3], b[:, 2], width - 1 - b[:, 1]], axis=1)
        _set_boxes(done, b)
    return done


def rotate(sample: dict[str, Any], quarter_turns: int) -> dict[str, Any]:
    """The sample turned counter-clockwise by ``quarter_turns`` * 90 degrees (as ``np.rot90``).

    One quarter turn of an image of width W maps (r, c) to (W - 1 - c, r).
    """
    turns = quarter_turns % 4
    done = _map_planes(sample, lambda a: np.rot90(a, turns, axes=(0, 1)).copy())
    if _has_boxes(sample):
        b = _boxes(sample)
        height, width = np.asarray(sample["image"]).shape[:2]
        for _ in range(turns):
            b = np.stack([width - 1 - b[:, 3], b[:, 0], width - 1 - b[:, 1], b[:, 2]], axis=1)
            height, width = width, height
        _set_boxes(done, b)
    return done


def crop(sample: dict[str, Any], top: int, left: int, height: int, width: int) -> dict[str, Any]:
    """The region ``top..top+height`` x ``left..left+width`` of the sample, resized back to its size.

    A box is kept, clipped to the region, when its centre lies inside the region; other boxes
    are dropped (their objects are mostly cut away).
    """
    full = np.asarray(sample["image"]).shape[:2]
    done = dict(sample)
    image = np.asarray(sample["image"], np.float32)
    part = image[top:top + height, left:left + width]
    done["image"] = resize_bilinear(part if part.ndim == 3 else part[:, :, None], *full).reshape(image.shape)
    for key in LABEL_PLANES:
        if sample.get(key) is not None:
            plane = np.asarray(sample[key])
            done[key] = resize_nearest(plane[top:top + height, left:left + width], *full)
    if _has_boxes(sample):
        b = _boxes(sample)
        low = np.array([top, left] * 2) - 0.5
        high = np.array([top + height, left + width] * 2) - 0.5
        centre_r, centre_c = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        keep = (centre_r > low[0]) & (centre_r < high[0]) & (centre_c > low[1]) & (centre_c < high[1])
        clipped = np.clip(b, low, high) - np.array([top, left] * 2)
        _set_boxes(done, scale_boxes(clipped, (height, width), full), keep)
    return done


def _map_planes(sample: dict[str, Any], change: Any) -> dict[str, Any]:
    """A copy of the sample with ``change`` applied to the image and its label and weight images."""
    done = dict(sample)
    for key in ("image", *LABEL_PLANES):
        if sample.get(key) is not None:
            done[key] = change(np.asarray(sample[key]))
    return done


def augment_dl_samples(samples: Sequence[dict[str, Any]], seed: int | np.random.Generator = 0, *,
                       augmentation_percentage: float = 50.0, mirror_axes: str = "rc", rotate_step: int = 90,
                       brightness_variation: float = 20.0, contrast_variation: float = 0.2,
                       crop_percentage: float = 80.0) -> list[dict[str, Any]]:
    """Randomly changed copies of preprocessed samples, as HALCON's ``augment_dl_samples`` does.

    Each sample is augmented with probability ``augmentation_percentage`` / 100 by exactly one
    method, drawn uniformly from the enabled ones:

    - mirror: along a random non-empty subset of ``mirror_axes`` ('r' rows, 'c' columns; '' off);
    - rotate: by a random multiple of ``rotate_step`` degrees (90 or 180; 0 off); a non-square
      image turns by 180 degrees only;
    - brightness: a uniform offset in [-``brightness_variation``, +``brightness_variation``] added
      to the image (in the model's value units; 0 off);
    - contrast: the image's deviation from its mean scaled by a uniform factor in
      [1 - ``contrast_variation``, 1 + ``contrast_variation``] (0 off);
    - crop: a random region of ``crop_percentage`` % of each side, resized back (100 off).

    Boxes, label images and weight images follow every geometric method. ``seed`` is an int or a
    NumPy Generator; the same seed gives the same result.
    """
    samples = check_sample_list(samples, "augment_dl_samples")
    _check_augment_settings(augmentation_percentage, mirror_axes, rotate_step, brightness_variation,
                            contrast_variation, crop_percentage)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    result = []
    for sample in samples:
        height, width = np.asarray(sample["image"]).shape[:2]
        enabled = [name for name, on in (("mirror", bool(mirror_axes)),
                                         ("rotate", rotate_step > 0),
                                         ("brightness", brightness_variation > 0),
                                         ("contrast", contrast_variation > 0),
                                         ("crop", crop_percentage < 100)) if on]
        if not enabled or rng.uniform(0, 100) >= augmentation_percentage:
            result.append(dict(sample))
            continue
        method = enabled[int(rng.integers(len(enabled)))]
        if method == "mirror":
            chosen = ""
            while not chosen:
                chosen = "".join(axis for axis in mirror_axes if rng.uniform() < 1 / len(mirror_axes))
            result.append(mirror(sample, "r" in chosen, "c" in chosen))
        elif method == "rotate":  # quarter turns: 1..3 (step 90, square images) or 2 (step 180, or not square)
            square_steps = rotate_step == 90 and height == width
            result.append(rotate(sample, int(rng.integers(1, 4)) if square_steps else 2))
        elif method == "brightness":
            offset = np.float32(rng.uniform(-brightness_variation, brightness_variation))
            result.append({**sample, "image": np.asarray(sample["image"], np.float32) + offset})
        elif method == "contrast":
            image = np.asarray(sample["image"], np.float32)
            factor = np.float32(rng.uniform(1 - contrast_variation, 1 + contrast_variation))
            result.append({**sample, "image": (image - image.mean()) * factor + image.mean()})
        else:
            rows, cols = max(1, round(height * crop_percentage / 100)), max(1, round(width * crop_percentage / 100))
            top, left = int(rng.integers(0, height - rows + 1)), int(rng.integers(0, width - cols + 1))
            result.append(crop(sample, top, left, rows, cols))
    return result


def _check_augment_settings(percentage: float, axes: str, step: int, brightness: float, contrast: float,
                            crop_percent: float) -> None:
    problems = []
    if not 0 <= percentage <= 100:
        problems.append(f"augmentation_percentage: expected 0..100, got {percentage}")
    if not isinstance(axes, str) or set(axes) - {"r", "c"} or len(set(axes)) != len(axes):
        problems.append(f"mirror_axes: expected '', 'r', 'c' or 'rc', got {axes!r}")
    if step not in (0, 90, 180):
        problems.append(f"rotate_step: expected 0, 90 or 180, got {step}")
    if not 0 <= brightness <= 255:
        problems.append(f"brightness_variation: expected 0..255, got {brightness}")
    if not 0 <= contrast < 1:
        problems.append(f"contrast_variation: expected 0 <= value < 1, got {contrast}")
    if not 0 < crop_percent <= 100:
        problems.append(f"crop_percentage: expected 0 < value <= 100, got {crop_percent}")
    if problems:
        raise DLSampleError("augment_dl_samples: " + "; ".join(problems))
