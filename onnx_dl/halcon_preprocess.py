"""HALCON's preprocessing procedures: ``create_dl_preprocess_param`` (and ``_from_model``), ``preprocess_dl_samples``
with a DLPreprocessParam dict, ``gen_dl_samples`` with key restriction, ``preprocess_dl_dataset`` and
``read_dl_samples``.

The resizing, channel conversion and box handling are :mod:`onnx_dl.preprocess`'s; this module adds
what HALCON's procedures decide around them:

- **Value scaling** (``normalization_type``): ``'none'`` rescales *byte* images only (uint8 arrays:
  v' = v * (max - min) / 255 + min, so 0..255 -> -127..128 with HALCON's range); images of any other
  dtype keep their values. ``'all_channels'`` / ``'first_channel'``: min-max stretches into the range
  (:func:`onnx_dl.preprocess.normalize`). ``'constant_values'``: v' = (v - mean_c) / deviation_c with
  ``mean_values_normalization`` / ``deviation_values_normalization`` (gen_param; default ImageNet's
  (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375)).
- **Domain** (``domain_handling``): a sample may carry ``'domain'``, the region of interest of its raw
  image, either a box ``[row1, col1, row2, col2]`` of integer pixel indices, both ends included
  (HALCON's ``gen_rectangle1``), or a boolean (H, W) mask. ``'full_domain'`` ignores it;
  ``'crop_domain'`` crops the image, ``segmentation_image`` and ``weight_image`` to the domain's
  bounding box first, and clips boxes to [row1 - 0.5, row2 + 0.5] x [col1 - 0.5, col2 + 0.5] and moves
  them by (row1, col1) (boxes left without area are dropped); a sample without ``'domain'`` keeps its
  full image. ``'keep_domain'`` is HALCON's for anomaly detection models only, which onnx_dl does not
  have: it is refused. The preprocessed sample has no ``'domain'`` key.
- **Background** (segmentation): every id of ``class_ids_background`` in ``segmentation_image`` becomes
  ``set_background_id`` before resizing.

HALCON differences kept on purpose: ``image_range_min/max`` of classification and detection are not
forced to -127 / 128 (onnx_dl trains foreign networks that expect other ranges, e.g. ImageNet's).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import dataset as ds
from . import model_type, rotated_boxes
from .boxes import BOX_KEYS, LABEL_KEY
from .errors import DLDatasetError, DLParamError, DLSampleError
from .samples import is_int, is_number
from .preprocess import IMAGENET_DEVIATION, IMAGENET_MEAN, NORMALIZATION_TYPES, box_array, normalize, set_boxes
from .preprocess import preprocess_dl_samples as preprocess_for_model
from .samples import check_sample_list, describe

DOMAIN_HANDLINGS = ("full_domain", "crop_domain", "keep_domain")
PREPROCESS_KEYS = ("model_type", "image_width", "image_height", "image_num_channels", "image_range_min",
                   "image_range_max", "normalization_type", "domain_handling", "ignore_class_ids",
                   "set_background_id", "class_ids_background")
CONSTANT_VALUES_KEYS = ("mean_values_normalization", "deviation_values_normalization")  # 'constant_values' only
PREPROCESS_GEN_PARAMS = (*CONSTANT_VALUES_KEYS, "instance_type", "ignore_direction", "class_ids_no_orientation")
INSTANCE_TYPES = ("rectangle1", "rectangle2")
ORIENTATION_KEYS = ("ignore_direction", "class_ids_no_orientation")  # rectangle2 only
DOMAIN_KEY = "domain"
RESTRICT_KEYS = {  # HALCON's RestrictKeysDLSample -> the annotation keys copied (None: all)
    "off": None, "image_only": (), "classification": ("image_label_id",),
    "multi_label_classification": ("image_label_ids",), "detection": (*BOX_KEYS, *rotated_boxes.BOX_KEYS, LABEL_KEY),
    "segmentation": ("segmentation_image",),
}
ENTRY_KEYS = {"image_label_id": "image_label_id", "image_label_ids": "image_label_ids",
              "segmentation_image": "segmentation_file_name",
              **{k: k for k in (*BOX_KEYS, *rotated_boxes.BOX_KEYS, LABEL_KEY)}}
SAMPLE_DIR = "samples"
DATASET_FILE = "dl_dataset.json"


# --- the DLPreprocessParam dict ------------------------------------------------------------------

def create_dl_preprocess_param(model_type_name: str, image_width: int, image_height: int, image_num_channels: int,
                               image_range_min: float, image_range_max: float, normalization_type: str = "none",
                               domain_handling: str = "full_domain", ignore_class_ids: Sequence[int] = (),
                               set_background_id: int | Sequence[int] = (), class_ids_background: Sequence[int] = (),
                               gen_param: dict[str, Any] | None = None) -> dict[str, Any]:
    """HALCON's ``create_dl_preprocess_param``: a checked DLPreprocessParam dict with the keys
    :data:`PREPROCESS_KEYS` (``set_background_id``: the id, or ``[]`` for none) plus the gen_param keys
    given (:data:`PREPROCESS_GEN_PARAMS`, ``'constant_values'`` only). Every problem is named in one
    :class:`DLParamError`."""
    param = {"model_type": model_type_name, "image_width": image_width, "image_height": image_height,
             "image_num_channels": image_num_channels, "image_range_min": image_range_min,
             "image_range_max": image_range_max, "normalization_type": normalization_type,
             "domain_handling": domain_handling, "ignore_class_ids": ignore_class_ids,
             "set_background_id": set_background_id, "class_ids_background": class_ids_background}
    if gen_param is not None and not isinstance(gen_param, dict):
        raise DLParamError(f"create_dl_preprocess_param: gen_param: expected a dict, got {describe(gen_param)}")
    param.update(gen_param or {})
    return check_preprocess_param(param, "create_dl_preprocess_param")


def create_dl_preprocess_param_from_model(model: Any, normalization_type: str = "none",
                                          domain_handling: str = "full_domain",
                                          set_background_id: int | Sequence[int] = (),
                                          class_ids_background: Sequence[int] = (),
                                          gen_param: dict[str, Any] | None = None) -> dict[str, Any]:
    """HALCON's ``create_dl_preprocess_param_from_model``: the DLPreprocessParam of ``model`` (a DLModel):
    its type, image size and channels, value range, (segmentation) ``ignore_class_ids`` and (an oriented-box
    detector) ``instance_type``, ``ignore_direction`` and ``class_ids_no_orientation``; ``gen_param`` given
    keys win."""
    from .operators import get_dl_model_param

    model_type_name = get_dl_model_param(model, "type")
    ignore = get_dl_model_param(model, "ignore_class_ids") if model_type_name == "segmentation" else []
    width, height, channels = get_dl_model_param(model, "image_dimensions")
    if model_type_name == "detection" and get_dl_model_param(model, "instance_type") == "rectangle2":
        gen_param = {"instance_type": "rectangle2", **{key: get_dl_model_param(model, key) for key in ORIENTATION_KEYS},
                     **(gen_param or {})}
    return create_dl_preprocess_param(model_type_name, width, height, channels,
                                      get_dl_model_param(model, "image_range_min"),
                                      get_dl_model_param(model, "image_range_max"), normalization_type,
                                      domain_handling, ignore, set_background_id, class_ids_background, gen_param)


def _int_list(value: Any) -> list[int] | None:
    """``value`` as a list of ints (one int counts as a list of one), None if it is not one."""
    if is_int(value):
        return [int(value)]
    if isinstance(value, (list, tuple, np.ndarray)) and all(is_int(v) for v in value):
        return [int(v) for v in value]
    return None


def check_preprocess_param(param: Any, what: str = "preprocess_dl_samples") -> dict[str, Any]:
    """``param`` checked as a DLPreprocessParam and normalised (id lists as lists of int, sizes as int,
    the range as float); unknown keys and bad values raise one :class:`DLParamError` naming each."""
    if not isinstance(param, dict):
        raise DLParamError(f"{what}: expected a DLPreprocessParam dict, got {describe(param)}")
    problems = [f"missing key {key!r}" for key in PREPROCESS_KEYS if key not in param]
    problems += [f"unknown key {key!r}: expected one of {', '.join(PREPROCESS_KEYS + PREPROCESS_GEN_PARAMS)}"
                 for key in param if key not in PREPROCESS_KEYS + PREPROCESS_GEN_PARAMS]
    if problems:
        raise DLParamError(f"{what}: " + "; ".join(problems))
    checked = dict(param)

    def bad(key: str, expected: str) -> None:
        problems.append(f"key {key!r}: expected {expected}, got {param[key]!r}")

    if param["model_type"] not in model_type.names():
        bad("model_type", f"one of {model_type.names()}")
    for key in ("image_width", "image_height", "image_num_channels"):
        if not is_int(param[key]) or param[key] < 1:
            bad(key, "an integer >= 1")
        else:
            checked[key] = int(param[key])
    low, high = param["image_range_min"], param["image_range_max"]
    if not (is_number(low) and is_number(high) and low < high):
        problems.append(f"keys 'image_range_min', 'image_range_max': expected two numbers with min < max, got "
                        f"{low!r} and {high!r}")
    else:
        checked["image_range_min"], checked["image_range_max"] = float(low), float(high)
    if param["normalization_type"] not in NORMALIZATION_TYPES:
        bad("normalization_type", f"one of {list(NORMALIZATION_TYPES)}")
    if param["domain_handling"] not in DOMAIN_HANDLINGS:
        bad("domain_handling", f"one of {list(DOMAIN_HANDLINGS)}")
    elif param["domain_handling"] == "keep_domain":
        bad("domain_handling", "'full_domain' or 'crop_domain' ('keep_domain' is HALCON's for anomaly detection "
                               "models only, which onnx_dl does not have)")
    for key in ("ignore_class_ids", "class_ids_background"):
        ids = _int_list(param[key])
        if ids is None:
            bad(key, "a list of integer class ids")
        else:
            checked[key] = ids
    background = _int_list(param["set_background_id"])
    if background is None or len(background) > 1:
        bad("set_background_id", "one integer class id or [] (none)")
    else:
        checked["set_background_id"] = background
        _check_background(param, checked, background, problems)
    _check_constant_values(param, checked, problems)
    _check_instance_type(param, checked, problems)
    if problems:
        raise DLParamError(f"{what}: " + "; ".join(problems))
    return checked


def _check_background(param: dict[str, Any], checked: dict[str, Any], background: list[int],
                      problems: list[str]) -> None:
    remapped = checked.get("class_ids_background")
    if not isinstance(remapped, list) or not (background or remapped):
        return
    if param["model_type"] != "segmentation":
        problems.append(f"keys 'set_background_id', 'class_ids_background': only for segmentation models (as in "
                        f"HALCON), got model_type {param['model_type']!r}")
    elif not background or not remapped:
        problems.append(f"keys 'set_background_id', 'class_ids_background': expected both or neither, got "
                        f"{param['set_background_id']!r} and {param['class_ids_background']!r}")
    elif set(background + remapped) & set(checked.get("ignore_class_ids") or []):
        problems.append(f"keys 'set_background_id', 'class_ids_background': expected ids not in ignore_class_ids "
                        f"{checked['ignore_class_ids']}, got {background} and {remapped}")


def _check_instance_type(param: dict[str, Any], checked: dict[str, Any], problems: list[str]) -> None:
    given = [k for k in ("instance_type", *ORIENTATION_KEYS) if k in param]
    if given and param["model_type"] != "detection":
        problems.append(f"keys {given}: only for detection models, got model_type {param['model_type']!r}")
        return
    if "instance_type" in param and param["instance_type"] not in INSTANCE_TYPES:
        problems.append(f"key 'instance_type': expected one of {list(INSTANCE_TYPES)}, got {param['instance_type']!r}")
    oriented = [k for k in ORIENTATION_KEYS if k in param]
    if oriented and param.get("instance_type") != "rectangle2":
        problems.append(f"keys {oriented}: only with instance_type 'rectangle2', got {param.get('instance_type')!r}")
    if "ignore_direction" in param and not isinstance(param["ignore_direction"], (bool, np.bool_)):
        problems.append(f"key 'ignore_direction': expected True or False, got {param['ignore_direction']!r}")
    if "class_ids_no_orientation" in param:
        ids = _int_list(param["class_ids_no_orientation"])
        if ids is None:
            problems.append(f"key 'class_ids_no_orientation': expected a list of integer class ids, got "
                            f"{param['class_ids_no_orientation']!r}")
        else:
            checked["class_ids_no_orientation"] = ids


def _check_constant_values(param: dict[str, Any], checked: dict[str, Any], problems: list[str]) -> None:
    given = [k for k in CONSTANT_VALUES_KEYS if k in param]
    if given and param["normalization_type"] != "constant_values":
        problems.append(f"keys {given}: only with normalization_type 'constant_values', got "
                        f"{param['normalization_type']!r}")
        return
    for key in given:
        values = param[key] if isinstance(param[key], (list, tuple, np.ndarray)) else [param[key]]
        channels = param["image_num_channels"]
        if not values or not all(is_number(v) for v in values) or len(values) not in (1, channels) \
                or (key.startswith("deviation") and min(values) <= 0):
            sign = " > 0" if key.startswith("deviation") else ""
            problems.append(f"key {key!r}: expected one number{sign} or one per channel ({channels}), got {param[key]!r}")
        else:
            checked[key] = [float(v) for v in values]


# --- preprocess_dl_samples -------------------------------------------------------------------------

def is_preprocess_param(param: Any) -> bool:
    """True for a DLPreprocessParam (it names a ``domain_handling``); a model's parameters do not."""
    return isinstance(param, dict) and "domain_handling" in param


