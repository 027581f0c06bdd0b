"""Preprocessing and augmentation of samples (HALCON's ``preprocess_dl_samples`` and
``augment_dl_samples``).

Coordinates are HALCON's pixel-centred ones: pixel (r, c) covers r-0.5..r+0.5, an image of
width W spans columns -0.5..W-0.5. Every geometric change moves the image, its boxes, its label
image and its weight image together. Functions return new sample dicts; the input is left as
it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import rotated_boxes, system
from .boxes import BOX_KEYS, LABEL_KEY, checked_boxes
from .errors import DLSampleError
from .samples import check_sample_list, is_number

NORMALIZATION_TYPES = ("none", "all_channels", "first_channel", "constant_values")
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_DEVIATION = (58.395, 57.12, 57.375)
LABEL_PLANES = ("segmentation_image", "weight_image")  # resized with nearest neighbour
AUGMENT_METHODS = ("mirror", "rotate", "brightness_variation", "brightness_variation_spot", "contrast_variation",
                   "saturation_variation", "crop_percentage", "crop_pixel", "rotate_range")  # HALCON keys


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

def box_array(sample: dict[str, Any]) -> np.ndarray:
    """A sample's axis-parallel boxes (G, 4) float64 from its box keys."""
    return np.stack([np.asarray(sample[k], np.float64).reshape(-1) for k in BOX_KEYS], axis=1)


def set_boxes(sample: dict[str, Any], boxes: np.ndarray, keep: np.ndarray | None = None) -> None:
    """Write boxes (G, 4) into the sample's box keys as float32, with ``keep`` also its labels filtered."""
    if keep is not None:
        boxes = boxes[keep]
        sample[LABEL_KEY] = np.asarray(sample[LABEL_KEY]).reshape(-1)[keep]
    for column, key in enumerate(BOX_KEYS):
        sample[key] = boxes[:, column].astype(np.float32)


def _has_boxes(sample: dict[str, Any]) -> bool:
    return LABEL_KEY in sample or any(k in sample for k in BOX_KEYS) or _has_oriented_boxes(sample)


def _has_oriented_boxes(sample: dict[str, Any]) -> bool:
    return any(k in sample for k in rotated_boxes.BOX_KEYS)


def _move_oriented_boxes(sample: dict[str, Any], done: dict[str, Any], index: int, matrix: np.ndarray,
                         offset: np.ndarray, ignore_direction: bool, no_orientation: Sequence[int] = (),
                         inside: tuple[int, int] | None = None) -> None:
    """``done``'s oriented boxes: ``sample``'s moved by the affine map p -> matrix @ p + offset of (row,
    col) points (:func:`onnx_dl.rotated_boxes.transform`: corners mapped, rectangle refit, direction
    kept); boxes of the classes ``no_orientation`` replaced by their axis-parallel enclosing box; with
    ``inside`` (H, W) boxes whose centre leaves the image dropped (HALCON's rule)."""
    boxes, labels = rotated_boxes.checked_boxes(sample, index)
    moved = rotated_boxes.transform(boxes, matrix, offset, ignore_direction)
    moved = rotated_boxes.enclosing_for_classes(moved, labels, no_orientation)
    keep = np.ones(len(moved), bool)
    if inside is not None:
        keep = (moved[:, 0] >= -0.5) & (moved[:, 0] <= inside[0] - 0.5) & (moved[:, 1] >= -0.5) & \
            (moved[:, 1] <= inside[1] - 0.5)
    for column, key in enumerate(rotated_boxes.BOX_KEYS):
        done[key] = moved[keep, column]
    done[LABEL_KEY] = np.asarray(labels).reshape(-1)[keep]


