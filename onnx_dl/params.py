"""The model parameters: one spec table with HALCON's names, types, defaults and valid ranges.

``coerce(name, value, model_type)`` turns a user value into the stored form or raises a
:class:`DLParamError`; the cross-parameter rules (lengths of class lists) live in
:func:`check_consistent`. Values are plain Python scalars and lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DLParamError
from .solvers import SOLVERS

MODEL_TYPES = ("classification", "segmentation", "detection")
ALL = frozenset(MODEL_TYPES)
DETECTION = frozenset({"detection"})
FOCAL_ALPHA = 0.25  # default class weight of a detector: the focal loss's alpha (RetinaNet)


@dataclass(frozen=True)
class ParamSpec:
    """One model parameter: its kind, default, range check and the model types it applies to."""

    name: str
    kind: str  # 'int' | 'float' | 'bool' | 'str' | 'int_list' | 'float_list' | 'str_list'
    default: Any
    doc: str
    check: Callable[[Any], str | None] = lambda value: None  # returns what is wrong, or None
    types: frozenset[str] = ALL
    settable: bool = True


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"a value >= {low}"


def _above(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v > low else f"a value > {low}"


def _unit_interval(v: float) -> str | None:
    return None if 0.0 <= v < 1.0 else "a value in [0, 1)"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"one of {list(choices)}"


def _unique_ids(v: list[int]) -> str | None:
    if not v:
        return "at least one class id"
    if len(set(v)) != len(v):
        return "unique class ids"
    return None if min(v) >= 0 else "class ids >= 0"


def _class_weights(v: list[float]) -> str | None:
    return None if v and min(v) >= 0.0 else "a non-empty list of weights >= 0"


def _focal_alphas(v: list[float]) -> str | None:
    return None if v and 0.0 <= min(v) and max(v) <= 1.0 else "a non-empty list of focal alphas in [0, 1]"


def _closed_unit_interval(v: float) -> str | None:
    return None if 0.0 <= v <= 1.0 else "a value in [0, 1]"


def _positive_values(v: list[float]) -> str | None:
    return None if v and min(v) > 0.0 else "a non-empty list of values > 0"


def _axis_aligned(v: str) -> str | None:
    if v == "rectangle1":
        return None
    return "'rectangle1' (axis-aligned boxes; oriented 'rectangle2' boxes are not supported)"


def _ids(v: list[int]) -> str | None:
    return None if all(i >= 0 for i in v) else "class ids >= 0"


SPECS: dict[str, ParamSpec] = {
    s.name: s
    for s in [
        ParamSpec("type", "str", None, "model type (read-only)", _one_of(*MODEL_TYPES), settable=False),
        ParamSpec("runtime", "str", "cpu", "execution device: 'cpu' or 'gpu' (CUDA)", _one_of("cpu", "gpu")),
        ParamSpec("batch_size", "int", 8, "images per forward/backward pass", _at_least(1)),
        ParamSpec("batch_size_multiplier", "int", 1, "chunks of batch_size per weight update", _at_least(1)),
        ParamSpec("learning_rate", "float", 0.001, "step size of the solver", _above(0.0)),
        ParamSpec("momentum", "float", 0.9, "SGD momentum mu in v = mu*v - lr*g", _unit_interval),
        ParamSpec("solver_type", "str", "sgd", "'sgd' (with momentum) or 'adam' (onnx_dl.solvers)", _one_of(*SOLVERS)),
        ParamSpec("adam_beta1", "float", 0.9, "Adam decay of the first moment", _unit_interval),
        ParamSpec("adam_beta2", "float", 0.999, "Adam decay of the second moment", _unit_interval),
        ParamSpec("adam_epsilon", "float", 1e-8, "Adam epsilon, added to the root of the second moment", _above(0.0)),
        ParamSpec("weight_prior", "float", 0.0, "L2 factor alpha: loss += alpha/2 * sum(w^2), biases excluded", _at_least(0.0)),
        ParamSpec("class_ids", "int_list", None, "class ids in output order", _unique_ids),
        ParamSpec("class_names", "str_list", None, "one name per class id"),
        ParamSpec("num_classes", "int", None, "number of classes (read-only, from class_ids)", settable=False),
        ParamSpec("class_weights", "float_list", None, "loss weight per class (default 1.0 each, >= 0); detection: "
                  "focal-loss alpha per class (default 0.25 each, in [0, 1])", _class_weights),
        ParamSpec("ignore_class_ids", "int_list", [], "class ids whose pixels add no loss", _ids,
                  types=frozenset({"segmentation"})),
        ParamSpec("image_width", "int", None, "network input width", _at_least(1)),
        ParamSpec("image_height", "int", None, "network input height", _at_least(1)),
        ParamSpec("image_num_channels", "int", None, "network input channels (fixed by the first layer)", _at_least(1),
                  settable=False),
        ParamSpec("image_dimensions", "int_list", None, "[width, height, channels]"),
        ParamSpec("image_range_min", "float", -127.0, "lowest input value the network expects"),
        ParamSpec("image_range_max", "float", 128.0, "highest input value the network expects"),
        ParamSpec("num_trainable_params", "int", None, "number of trained weights (read-only)", settable=False),
        ParamSpec("freeze_backbone", "bool", False, "keep every weight but the score layer's fixed"),
        ParamSpec("frozen_layers", "str_list", [], "weights kept fixed: initializer names or prefixes ending in '*'"),
        # detection (create_dl_model_detection); the architecture ones are fixed after creation
        ParamSpec("backbone", "str", None, "the classifier the detector was built on (read-only)", types=DETECTION,
                  settable=False),
        ParamSpec("backbone_docking_layers", "str_list", [], "backbone tensors feeding the pyramid, one per backbone "
                  "level from min_level up (default: found by shape inference)", types=DETECTION),
        ParamSpec("min_level", "int", 2, "lowest pyramid level with heads; level L has stride 2**L", _at_least(1),
                  types=DETECTION),
        ParamSpec("max_level", "int", 4, "highest pyramid level with heads; image sides must be divisible by "
                  "2**max_level", _at_least(1), types=DETECTION),
        ParamSpec("anchor_num_subscales", "int", 3, "anchor sizes per level: 4 * 2**L * 2**(i / subscales)",
                  _at_least(1), types=DETECTION),
        ParamSpec("anchor_aspect_ratios", "float_list", [1.0, 2.0, 0.5], "anchor height / width ratios",
                  _positive_values, types=DETECTION),
        ParamSpec("capacity", "str", "medium", "width and depth of the pyramid and heads",
                  _one_of("low", "medium", "high"), types=DETECTION),
        ParamSpec("instance_type", "str", "rectangle1", "box type: 'rectangle1' (axis-aligned)", _axis_aligned,
                  types=DETECTION),
        ParamSpec("class_heads_weight", "float", 1.0, "factor of the focal loss of the class heads", _at_least(0.0),
                  types=DETECTION),
        ParamSpec("bbox_heads_weight", "float", 1.0, "factor of the Huber loss of the box heads", _at_least(0.0),
                  types=DETECTION),
        ParamSpec("min_confidence", "float", 0.5, "boxes scoring below this are dropped before NMS",
                  _closed_unit_interval, types=DETECTION),
        ParamSpec("max_overlap", "float", 0.5, "per-class NMS: a box whose IoU with a better one of its class "
                  "exceeds this is dropped", _closed_unit_interval, types=DETECTION),
        ParamSpec("max_overlap_class_agnostic", "float", 1.0, "NMS over all classes after the per-class NMS "
                  "(1.0: off)", _closed_unit_interval, types=DETECTION),
        ParamSpec("max_num_detections", "int", 100, "at most this many boxes per image", _at_least(1),
                  types=DETECTION),
        ParamSpec("positive_anchor_average", "float", 100.0, "running average of the positive anchors per training "
                  "step, the divisor of the focal and Huber losses (read-only; training state: 100 before the first "
                  "step, then 0.9 * average + 0.1 * max(positives of the step, 1))", _at_least(1.0), types=DETECTION,
                  settable=False),
    ]
}

# Checks that differ by model type: (name, model type) -> check replacing the spec's.
TYPE_CHECKS: dict[tuple[str, str], Callable[[Any], str | None]] = {("class_weights", "detection"): _focal_alphas}

# Parameters that shape the network: given at creation, refused by set_dl_model_param afterwards.
FIXED_AFTER_CREATION = {
    "detection": frozenset({"image_width", "image_height", "image_dimensions", "min_level", "max_level",
                            "anchor_num_subscales", "anchor_aspect_ratios", "capacity", "instance_type",
                            "backbone_docking_layers"}),
}

# Parameters that are stored in the model; the others are derived on read.
DERIVED = ("num_classes", "image_dimensions", "num_trainable_params")

# Training state kept as read-only parameters: changed by training steps, written with the solver state
# (``write_dl_model(..., include_solver_state=False)`` leaves them out, so training restarts from the default).
TRAINING_STATE = ("positive_anchor_average",)


def spec(name: str, model_type: str) -> ParamSpec:
    """The spec of ``name`` for a model of ``model_type``; raise for unknown or foreign names."""
    if not isinstance(name, str) or name not in SPECS:
        raise DLParamError(f"unknown model parameter {name!r}; known: {', '.join(sorted(SPECS))}")
    found = SPECS[name]
    if model_type not in found.types:
        raise DLParamError(f"parameter {name!r} does not apply to a {model_type} model")
    return found


def settable_spec(name: str, model_type: str) -> ParamSpec:
    """The spec of ``name`` if ``set_dl_model_param`` may change it; raise for read-only names and for
    architecture parameters fixed when the model was created."""
    found = spec(name, model_type)
    if not found.settable:
        raise DLParamError(f"parameter {name!r} is read-only")
    if name in FIXED_AFTER_CREATION.get(model_type, ()):
        raise DLParamError(f"parameter {name!r} of a {model_type} model is fixed when the model is created "
                           f"(create_dl_model_{model_type}); create a new model to change it")
    return found


def _scalar(name: str, kind: str, value: Any) -> Any:
    if kind == "bool":  # HALCON writes booleans as 'true' / 'false'
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if value in ("true", "false"):
            return value == "true"
        raise DLParamError(f"parameter {name!r}: expected True, False, 'true' or 'false', got {value!r}")
    if kind == "int":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise DLParamError(f"parameter {name!r}: expected an int, got {value!r} ({type(value).__name__})")
        return int(value)
    if kind == "float":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise DLParamError(f"parameter {name!r}: expected a number, got {value!r} ({type(value).__name__})")
        if not math.isfinite(float(value)):
            raise DLParamError(f"parameter {name!r}: expected a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise DLParamError(f"parameter {name!r}: expected a string, got {value!r} ({type(value).__name__})")
    return value


def coerce(name: str, value: Any, model_type: str) -> Any:
    """Validate ``value`` for parameter ``name`` and return it in stored form."""
    found = spec(name, model_type)
    if found.kind.endswith("_list"):
        if isinstance(value, np.ndarray):
            value = value.tolist() if value.ndim == 1 else value
        elif isinstance(value, (int, float, str, np.integer, np.floating)) and not isinstance(value, bool):
            value = [value]  # HALCON tuples of one element are plain values
        if not isinstance(value, (list, tuple)):
            raise DLParamError(f"parameter {name!r}: expected a list, got {value!r} ({type(value).__name__})")
        result: Any = [_scalar(name, found.kind[:-5], item) for item in value]
    else:
        result = _scalar(name, found.kind, value)
    problem = TYPE_CHECKS.get((name, model_type), found.check)(result)
    if problem is not None:
        raise DLParamError(f"parameter {name!r}: expected {problem}, got {value!r}")
    return result


def defaults(model_type: str) -> dict[str, Any]:
    """The stored parameters of a fresh model of ``model_type`` (model-specific ones are None)."""
    return {
        s.name: (list(s.default) if isinstance(s.default, list) else s.default)
        for s in SPECS.values()
        if model_type in s.types and s.name not in DERIVED
    }


def image_shape(params: dict[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) of the network input: one image of the batch the graph takes."""
    return params["image_num_channels"], params["image_height"], params["image_width"]