def preprocess_dl_samples(samples: Sequence[dict[str, Any]], preprocess_param: dict[str, Any],
                          normalization_type: str | None = None, input_range: float | None = None) -> list[dict[str, Any]]:
    """HALCON's ``preprocess_dl_samples(DLSampleBatch, DLPreprocessParam)``: new samples preprocessed as the
    module docstring says (the input is left as it was).

    Given a model's parameters (``model.params``) instead of a DLPreprocessParam, this is the former call
    :func:`onnx_dl.preprocess.preprocess_dl_samples` (``normalization_type``, ``input_range``: that call's).
    """
    if not is_preprocess_param(preprocess_param):
        return preprocess_for_model(samples, preprocess_param, normalization_type or "none",
                                    255.0 if input_range is None else input_range)
    if normalization_type is not None or input_range is not None:
        raise DLParamError("preprocess_dl_samples: with a DLPreprocessParam the normalization is its "
                           "'normalization_type'; normalization_type / input_range apply to a model's parameters only")
    param = check_preprocess_param(preprocess_param)
    samples = check_sample_list(samples, "preprocess_dl_samples")
    return [_preprocess_one(sample, index, param) for index, sample in enumerate(samples)]


def _preprocess_one(sample: dict[str, Any], index: int, param: dict[str, Any]) -> dict[str, Any]:
    if param["domain_handling"] == "crop_domain" and sample.get(DOMAIN_KEY) is not None:
        sample = crop_to_domain(sample, index)
    else:
        sample = {k: v for k, v in sample.items() if k != DOMAIN_KEY}
    if param["set_background_id"] and sample.get("segmentation_image") is not None:
        labels = np.asarray(sample["segmentation_image"])
        remapped = np.where(np.isin(labels, param["class_ids_background"]), param["set_background_id"][0], labels)
        sample = {**sample, "segmentation_image": remapped.astype(labels.dtype)}
    kind = param["normalization_type"]
    image = sample.get("image")
    rescale = kind == "none" and isinstance(image, np.ndarray) and image.dtype == np.uint8
    try:
        if rescale or kind in ("all_channels", "first_channel"):
            return preprocess_for_model([sample], _model_params(param), kind, 255.0)[0]
        # values as they are (v * (1 - 0) / 1 + 0 is exact), then (for constant_values) the per-channel map
        done = preprocess_for_model([sample], _model_params(param, (0.0, 1.0)), "none", 1.0)[0]
        if kind == "constant_values":
            done["image"] = _constant_values(done["image"], param)
        return done
    except DLSampleError as error:  # it saw a batch of one: name the sample's place in the caller's batch
        message = str(error)
        raise DLSampleError(f"sample {index}{message[len('sample 0'):]}" if message.startswith("sample 0")
                            else f"sample {index}: {message}") from None