def resize_map(old: tuple[int, int], new: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The affine map (matrix, offset) of (row, col) points under a resize from ``old`` (H, W) to
    ``new``: x' = (x + 0.5) * new / old - 0.5 per axis (:func:`scale_boxes`)."""
    factors = np.array([new[0] / old[0], new[1] / old[1]])
    return np.diag(factors), 0.5 * factors - 0.5


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
    Oriented boxes (``bbox_row``, ..., ``bbox_phi``) are refit after the resize (their corners scaled,
    :func:`onnx_dl.rotated_boxes.transform`, phi normalised by the model's ``ignore_direction``), boxes of
    ``class_ids_no_orientation`` become axis-parallel, boxes whose centre lies outside are dropped.
    """
    if "domain_handling" in params:  # its normalization_type and domain would go unread here
        raise DLSampleError("preprocess_dl_samples: got a DLPreprocessParam (create_dl_preprocess_param): pass it to "
                            "onnx_dl.preprocess_dl_samples (onnx_dl.halcon_preprocess); this one takes model parameters")
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
        if _has_oriented_boxes(sample):
            _move_oriented_boxes(sample, done, index, *resize_map(size, (height, width)),
                                 bool(params.get("ignore_direction", False)),
                                 params.get("class_ids_no_orientation") or (), inside=(height, width))
        elif _has_boxes(sample):
            boxes = scale_boxes(checked_boxes(sample, index)[0], size, (height, width))
            set_boxes(done, boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        result.append(done)
    return result


# --- augmentation -------------------------------------------------------------------------------

def mirror(sample: dict[str, Any], rows: bool, cols: bool, ignore_direction: bool = False,
           class_ids_no_orientation: Sequence[int] = ()) -> dict[str, Any]:
    """The sample mirrored along rows (upside down) and/or columns (left-right).

    A column mirror maps col to W - 1 - col, so col1' = W - 1 - col2 and col2' = W - 1 - col1.
    Oriented boxes are mirrored exactly (a column mirror turns phi into pi - phi, a row mirror into
    -phi), phi normalised by ``ignore_direction``.
    """
    axes = tuple(axis for axis, chosen in ((0, rows), (1, cols)) if chosen)
    done = _map_planes(sample, lambda a: np.flip(a, axes).copy())
    if _has_oriented_boxes(sample):
        height, width = np.asarray(sample["image"]).shape[:2]
        matrix = np.diag([-1.0 if rows else 1.0, -1.0 if cols else 1.0])
        offset = np.array([height - 1.0 if rows else 0.0, width - 1.0 if cols else 0.0])
        _move_oriented_boxes(sample, done, 0, matrix, offset, ignore_direction, class_ids_no_orientation)
    elif _has_boxes(sample):
        height, width = np.asarray(sample["image"]).shape[:2]
        b = box_array(sample)
        if rows:
            b = np.stack([height - 1 - b[:, 2], b[:, 1], height - 1 - b[:, 0], b[:, 3]], axis=1)
        if cols:
            b = np.stack([b[:, 0], width - 1 - b[:, 3], b[:, 2], width - 1 - b[:, 1]], axis=1)
        set_boxes(done, b)
    return done


def rotate(sample: dict[str, Any], quarter_turns: int, ignore_direction: bool = False,
           class_ids_no_orientation: Sequence[int] = ()) -> dict[str, Any]:
    """The sample turned counter-clockwise by ``quarter_turns`` * 90 degrees (as ``np.rot90``).

    One quarter turn of an image of width W maps (r, c) to (W - 1 - c, r); an oriented box's phi
    grows by pi/2 per turn (normalised by ``ignore_direction``).
    """
    turns = quarter_turns % 4
    done = _map_planes(sample, lambda a: np.rot90(a, turns, axes=(0, 1)).copy())
    if _has_oriented_boxes(sample):
        height, width = np.asarray(sample["image"]).shape[:2]
        matrix, offset = np.eye(2), np.zeros(2)
        for _ in range(turns):  # compose (r, c) -> (W - 1 - c, r)
            turn = np.array([[0.0, -1.0], [1.0, 0.0]])
            matrix, offset = turn @ matrix, turn @ offset + np.array([width - 1.0, 0.0])
            height, width = width, height
        _move_oriented_boxes(sample, done, 0, matrix, offset, ignore_direction, class_ids_no_orientation)
    elif _has_boxes(sample):
        b = box_array(sample)
        height, width = np.asarray(sample["image"]).shape[:2]
        for _ in range(turns):
            b = np.stack([width - 1 - b[:, 3], b[:, 0], width - 1 - b[:, 1], b[:, 2]], axis=1)
            height, width = width, height
        set_boxes(done, b)
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
    if _has_oriented_boxes(sample):  # the centre rule; corners may reach beyond the region
        matrix, offset = resize_map((height, width), full)
        _move_oriented_boxes(sample, done, 0, matrix, offset - matrix @ np.array([top, left], np.float64), False,
                             inside=full)
    elif _has_boxes(sample):
        b = box_array(sample)
        low = np.array([top, left] * 2) - 0.5
        high = np.array([top + height, left + width] * 2) - 0.5
        centre_r, centre_c = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        keep = (centre_r > low[0]) & (centre_r < high[0]) & (centre_c > low[1]) & (centre_c < high[1])
        clipped = np.clip(b, low, high) - np.array([top, left] * 2)
        set_boxes(done, scale_boxes(clipped, (height, width), full), keep)
    return done


def _map_planes(sample: dict[str, Any], change: Any) -> dict[str, Any]:
    """A copy of the sample with ``change`` applied to the image and its label and weight images."""
    done = dict(sample)
    for key in ("image", *LABEL_PLANES):
        if sample.get(key) is not None:
            done[key] = change(np.asarray(sample[key]))
    return done


# HALCON's augment_dl_samples keys with HALCON's defaults: every method is off unless named.
AUGMENT_DEFAULTS: dict[str, Any] = {
    "augmentation_percentage": 50,
    "mirror": "off",                 # 'off', 'r', 'c' or 'rc'
    "rotate": 0,                     # 0, 90 or 180
    "brightness_variation": 0,       # 0..255
    "brightness_variation_spot": 0,  # 0..255
    "contrast_variation": 0,         # 0..1
    "saturation_variation": 0,       # 0..1
    "crop_percentage": 100,          # 1..100, classification only
    "crop_pixel": 0,                 # pixels >= 0, classification only
    "rotate_range": 0,               # 0..180 degrees, classification only
    "ignore_direction": False,       # oriented boxes: phi and phi + pi the same (angles in (-pi/2, pi/2])
    "class_ids_no_orientation": [],  # oriented boxes of these classes stay axis-parallel
}
AUGMENT_CLASSIFICATION_ONLY = ("crop_percentage", "crop_pixel", "rotate_range")
MIRROR_VALUES = ("off", "r", "c", "rc", "cr")
# The old keyword form (deprecated): old keyword -> (HALCON key, the old form's default).
DEPRECATED_AUGMENT_KEYWORDS: dict[str, tuple[str, Any]] = {
    "augmentation_percentage": ("augmentation_percentage", 50.0),
    "mirror_axes": ("mirror", "rc"),
    "rotate_step": ("rotate", 90),
    "brightness_variation": ("brightness_variation", 20.0),
    "contrast_variation": ("contrast_variation", 0.2),
    "crop_percentage": ("crop_percentage", 80.0),
}


def rotate_by_angle(image: np.ndarray, degrees: float) -> np.ndarray:
    """(H, W) or (H, W, C) image turned counter-clockwise (as ``np.rot90``) by ``degrees`` about its
    centre ((H - 1) / 2, (W - 1) / 2), same size, bilinear; outside the image the border is replicated.

    Target pixel (r, c) at offset (dr, dc) from the centre reads the source at
    (cos t * dr + sin t * dc, -sin t * dr + cos t * dc) from the centre.
    """
    image = np.asarray(image, np.float32)
    planes = image if image.ndim == 3 else image[:, :, None]
    height, width = planes.shape[:2]
    angle = np.deg2rad(degrees)
    cos, sin = round(float(np.cos(angle)), 12), round(float(np.sin(angle)), 12)  # exact at multiples of 90
    centre_r, centre_c = (height - 1) / 2, (width - 1) / 2
    dr = np.arange(height, dtype=np.float64)[:, None] - centre_r
    dc = np.arange(width, dtype=np.float64)[None, :] - centre_c
    r = np.clip(centre_r + cos * dr + sin * dc, 0, height - 1)  # clipping the position replicates the border
    c = np.clip(centre_c - sin * dr + cos * dc, 0, width - 1)
    r0, c0 = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
    r1, c1 = np.minimum(r0 + 1, height - 1), np.minimum(c0 + 1, width - 1)
    fr, fc = (r - r0).astype(np.float32)[:, :, None], (c - c0).astype(np.float32)[:, :, None]
    top = planes[r0, c0] * (1 - fc) + planes[r0, c1] * fc
    bottom = planes[r1, c0] * (1 - fc) + planes[r1, c1] * fc
    return (top * (1 - fr) + bottom * fr).astype(np.float32).reshape(image.shape)


def _got(value: Any) -> str:
    return repr(value) if is_number(value) or isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def check_augment_param(gen_param: dict[str, Any] | None) -> dict[str, Any]:
    """HALCON's ``augment_dl_samples`` GenParam checked and completed with the defaults
    (:data:`AUGMENT_DEFAULTS`). Unknown keys and bad values raise a :class:`DLSampleError` that names
    the key, what was expected and what came (all problems at once)."""
    if gen_param is None:
        gen_param = {}
    if not isinstance(gen_param, dict):
        raise DLSampleError(f"augment_dl_samples: gen_param: expected a dict of HALCON keys "
                            f"({', '.join(AUGMENT_DEFAULTS)}), got {_got(gen_param)}")
    problems = []
    for key in gen_param:
        if key not in AUGMENT_DEFAULTS:
            problems.append(f"unknown key {key!r}: expected one of {', '.join(AUGMENT_DEFAULTS)}")
    settings = {**AUGMENT_DEFAULTS, **{k: v for k, v in gen_param.items() if k in AUGMENT_DEFAULTS}}

    def number(key: str, low: float, high: float, integer: bool = False, allowed: str = "") -> None:
        value = settings[key]
        ok = is_number(value) and low <= value <= high and (not integer or float(value).is_integer())
        if not ok:
            expected = allowed or f"{'an integer' if integer else 'a number'} in {low:g}..{high:g}"
            problems.append(f"key {key!r}: expected {expected}, got {_got(value)}")

    number("augmentation_percentage", 0, 100)
    if not isinstance(settings["mirror"], str) or settings["mirror"] not in MIRROR_VALUES:
        problems.append(f"key 'mirror': expected 'off', 'r', 'c' or 'rc', got {_got(settings['mirror'])}")
    if not (is_number(settings["rotate"]) and settings["rotate"] in (0, 90, 180)):
        problems.append(f"key 'rotate': expected 0, 90 or 180, got {_got(settings['rotate'])}")
    number("brightness_variation", 0, 255)
    number("brightness_variation_spot", 0, 255)
    number("contrast_variation", 0, 1)
    number("saturation_variation", 0, 1)
    number("crop_percentage", 1, 100)
    number("crop_pixel", 0, np.inf, integer=True, allowed="an integer >= 0 (0: off)")
    number("rotate_range", 0, 180, integer=True)
    if not isinstance(settings["ignore_direction"], (bool, np.bool_)):
        problems.append(f"key 'ignore_direction': expected True or False, got {_got(settings['ignore_direction'])}")
    ids = settings["class_ids_no_orientation"]
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, (int, np.integer)) and i >= 0 for i in ids):
        problems.append(f"key 'class_ids_no_orientation': expected a list of class ids >= 0, got {_got(ids)}")
    if problems:
        raise DLSampleError("augment_dl_samples, gen_param: " + "; ".join(problems))
    return settings


def _enabled_methods(settings: dict[str, Any]) -> list[str]:
    """The switched-on methods, in a fixed order (the old keyword form's five first, so its seeded
    results stay as they were)."""
    on = {"mirror": settings["mirror"] != "off", "rotate": settings["rotate"] != 0,
          "brightness_variation": settings["brightness_variation"] > 0,
          "contrast_variation": settings["contrast_variation"] > 0,
          "crop_percentage": settings["crop_percentage"] < 100,
          "brightness_variation_spot": settings["brightness_variation_spot"] > 0,
          "saturation_variation": settings["saturation_variation"] > 0,
          "crop_pixel": settings["crop_pixel"] > 0, "rotate_range": settings["rotate_range"] > 0}
    return [name for name, chosen in on.items() if chosen]


def sample_kind(sample: dict[str, Any]) -> str:
    """What a sample's (or a dataset entry's) annotation is for augmentation: 'detection' (boxes),
    'segmentation' (a label image or its file), 'ocr_recognition' (a word) or 'classification'
    (image_label_id / image_label_ids, or no label)."""
    if _has_boxes(sample):
        return "detection"
    if "word" in sample:
        return "ocr_recognition"
    if "segmentation_image" in sample or "segmentation_file_name" in sample:
        return "segmentation"
    return "classification"


_ANNOTATION_OF = {"detection": "bbox_* keys", "segmentation": "a segmentation_image", "ocr_recognition": "a word"}


def _check_samples(samples: list[dict[str, Any]], settings: dict[str, Any], enabled: list[str],
                   classification_only: bool) -> None:
    for index, sample in enumerate(samples):
        if "image" not in sample:
            raise DLSampleError(f"sample {index}: missing key 'image' (keys present: {sorted(map(str, sample))})")
        kind = sample_kind(sample)
        for key in AUGMENT_CLASSIFICATION_ONLY:
            if classification_only and key in enabled and kind != "classification":
                raise DLSampleError(
                    f"augment_dl_samples, gen_param key {key!r}: applies to classification samples only "
                    f"(image_label_id / image_label_ids), as in HALCON; sample {index} is a {kind} sample "
                    f"(it has {_ANNOTATION_OF[kind]})")
        if kind == "ocr_recognition" and {"mirror", "rotate"} & set(enabled):
            raise DLSampleError(f"augment_dl_samples, gen_param keys 'mirror' / 'rotate': sample {index} is a word "
                                f"(key 'word'); mirrored or turned it would no longer read as its label")
        if "crop_pixel" in enabled:
            height, width = np.asarray(sample["image"]).shape[:2]
            if settings["crop_pixel"] >= min(height, width):
                raise DLSampleError(f"augment_dl_samples, gen_param key 'crop_pixel': expected fewer pixels than "
                                    f"the image's smaller side, got {settings['crop_pixel']} for sample {index} "
                                    f"of size {height} x {width}")


def _augment_one(sample: dict[str, Any], method: str, settings: dict[str, Any],
                 rng: np.random.Generator) -> dict[str, Any]:
    """``sample`` changed by one augmentation ``method`` (a HALCON key) with the checked ``settings``."""
    height, width = np.asarray(sample["image"]).shape[:2]
    value = settings[method]
    oriented = (bool(settings["ignore_direction"]), settings["class_ids_no_orientation"])
    if method == "mirror":
        chosen = ""
        while not chosen:
            chosen = "".join(axis for axis in value if rng.uniform() < 1 / len(value))
        return mirror(sample, "r" in chosen, "c" in chosen, *oriented)
    if method == "rotate":  # quarter turns: 1..3 (90, square images) or 2 (180, or not square)
        return rotate(sample, int(rng.integers(1, 4)) if value == 90 and height == width else 2, *oriented)
    image = np.asarray(sample["image"], np.float32)
    if method == "brightness_variation":
        return {**sample, "image": image + np.float32(rng.uniform(-value, value))}
    if method == "contrast_variation":
        factor = np.float32(rng.uniform(1 - value, 1 + value))
        return {**sample, "image": (image - image.mean()) * factor + image.mean()}
    if method in ("crop_percentage", "crop_pixel"):
        if method == "crop_percentage":
            rows, cols = max(1, round(height * value / 100)), max(1, round(width * value / 100))
        else:
            rows, cols = height - int(value), width - int(value)
        top, left = int(rng.integers(0, height - rows + 1)), int(rng.integers(0, width - cols + 1))
        return crop(sample, top, left, rows, cols)
    if method == "brightness_variation_spot":  # peak * exp(-d^2 / (2 sigma^2)), d from a random centre
        peak = rng.uniform(-value, value)
        centre_r, centre_c = rng.uniform(-0.5, height - 0.5), rng.uniform(-0.5, width - 0.5)
        sigma = rng.uniform(0.5, 1.0) * width
        distance = (np.arange(height)[:, None] - centre_r) ** 2 + (np.arange(width)[None, :] - centre_c) ** 2
        spot = (peak * np.exp(-distance / (2 * sigma ** 2))).astype(np.float32)
        return {**sample, "image": image + (spot[:, :, None] if image.ndim == 3 else spot)}
    if method == "saturation_variation":  # the deviation from each pixel's grey value (channel mean) scaled
        factor = np.float32(rng.uniform(1 - value, 1 + value))
        if image.ndim != 3 or image.shape[2] != 3:
            return dict(sample)  # a grey image has no saturation
        grey = image.mean(axis=2, keepdims=True)
        return {**sample, "image": (grey + (image - grey) * factor).astype(np.float32)}
    if method == "rotate_range":
        return {**sample, "image": rotate_by_angle(image, int(rng.integers(-int(value), int(value) + 1)))}
    raise AssertionError(method)


def _deprecated_form(gen_param: Any, seed: Any, old: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(settings, seed) of the old keyword form ``augment_dl_samples(samples, seed, mirror_axes=..., ...)``
    with its old defaults, after a DeprecationWarning naming each old keyword's HALCON key; errors name
    the keyword the caller used."""
    if isinstance(gen_param, (int, np.integer, np.random.Generator)):
        if isinstance(seed, np.random.Generator) or seed not in (None, 0):  # 0: the former default
            raise DLSampleError(f"augment_dl_samples: the seed came twice: {_got(gen_param)} as second "
                                f"argument and seed={_got(seed)}")
        seed = gen_param
    elif gen_param is not None:
        raise DLSampleError(f"augment_dl_samples: expected either gen_param (a dict of HALCON keys) or the "
                            f"deprecated keywords {', '.join(old)}, got both")
    settings = {key: old.get(name, default) for name, (key, default) in DEPRECATED_AUGMENT_KEYWORDS.items()}
    if settings["mirror"] == "":
        settings["mirror"] = "off"
    replaced = ", ".join(f"{name} -> {key!r}" for name, (key, _) in DEPRECATED_AUGMENT_KEYWORDS.items())
    warnings.warn("augment_dl_samples(samples, seed, mirror_axes=..., rotate_step=..., ...) is deprecated: pass "
                  "HALCON's gen_param dict, augment_dl_samples(samples, gen_param, seed), whose methods are "
                  f"all off unless named. Old keyword -> HALCON key: {replaced} (mirror_axes '' -> 'off'). "
                  f"HALCON's 'crop_percentage' applies to classification samples only. This call equals "
                  f"gen_param={settings}", DeprecationWarning, stacklevel=3)
    try:
        return check_augment_param(settings), seed
    except DLSampleError as error:  # name the keyword the caller used
        message = str(error)
        for name, (key, _) in DEPRECATED_AUGMENT_KEYWORDS.items():
            if name != key:
                message = message.replace(f"key {key!r}", f"{name} (HALCON key {key!r})")
        raise DLSampleError(message) from None


def augment_dl_samples(samples: Sequence[dict[str, Any]], gen_param: dict[str, Any] | int | np.random.Generator
                       | None = None, seed: int | np.random.Generator | None = None, *,
                       augmentation_percentage: float | None = None, mirror_axes: str | None = None,
                       rotate_step: int | None = None, brightness_variation: float | None = None,
                       contrast_variation: float | None = None,
                       crop_percentage: float | None = None) -> list[dict[str, Any]]:
    """Randomly changed copies of preprocessed samples: HALCON's ``augment_dl_samples(DLSampleBatch,
    GenParam)`` with HALCON's keys and defaults.

    ``gen_param`` is a dict of HALCON keys (see :data:`AUGMENT_DEFAULTS`). Every method is off
    unless named: with only ``augmentation_percentage`` every sample comes back unchanged.

    - ``'augmentation_percentage'`` (50, 0..100): the chance in % that a sample is augmented; an
      augmented sample gets exactly one method, drawn uniformly from the enabled ones;
    - ``'mirror'`` ('off'; 'r', 'c' or 'rc'): mirror along a random non-empty subset of the axes
      ('r' rows: upside down, 'c' columns: left-right);
    - ``'rotate'`` (0; 90 or 180): turn by a random multiple of the step (a non-square image turns by
      180 degrees only);
    - ``'brightness_variation'`` (0, 0..255): add a uniform offset in [-v, v] (in the model's value
      units);
    - ``'brightness_variation_spot'`` (0, 0..255): add a Gaussian spot with a random centre, sigma
      uniform in 0.5..1.0 x the image width and a peak uniform in [-v, v];
    - ``'contrast_variation'`` (0, 0..1): scale the image's deviation from its mean by a uniform
      factor in [1 - v, 1 + v];
    - ``'saturation_variation'`` (0, 0..1): scale each pixel's deviation from its grey value (the
      channel mean) by a uniform factor in [1 - v, 1 + v]; 3-channel images only (no change to a
      1-channel image);
    - classification samples only (``image_label_id`` / ``image_label_ids``; samples with boxes or a
      ``segmentation_image`` raise a :class:`DLSampleError`), as in HALCON:
      ``'crop_percentage'`` (100 = off, 1..100): crop to that % of each side at a random offset and
      resize back; ``'crop_pixel'`` (0 = off): crop to (W - p) x (H - p) at a random offset and resize
      back; ``'rotate_range'`` (0 = off, 0..180): turn by a random integer number of degrees in
      [-r, r] about the image centre (bilinear, border replicated, see :func:`rotate_by_angle`).

    Boxes, label images and weight images follow every geometric method; oriented boxes (``bbox_row``,
    ..., ``bbox_phi``) exactly, with HALCON's rectangle2 keys ``'ignore_direction'`` (False: phi in
    (-pi, pi]; True: in (-pi/2, pi/2]) and ``'class_ids_no_orientation'`` ([]: those classes' boxes
    are kept axis-parallel). Unknown keys and bad
    values raise a :class:`DLSampleError` naming the key (:func:`check_augment_param`). ``seed`` is
    an int or a NumPy Generator; the same seed gives the same result. ``seed=None`` (the default) uses
    ``get_system('seed_rand')`` (42 unless set; the former default was ``seed=0``: pass it for the
    results of earlier versions). The input is left as it was.

    Deprecated keyword form: ``augment_dl_samples(samples, seed, augmentation_percentage=50,
    mirror_axes='rc', rotate_step=90, brightness_variation=20, contrast_variation=0.2,
    crop_percentage=80)`` (an int or Generator as second argument, or any of these keywords) still
    works with these old defaults (every method on; the crop applies to every sample type) and
    gives a ``DeprecationWarning``. HALCON keys replacing them: ``mirror_axes`` -> ``'mirror'``
    ('' -> 'off'), ``rotate_step`` -> ``'rotate'``, the other four keep their names as keys.
    """
    old = {name: value for name, value in (("augmentation_percentage", augmentation_percentage),
                                           ("mirror_axes", mirror_axes), ("rotate_step", rotate_step),
                                           ("brightness_variation", brightness_variation),
                                           ("contrast_variation", contrast_variation),
                                           ("crop_percentage", crop_percentage)) if value is not None}
    old_form = bool(old) or isinstance(gen_param, (int, np.integer, np.random.Generator))
    if old_form:
        settings, seed = _deprecated_form(gen_param, seed, old)
    else:
        settings = check_augment_param(gen_param)  # type: ignore[arg-type]
    samples = check_sample_list(samples, "augment_dl_samples")
    enabled = _enabled_methods(settings)
    _check_samples(samples, settings, enabled, classification_only=not old_form)
    seed = system.seed(seed)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    result = []
    for sample in samples:
        if not enabled or rng.uniform(0, 100) >= settings["augmentation_percentage"]:
            result.append(dict(sample))
            continue
        method = enabled[int(rng.integers(len(enabled)))]
        result.append(_augment_one(sample, method, settings, rng))
    return result