def class_weight_array(params: dict[str, Any]) -> np.ndarray:
    """The class weights as float32 (unless set: 1.0 each, for a detector the focal alpha 0.25 each)."""
    weights = params.get("class_weights")
    default = FOCAL_ALPHA if params.get("type") == "detection" else 1.0
    return np.asarray(weights if weights is not None else [default] * len(params["class_ids"]), np.float32)


def check_consistent(params: dict[str, Any]) -> None:
    """Raise if the class lists disagree in length or the value range is empty."""
    ids = params["class_ids"]
    if params.get("class_names") is not None and len(params["class_names"]) != len(ids):
        raise DLParamError(
            f"parameter 'class_names': expected {len(ids)} names (one per class id), got {len(params['class_names'])}"
        )
    weights = params.get("class_weights")
    if weights is not None and len(weights) != len(ids):
        raise DLParamError(
            f"parameter 'class_weights': expected {len(ids)} weights (one per class id), got {len(weights)}"
        )
    overlap = set(params.get("ignore_class_ids") or []) & set(ids)
    if overlap:
        raise DLParamError(f"parameter 'ignore_class_ids': expected ids that are not class_ids, got {sorted(overlap)} "
                           f"in both")
    if params["image_range_min"] >= params["image_range_max"]:
        raise DLParamError(
            f"parameters 'image_range_min' < 'image_range_max' expected, got "
            f"{params['image_range_min']} and {params['image_range_max']}"
        )
    if params.get("type") == "detection":
        _check_levels(params)


def _check_levels(params: dict[str, Any]) -> None:
    """A detector's levels are ordered and its image sides divisible by the coarsest stride."""
    low, high = params["min_level"], params["max_level"]
    if high < low:
        raise DLParamError(f"parameters 'min_level' <= 'max_level' expected, got {low} and {high}")
    stride = 2**high
    width, height = params.get("image_width"), params.get("image_height")
    if width is not None and height is not None and (width % stride or height % stride):
        raise DLParamError(f"a detector with max_level {high} needs image sides divisible by 2**{high} = {stride} "
                           f"(the stride of its coarsest level), got {width} x {height}")