def _model_params(param: dict[str, Any], value_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """The model parameters :func:`onnx_dl.preprocess.preprocess_dl_samples` reads (no DLPreprocessParam keys)."""
    low, high = value_range or (param["image_range_min"], param["image_range_max"])
    return {"image_width": param["image_width"], "image_height": param["image_height"],
            "image_num_channels": param["image_num_channels"], "image_range_min": low, "image_range_max": high,
            **{key: param[key] for key in ORIENTATION_KEYS if key in param}}


def _constant_values(image: np.ndarray, param: dict[str, Any]) -> np.ndarray:
    """v' = (v - mean_c) / deviation_c (ImageNet's values by default, which need 3 channels)."""
    if "mean_values_normalization" not in param and "deviation_values_normalization" not in param:
        return normalize(image if image.ndim == 3 else image[:, :, None], "constant_values", 0.0, 1.0)
    mean = np.array(param.get("mean_values_normalization", IMAGENET_MEAN), np.float32)
    deviation = np.array(param.get("deviation_values_normalization", IMAGENET_DEVIATION), np.float32)
    if image.ndim == 2:
        return (image - mean[0]) / deviation[0]
    return (image - mean) / deviation


# --- the domain -------------------------------------------------------------------------------------

def domain_box(sample: dict[str, Any], index: int) -> tuple[int, int, int, int]:
    """(row1, col1, row2, col2), both ends included, of the sample's ``'domain'`` (a box or a boolean mask)
    inside its raw image."""
    domain, image = sample[DOMAIN_KEY], np.asarray(sample.get("image"))
    height, width = image.shape[:2]
    array = np.asarray(domain)
    if array.dtype == np.bool_ and array.shape == (height, width):
        rows, cols = np.flatnonzero(array.any(axis=1)), np.flatnonzero(array.any(axis=0))
        if rows.size == 0:
            raise DLSampleError(f"sample {index} (image_id {sample.get('image_id')}), key 'domain': the mask is empty")
        return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])
    box = _int_list(list(array.reshape(-1))) if array.ndim == 1 and array.dtype.kind in "iu" else None
    if box is None or len(box) != 4 or not (0 <= box[0] <= box[2] < height and 0 <= box[1] <= box[3] < width):
        raise DLSampleError(f"sample {index} (image_id {sample.get('image_id')}), key 'domain': expected a box "
                            f"[row1, col1, row2, col2] of integer pixels with 0 <= row1 <= row2 < {height} and "
                            f"0 <= col1 <= col2 < {width}, or a boolean mask of shape {(height, width)}, got "
                            f"{describe(domain)}")
    return box[0], box[1], box[2], box[3]


