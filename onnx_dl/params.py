"""The model parameters: one spec table with HALCON's names, types, defaults and valid ranges.

:data:`SPECS` holds the parameters every model type has; each model type adds its own
(``PARAMS`` of its module, found through :mod:`onnx_dl.model_type`). ``coerce(name, value,
model_type)`` turns a user value into the stored form or raises a :class:`DLParamError`; the
cross-parameter rules (lengths of class lists, the type's own rules) live in
:func:`check_consistent`. Values are plain Python scalars and lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import model_type as types
from .errors import DLParamError
from .solvers import SOLVERS


@dataclass(frozen=True)
class ParamSpec:
    """One model parameter: its kind, default and range check."""

    name: str
    kind: str  # 'int' | 'float' | 'bool' | 'str' | '<kind>_list' | 'str_dict' | 'float_or_auto' ('auto' or a float)
    default: Any
    doc: str
    check: Callable[[Any], str | None] = lambda value: None  # returns what is wrong, or None
    settable: bool = True


def at_least(low: float) -> Callable[[Any], str | None]:
    """Check: v >= low."""
    return lambda v: None if v >= low else f"a value >= {low}"


def above(low: float) -> Callable[[Any], str | None]:
    """Check: v > low."""
    return lambda v: None if v > low else f"a value > {low}"


def unit_interval(v: float) -> str | None:
    """Check: v in [0, 1)."""
    return None if 0.0 <= v < 1.0 else "a value in [0, 1)"


def closed_unit_interval(v: float) -> str | None:
    """Check: v in [0, 1]."""
    return None if 0.0 <= v <= 1.0 else "a value in [0, 1]"


def one_of(*choices: str) -> Callable[[Any], str | None]:
    """Check: v is one of ``choices``."""
    return lambda v: None if v in choices else f"one of {list(choices)}"


def registered_type(v: str) -> str | None:
    """Check: v names a registered model type."""
    return None if v in types.names() else f"one of {types.names()}"


def unique_ids(v: list[int]) -> str | None:
    """Check: a non-empty list of unique class ids >= 0."""
    if not v:
        return "at least one class id"
    if len(set(v)) != len(v):
        return "unique class ids"
    return None if min(v) >= 0 else "class ids >= 0"


def nonnegative_ids(v: list[int]) -> str | None:
    """Check: class ids >= 0 (the list may be empty)."""
    return None if all(i >= 0 for i in v) else "class ids >= 0"


def class_weights(v: list[float]) -> str | None:
    """Check: a non-empty list of weights >= 0."""
    return None if v and min(v) >= 0.0 else "a non-empty list of weights >= 0"


def positive_values(v: list[float]) -> str | None:
    """Check: a non-empty list of values > 0."""
    return None if v and min(v) > 0.0 else "a non-empty list of values > 0"


def momentum_or_auto(v: float | str) -> str | None:
    """Check: 'auto' or a value in [0, 1)."""
    return None if v == "auto" or (not isinstance(v, str) and 0.0 <= v < 1.0) else "'auto' or a value in [0, 1)"


RESERVED_METADATA_PREFIX = "onnx_dl"  # the ONNX metadata keys of onnx_dl.serialization start with it
# The layout version of the files onnx_dl.serialization writes (its FORMAT_VERSION); kept here so that the
# parameter 'min_version' reads it without the model layer importing serialization.
FORMAT_VERSION = 1


def string_dict(v: dict[str, str]) -> str | None:
    """Check: no key starts with ``onnx_dl`` (the library's own metadata keys)."""
    if any(key.startswith(RESERVED_METADATA_PREFIX) for key in v):
        return f"keys that do not start with {RESERVED_METADATA_PREFIX!r} (reserved for the library's own metadata)"
    return None


# Names HALCON scripts pass that have no effect here; set_dl_model_param stores them, get returns them.
NO_OP_DOC = "accepted for HALCON scripts; stored and returned, no effect in onnx_dl: "

SPECS: dict[str, ParamSpec] = {
    s.name: s
    for s in [
        ParamSpec("type", "str", None, "model type (read-only; onnx_dl.model_type)", registered_type, settable=False),
        ParamSpec("runtime", "str", "cpu", "execution device: 'cpu' or 'gpu' (CUDA)", one_of("cpu", "gpu")),
        ParamSpec("batch_size", "int", 8, "images per forward/backward pass", at_least(1)),
        ParamSpec("batch_size_multiplier", "int", 1, "chunks of batch_size per weight update", at_least(1)),
        ParamSpec("learning_rate", "float", 0.001, "step size of the solver", above(0.0)),
        ParamSpec("momentum", "float", 0.9, "SGD momentum mu in v = mu*v - lr*g", unit_interval),
        ParamSpec("solver_type", "str", "sgd", "'sgd' (with momentum) or 'adam' (onnx_dl.solvers)", one_of(*SOLVERS)),
        ParamSpec("adam_beta1", "float", 0.9, "Adam decay of the first moment", unit_interval),
        ParamSpec("adam_beta2", "float", 0.999, "Adam decay of the second moment", unit_interval),
        ParamSpec("adam_epsilon", "float", 1e-8, "Adam epsilon, added to the root of the second moment", above(0.0)),
        ParamSpec("weight_prior", "float", 0.0, "L2 factor alpha: loss += alpha/2 * sum(w^2), biases excluded", at_least(0.0)),
        ParamSpec("class_ids", "int_list", None, "class ids in output order", unique_ids),
        ParamSpec("class_names", "str_list", None, "one name per class id"),
        ParamSpec("num_classes", "int", None, "number of classes (read-only, from class_ids)", settable=False),
        ParamSpec("class_weights", "float_list", None, "loss weight per class (default 1.0 each, >= 0); detection: "
                  "focal-loss alpha per class (default 0.25 each, in [0, 1])", class_weights),
        ParamSpec("image_width", "int", None, "network input width", at_least(1)),
        ParamSpec("image_height", "int", None, "network input height", at_least(1)),
        ParamSpec("image_num_channels", "int", None, "network input channels (fixed by the first layer)", at_least(1),
                  settable=False),
        ParamSpec("image_dimensions", "int_list", None, "[width, height, channels]"),
        ParamSpec("image_range_min", "float", -127.0, "lowest input value the network expects"),
        ParamSpec("image_range_max", "float", 128.0, "highest input value the network expects"),
        ParamSpec("num_trainable_params", "int", None, "number of trained weights (read-only)", settable=False),
        ParamSpec("summary", "str_list", None, "one line per ONNX node of the inference network, in graph order: "
                  "'<name> <op> <output shape per image> <#params>' (the elements of the trained weights the "
                  "node reads first; then '(frozen <n>)' when n of them are frozen), then a 'total: ...' line "
                  "(read-only; onnx_dl.summary.layer_summary)", settable=False),
        ParamSpec("freeze_backbone", "bool", False, "keep every weight but the score layer's fixed"),
        ParamSpec("frozen_layers", "str_list", [], "weights kept fixed: initializer names or prefixes ending in '*'"),
        # -- HALCON names of issue 17 (gap 8) --
        ParamSpec("meta_data", "str_dict", {}, "user key/value strings, written to the ONNX file's metadata_props "
                  "(one entry per key) and read back from them", string_dict),
        ParamSpec("layer_names", "str_list", None, "the node names of the inference network in graph order (a node "
                  "without a name: its first output's), as in 'summary' (read-only)", settable=False),
        ParamSpec("input_dimensions", "int_list", None, "[width, height, channels] of the network input (read-only)",
                  settable=False),
        ParamSpec("image_size", "int_list", None, "[width, height]: image_width and image_height in one list"),
        ParamSpec("gpu", "int", 0, "CUDA device index used with runtime 'gpu' (ONNX Runtime's provider option "
                  "device_id)", at_least(0)),
        ParamSpec("device", "int", None, "the same CUDA device index as 'gpu' (HALCON: a device handle)", at_least(0)),
        ParamSpec("runtime_init", "str", None, "set 'immediately' to build the training and inference sessions now "
                  "(set only)", one_of("immediately")),
        ParamSpec("batchnorm_momentum", "float_or_auto", "auto", "momentum m of every batch norm's running statistics: "
                  "running = m * running + (1 - m) * batch statistic (the ONNX BatchNormalization convention); 'auto': "
                  "each node's own momentum attribute", momentum_or_auto),
        ParamSpec("precision", "str", "float32", "numeric precision of training and inference",
                  lambda v: None if v == "float32" else "'float32' (the only precision onnx_dl runs)"),
        ParamSpec("optimize_for_inference", "bool", False, "True drops the solver state and refuses training; False "
                  "allows training again from a fresh solver state"),
        ParamSpec("min_version", "str", None, "the onnx_dl file format version a reader needs "
                  "(FORMAT_VERSION, as a string; read-only)", settable=False),
        ParamSpec("enable_resizing", "bool", True, NO_OP_DOC + "the image size can always be changed (image_width, "
                  "image_height, image_size, image_dimensions) where the network accepts it"),
        ParamSpec("fuse_bn_relu", "bool", False, NO_OP_DOC + "ONNX Runtime fuses layers itself when it builds an "
                  "inference session"),
        ParamSpec("fuse_conv_relu", "bool", False, NO_OP_DOC + "ONNX Runtime fuses layers itself when it builds an "
                  "inference session"),
    ]
}

# Parameters that are stored in the model; the others are derived on read.
DERIVED = ("num_classes", "image_dimensions", "num_trainable_params", "summary", "layer_names", "input_dimensions",
           "image_size", "device", "runtime_init", "min_version")
SET_ONLY = ("runtime_init",)  # no value to read back: get_dl_model_param refuses them
# Names that set stored parameters of other names: fixed (FIXED_AFTER_CREATION) when any of those is.
SETS: dict[str, tuple[str, ...]] = {"image_dimensions": ("image_width", "image_height"),
                                    "image_size": ("image_width", "image_height"), "device": ("gpu",)}



def type_specs(model_type: str) -> dict[str, ParamSpec]:
    """The parameters of a ``model_type`` model: the common ones and the type's own."""
    return {**SPECS, **{s.name: s for s in types.get(model_type).PARAMS}}


def training_state(model_type: str) -> tuple[str, ...]:
    """Read-only parameters that training steps change (a detector's positive-anchor average): written
    with the solver state (``write_dl_model(..., include_solver_state=False)`` leaves them out, so
    training restarts from the default)."""
    return tuple(types.get(model_type).TRAINING_STATE)


def spec(name: str, model_type: str) -> ParamSpec:
    """The spec of ``name`` for a model of ``model_type``; raise for unknown or foreign names."""
    specs = type_specs(model_type)
    if isinstance(name, str) and name in specs:
        return specs[name]
    known = set(SPECS).union(*({s.name for s in t.PARAMS} for t in types.registered()))
    if not isinstance(name, str) or name not in known:
        raise DLParamError(f"unknown model parameter {name!r}; known: {', '.join(sorted(known))}")
    raise DLParamError(f"parameter {name!r} does not apply to a {model_type} model")


def settable_spec(name: str, model_type: str) -> ParamSpec:
    """The spec of ``name`` if ``set_dl_model_param`` may change it; raise for read-only names and for
    architecture parameters fixed when the model was created."""
    found = spec(name, model_type)
    if not found.settable:
        raise DLParamError(f"parameter {name!r} is read-only")
    fixed = types.get(model_type).FIXED_AFTER_CREATION
    if name in fixed or any(other in fixed for other in SETS.get(name, ())):
        raise DLParamError(f"parameter {name!r} of a {model_type} model is fixed when the model is created "
                           f"(create_dl_model_{model_type}); create a new model to change it")
    return found


def _string_dict(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise DLParamError(f"parameter {name!r}: expected a dict of str -> str, got {value!r} ({type(value).__name__})")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise DLParamError(f"parameter {name!r}: expected a dict of str -> str, got key {key!r} "
                               f"({type(key).__name__}) with value {item!r} ({type(item).__name__})")
    return dict(value)


def _scalar(name: str, kind: str, value: Any) -> Any:
    if kind == "float_or_auto":
        if isinstance(value, str):
            if value == "auto":
                return value
            raise DLParamError(f"parameter {name!r}: expected 'auto' or a number, got {value!r}")
        return _scalar(name, "float", value)
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
    elif found.kind == "str_dict":
        result = _string_dict(name, value)
    else:
        result = _scalar(name, found.kind, value)
    problem = types.get(model_type).PARAM_CHECKS.get(name, found.check)(result)
    if problem is not None:
        raise DLParamError(f"parameter {name!r}: expected {problem}, got {value!r}")
    return result


def defaults(model_type: str) -> dict[str, Any]:
    """The stored parameters of a fresh model of ``model_type`` (model-specific ones are None)."""
    return {
        s.name: (type(s.default)(s.default) if isinstance(s.default, (list, dict)) else s.default)
        for s in type_specs(model_type).values()
        if s.name not in DERIVED
    }


def image_shape(params: dict[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) of the network input: one image of the batch the graph takes."""
    return params["image_num_channels"], params["image_height"], params["image_width"]


def class_weight_array(params: dict[str, Any]) -> np.ndarray:
    """The class weights as float32 (unless set: the type's default each, 1.0; a detector's focal alpha 0.25)."""
    weights = params.get("class_weights")
    default = types.get(params["type"]).DEFAULT_CLASS_WEIGHT
    return np.asarray(weights if weights is not None else [default] * len(params["class_ids"]), np.float32)


def check_consistent(params: dict[str, Any]) -> None:
    """Raise if the class lists disagree in length, the value range is empty or the type's own rules fail."""
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
    if params["image_range_min"] >= params["image_range_max"]:
        raise DLParamError(
            f"parameters 'image_range_min' < 'image_range_max' expected, got "
            f"{params['image_range_min']} and {params['image_range_max']}"
        )
    types.get(params["type"]).check_params(params)