def crop_to_domain(sample: dict[str, Any], index: int) -> dict[str, Any]:
    """The raw sample cut to the bounding box of its domain (image, label and weight images, boxes)."""
    row1, col1, row2, col2 = domain_box(sample, index)
    done = {k: v for k, v in sample.items() if k != DOMAIN_KEY}
    size = np.asarray(sample["image"]).shape[:2]
    for key in ("image", "segmentation_image", "weight_image"):
        if sample.get(key) is not None:
            plane = np.asarray(sample[key])
            if plane.shape[:2] != size:
                raise DLSampleError(f"sample {index} (image_id {sample.get('image_id')}), key {key!r}: expected "
                                    f"the raw image's size {size}, got shape {plane.shape}")
            done[key] = plane[row1:row2 + 1, col1:col2 + 1]
    if any(key in sample for key in rotated_boxes.BOX_KEYS):
        _crop_oriented_boxes(sample, done, row1, col1, row2, col2)
    elif any(key in sample for key in (*BOX_KEYS, LABEL_KEY)):
        low = np.array([row1, col1, row1, col1]) - 0.5
        high = np.array([row2, col2, row2, col2]) + 0.5
        moved = np.clip(box_array(sample), low, high) - np.array([row1, col1, row1, col1])
        set_boxes(done, moved, (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1]))
    return done


def _crop_oriented_boxes(sample: dict[str, Any], done: dict[str, Any], row1: int, col1: int, row2: int,
                         col2: int) -> None:
    """Oriented boxes whose centre lies in the domain box, moved by its origin (HALCON drops the others)."""
    row, col = (np.asarray(sample[key], np.float64).reshape(-1) for key in rotated_boxes.BOX_KEYS[:2])
    keep = (row >= row1 - 0.5) & (row <= row2 + 0.5) & (col >= col1 - 0.5) & (col <= col2 + 0.5)
    for key in rotated_boxes.BOX_KEYS:
        done[key] = np.asarray(sample[key], np.float32).reshape(-1)[keep]
    done[rotated_boxes.BOX_KEYS[0]] = (row[keep] - row1).astype(np.float32)
    done[rotated_boxes.BOX_KEYS[1]] = (col[keep] - col1).astype(np.float32)
    done[LABEL_KEY] = np.asarray(sample[LABEL_KEY]).reshape(-1)[keep]


# --- datasets ---------------------------------------------------------------------------------------

def gen_dl_samples(dataset: dict[str, Any], sample_indices: Sequence[int], restrict_keys_dlsample: str = "off",
                   gen_param: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """HALCON's ``gen_dl_samples(DLDataset, SampleIndices, RestrictKeysDLSample, GenParam)``: raw samples
    (:func:`onnx_dl.dataset.gen_dl_samples`; the images of 8-bit files as uint8, HALCON's byte images, which
    ``normalization_type`` 'none' rescales) with only ``image``, ``image_id`` and the annotation keys of
    ``restrict_keys_dlsample`` (:data:`RESTRICT_KEYS`: ``'off'`` all, ``'image_only'`` none; label files of
    other keys are not read). A sample lacking its restriction's annotation raises a :class:`DLDatasetError`
    unless gen_param ``{'ignore_missing_labels': True}``."""
    if restrict_keys_dlsample not in RESTRICT_KEYS:
        raise DLParamError(f"gen_dl_samples: restrict_keys_dlsample: expected one of {list(RESTRICT_KEYS)}, got "
                           f"{restrict_keys_dlsample!r}")
    gen_param = dict(gen_param or {})
    unknown = [key for key in gen_param if key != "ignore_missing_labels"]
    if unknown or not isinstance(gen_param.get("ignore_missing_labels", False), bool):
        raise DLParamError(f"gen_dl_samples: gen_param: expected only 'ignore_missing_labels' (True / False), got "
                           f"{gen_param!r}")
    wanted = RESTRICT_KEYS[restrict_keys_dlsample]
    if wanted is None:
        return ds.gen_dl_samples(dataset, sample_indices, keep_bytes=True)
    entry_keys = {ENTRY_KEYS[key] for key in wanted}
    entries = dataset["samples"]
    for index in sample_indices:
        if 0 <= int(index) < len(entries) and wanted and not entry_keys & set(entries[int(index)]) \
                and not gen_param.get("ignore_missing_labels", False):
            raise DLDatasetError(f"gen_dl_samples: sample {index} (image_id {entries[int(index)].get('image_id')}) "
                                 f"has no {restrict_keys_dlsample} annotation ({sorted(entry_keys)}); pass gen_param "
                                 f"{{'ignore_missing_labels': True}} to take it without")
    kept = {"image_file_name", "image_id", *entry_keys}
    restricted = dict(dataset, samples=[{k: v for k, v in entry.items() if k in kept} for entry in entries])
    return ds.gen_dl_samples(restricted, sample_indices, keep_bytes=True)


def preprocess_dl_dataset(dataset: dict[str, Any], data_directory: str | os.PathLike[str],
                          preprocess_param: dict[str, Any], gen_param: dict[str, Any] | None = None) -> dict[str, Any]:
    """HALCON's ``preprocess_dl_dataset``: every sample generated (:func:`gen_dl_samples`), preprocessed
    (:func:`preprocess_dl_samples`) and written, one at a time, to
    ``<data_directory>/samples/<image_id>_dlsample.npz`` (atomically); then the dataset gets ``dlsample_dir``
    (absolute), ``preprocess_param`` and per sample ``dlsample_file_name``, and is written to
    ``<data_directory>/dl_dataset.json``. Returns the dataset (also changed in place, as HALCON's).

    gen_param: ``'overwrite_files'`` (False: a sample file that exists already raises a
    :class:`DLDatasetError` before anything is written; True: replaced). Segmentation weight images are
    not generated here (HALCON does): see :func:`onnx_dl.segmentation.gen_weight_images`.
    """
    from .serialization import write_atomically

    param = check_preprocess_param(preprocess_param, "preprocess_dl_dataset")
    settings = {"overwrite_files": False, **(gen_param or {})}
    if set(settings) != {"overwrite_files"} or not isinstance(settings["overwrite_files"], bool):
        raise DLParamError(f"preprocess_dl_dataset: gen_param: expected only 'overwrite_files' (True / False), got "
                           f"{gen_param!r}")
    folder = Path(data_directory).resolve() / SAMPLE_DIR
    names = [f"{entry.get('image_id', index)}_dlsample.npz" for index, entry in enumerate(dataset["samples"])]
    if len(set(names)) != len(names):
        raise DLDatasetError("preprocess_dl_dataset: expected a unique image_id per sample (they name the files)")
    existing = [name for name in names if (folder / name).exists()]
    if existing and not settings["overwrite_files"]:
        raise DLDatasetError(f"preprocess_dl_dataset: {len(existing)} sample files exist in {str(folder)!r} (e.g. "
                             f"{existing[0]!r}); pass gen_param {{'overwrite_files': True}} to replace them")
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        raw = gen_dl_samples(dataset, [index], "off")
        write_atomically(folder / name, _sample_bytes(preprocess_dl_samples(raw, param)[0], index))
    for entry, name in zip(dataset["samples"], names):
        entry["dlsample_file_name"] = name
    dataset["dlsample_dir"] = str(folder)
    dataset["preprocess_param"] = param
    ds.write_dl_dataset(dataset, Path(data_directory).resolve() / DATASET_FILE)
    return dataset


def read_dl_samples(dataset: dict[str, Any], sample_indices: Sequence[int]) -> list[dict[str, Any]]:
    """HALCON's ``read_dl_samples``: the preprocessed samples ``sample_indices`` of a dataset that
    :func:`preprocess_dl_dataset` wrote, read back exactly (arrays with their dtype, ints, strings, lists)."""
    if "dlsample_dir" not in dataset:
        raise DLDatasetError("read_dl_samples: the dataset has no 'dlsample_dir': preprocess it with "
                             "preprocess_dl_dataset first")
    entries = dataset["samples"]
    result = []
    for index in sample_indices:
        if not is_int(index) or not 0 <= int(index) < len(entries):
            raise DLDatasetError(f"read_dl_samples: index {index!r} outside 0..{len(entries) - 1}")
        name = entries[int(index)].get("dlsample_file_name")
        if name is None:
            raise DLDatasetError(f"read_dl_samples: sample {index} has no 'dlsample_file_name'")
        path = Path(dataset["dlsample_dir"]) / name
        try:
            with np.load(path, allow_pickle=False) as stored:
                result.append(_sample_from(dict(stored)))
        except (OSError, ValueError, KeyError) as exc:
            raise DLDatasetError(f"read_dl_samples: cannot read sample file {str(path)!r}: {exc}") from exc
    return result


_KINDS = "__kinds__"  # per key: 'array', 'scalar' (a Python int / float / str / bool), 'list' or 'none'


def _sample_bytes(sample: dict[str, Any], index: int) -> bytes:
    """A sample as .npz bytes, with each value's Python kind recorded so that it reads back as it was."""
    arrays, kinds = {}, {}
    for key, value in sample.items():
        if key == _KINDS or not isinstance(key, str):
            raise DLSampleError(f"sample {index}: key {key!r}: expected a string key other than {_KINDS!r}")
        if value is None:
            kinds[key] = "none"
            continue
        if isinstance(value, np.ndarray):
            kinds[key], array = "array", value
        elif isinstance(value, (bool, int, float, str, np.generic)):
            kinds[key], array = ("array" if isinstance(value, np.generic) else "scalar"), np.asarray(value)
        elif isinstance(value, (list, tuple)):
            kinds[key], array = "list", np.asarray(value)
        else:
            array = None
        if array is None or array.dtype == object:
            raise DLSampleError(f"sample {index}, key {key!r}: expected an array, a number, a string or a list of "
                                f"numbers to write, got {describe(value)}")
        arrays[key] = array
    arrays[_KINDS] = np.asarray(json.dumps(kinds))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _sample_from(stored: dict[str, np.ndarray]) -> dict[str, Any]:
    kinds = json.loads(str(stored.pop(_KINDS)))
    sample: dict[str, Any] = {}
    for key, kind in kinds.items():
        if kind == "none":
            sample[key] = None
        elif kind == "scalar":
            sample[key] = stored[key].item()
        elif kind == "list":
            sample[key] = stored[key].tolist()
        else:
            sample[key] = stored[key] if stored[key].ndim else stored[key][()]
    return sample
