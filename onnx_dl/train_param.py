"""HALCON's training parameters: ``create_dl_train_param`` and what ``train_dl_model`` derives from them
(the index stream and seed pool, change strategies, serialisation strategies and their files).

The loop itself is :func:`onnx_dl.training.train_dl_model`. HALCON facts follow the procedure source
summarised in the reference sheet (``halcon-dl.md`` §5.8, tag [P]); where the sheet is silent the choice
is ours and says so.

Files of a serialisation strategy: ``<basename>.onnx`` (``write_dl_model``, solver state included) and
``<basename>_info.json`` (the train and evaluation infos, the train results and the loop state at that
iteration), both written atomically; ``train_dl_model(..., start_epoch='resume')`` continues from the
latest of them (:func:`latest_checkpoint`) bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import model_type
from . import params as P
from .errors import DLParamError
from .samples import is_int, is_number
from .operators import get_dl_model_param, set_dl_model_param
from .serialization import write_atomically, write_dl_model

GEN_PARAM_NAMES = ("evaluate", "augment", "change", "serialize", "display")
"""The ``GenParamName`` values of HALCON's ``create_dl_train_param`` (its anomaly key aside)."""

SERIALIZATION_TYPES = ("best", "final", "epochs", "interrupted")
"""'best': when the comparison value improves; 'final': after the last iteration; 'epochs': every
``epochs`` epochs (a number) or after each listed epoch (a list); 'interrupted' (ours, not HALCON's):
when the run is interrupted (Ctrl-C), at the exact step, so that ``start_epoch='resume'`` continues
it bit for bit."""

DEFAULT_SERIALIZATION = {"type": "best", "basename": "model_best"}  # HALCON's default [P]
NUM_SAMPLES_MEAN_LOSS = 1000  # mean_loss: the mean total_loss over the last ceil(1000 / batch) iterations [P]
UPDATE_INTERVAL_SECONDS = 2.0  # a train info at most this often (and after evaluations, and at the end) [P]
SEED_POOL_SCALE = 2**31 - 1  # the per-sample seeds: floor((2^31 - 1) * u), u uniform in [0, 1) [P]
INFO_FORMAT = 2  # 2: a 'stepped' checkpoint holds the step's losses unrecorded ('pending_step')
DISPLAY_DEFAULTS: dict[str, Any] = {"enabled": False, "selected_percentage_train_samples": 0, "log_dir": None}
"""``display_param``: ``enabled`` (the progress bar), ``selected_percentage_train_samples`` (the share of
the train split each evaluation also measures, for ``result_train``; HALCON's default is not in our
sheets, 0 here), ``log_dir`` (ours: the folder of ``log.csv`` and ``training.png``; None: none)."""


def create_dl_train_param(model: Any, num_epochs: float, evaluation_interval_epochs: float,
                          display_evaluation: bool | str, seed_rand: int | None | list[Any],
                          gen_param_names: list[str] | str | dict[str, Any] | None = None,
                          gen_param_values: list[Any] | Any = None) -> dict[str, Any]:
    """HALCON's ``create_dl_train_param(DLModelHandle, NumEpochs, EvaluationIntervalEpochs, EnableDisplay,
    RandomSeed, GenParamName, GenParamValue)``: the dict ``train_dl_model`` runs from.

    ``gen_param_names`` / ``gen_param_values``: parallel lists (a name may repeat: each ``'change'`` and
    ``'serialize'`` adds a strategy), or one dict ``{name: value}`` (a list value of ``'change'`` /
    ``'serialize'`` adds several). Names: ``'evaluate'`` (``evaluate_dl_model``'s gen_param),
    ``'augment'`` (``augment_dl_samples``' gen_param), ``'change'`` (``{model_param, initial_value,
    epochs, values[, scale_momentum_threshold]}``: from each ``epochs[k]`` on, ``model_param`` is
    ``values[k]``, before the first ``initial_value``, default the model's value now), ``'serialize'``
    (``{type, basename[, epochs]}``, :data:`SERIALIZATION_TYPES`; default ``'best'`` to ``model_best``)
    and ``'display'`` (keys of :data:`DISPLAY_DEFAULTS`). ``seed_rand`` None (or ``[]``): the
    ``'seed_rand'`` system setting when training starts. The keys returned are HALCON's: also
    ``update_interval_seconds`` (2), ``num_samples_mean_loss`` (1000), ``evaluation_comparison_keys``
    (the model type's main measure: ``top1_error``, ``mean_iou``, detection ``mean_ap``) and
    ``evaluate_before_train`` (False); they may be changed in the dict before training.
    """
    pairs = _gen_param_pairs(gen_param_names, gen_param_values)
    param: dict[str, Any] = {
        "num_epochs": num_epochs, "evaluation_interval_epochs": evaluation_interval_epochs,
        "evaluation_param": {}, "augmentation_param": {}, "change_strategies": [], "serialization_strategies": [],
        "seed_rand": None if isinstance(seed_rand, (list, tuple)) and not seed_rand else seed_rand,
        "display_param": dict(DISPLAY_DEFAULTS, enabled=display_evaluation in (True, "true")),
        "update_interval_seconds": UPDATE_INTERVAL_SECONDS, "num_samples_mean_loss": NUM_SAMPLES_MEAN_LOSS,
        "evaluation_comparison_keys": [model_type.get(model.params["type"]).MAIN_MEASURE],
        "evaluate_before_train": False,
    }
    for name, value in pairs:
        if name == "evaluate":
            param["evaluation_param"] = dict(value)
        elif name == "augment":
            param["augmentation_param"] = dict(value)
        elif name == "change":
            param["change_strategies"].append(_with_initial_value(dict(value), model))
        elif name == "serialize":
            param["serialization_strategies"].append(dict(value))
        else:
            param["display_param"].update(value)
    if not param["serialization_strategies"]:
        param["serialization_strategies"].append(dict(DEFAULT_SERIALIZATION))
    check_train_param(param, model)
    return param


def _gen_param_pairs(names: list[str] | str | dict[str, Any] | None, values: Any) -> list[tuple[str, Any]]:
    """(name, value) pairs of the generic parameters, each value a dict; checked."""
    if names is None or (isinstance(names, (list, tuple)) and not names):
        return []
    if isinstance(names, dict):
        if values is not None:
            raise DLParamError("create_dl_train_param: with a dict of generic parameters, gen_param_values must be None")
        pairs = [(n, v) for n, value in names.items()
                 for v in (value if n in ("change", "serialize") and isinstance(value, (list, tuple)) else [value])]
    else:
        names = [names] if isinstance(names, str) else list(names)
        values = [values] if isinstance(values, dict) else list(values or [])
        if len(names) != len(values):
            raise DLParamError(f"create_dl_train_param: expected one GenParamValue per GenParamName, got {len(names)} "
                               f"names {names} and {len(values)} values")
        pairs = list(zip(names, values))
    for name, value in pairs:
        if name not in GEN_PARAM_NAMES:
            raise DLParamError(f"create_dl_train_param: unknown GenParamName {name!r}; expected one of {list(GEN_PARAM_NAMES)}")
        if not isinstance(value, dict):
            raise DLParamError(f"create_dl_train_param, GenParamName {name!r}: expected a dict, got {value!r}")
    return pairs


def _with_initial_value(strategy: dict[str, Any], model: Any) -> dict[str, Any]:
    """A change strategy with ``initial_value`` (the model's value now when not given)."""
    name = strategy.get("model_param")
    if "initial_value" not in strategy and isinstance(name, str):
        P.settable_spec(name, model.params["type"])
        strategy["initial_value"] = get_dl_model_param(model, name)
    return strategy


def check_train_param(param: dict[str, Any], model: Any) -> None:
    """Raise a :class:`DLParamError` naming the key when ``param`` is no valid train param for ``model``."""
    from .evaluation import detection_gen_param
    from .preprocess import check_augment_param

    missing = sorted({"num_epochs", "evaluation_interval_epochs", "change_strategies", "serialization_strategies",
                      "augmentation_param", "evaluation_param", "display_param", "seed_rand",
                      "update_interval_seconds", "num_samples_mean_loss"} - set(param))
    if missing:
        raise DLParamError(f"train param: missing keys {missing}; build it with create_dl_train_param")
    _check_scalars(param)
    if param["augmentation_param"]:
        check_augment_param(param["augmentation_param"])
    if param["evaluation_param"]:
        if model.params["type"] != "detection":
            raise DLParamError(f"train param 'evaluation_param': {sorted(param['evaluation_param'])} apply to detection "
                               f"models, not to a {model.params['type']} model")
        detection_gen_param(param["evaluation_param"])
    keys = param.get("evaluation_comparison_keys")
    if not isinstance(keys, (list, tuple)) or not keys or not all(isinstance(k, str) for k in keys):
        raise DLParamError(f"train param 'evaluation_comparison_keys': expected a list of measure names, got {keys!r}")
    for strategy in param["change_strategies"]:
        check_change_strategy(strategy, model)
    for strategy in param["serialization_strategies"]:
        check_serialization_strategy(strategy)
    check_display_param(param["display_param"])


def _check_scalars(param: dict[str, Any]) -> None:
    """The numbers and flags of a train param."""
    checks = [("num_epochs", "a number > 0", lambda v: is_number(v) and v > 0),
              ("evaluation_interval_epochs", "a number >= 0", lambda v: is_number(v) and v >= 0),
              ("seed_rand", "an int >= 0 or None", lambda v: v is None or (is_int(v) and v >= 0)),
              ("update_interval_seconds", "a number >= 0", lambda v: is_number(v) and v >= 0),
              ("num_samples_mean_loss", "an int >= 1", lambda v: is_int(v) and v >= 1),
              ("evaluate_before_train", "a bool", lambda v: isinstance(v, (bool, np.bool_)))]
    for key, expected, valid in checks:
        if key in param and not valid(param[key]):
            raise DLParamError(f"train param {key!r}: expected {expected}, got {param[key]!r}")


def check_display_param(display: Any) -> None:
    """``display_param``: a dict of :data:`DISPLAY_DEFAULTS`' keys, ``enabled`` a bool,
    ``selected_percentage_train_samples`` a number in [0, 100], ``log_dir`` a folder path or None."""
    if not isinstance(display, dict):
        raise DLParamError(f"train param 'display_param': expected a dict, got {display!r}")
    unknown = sorted(set(display) - set(DISPLAY_DEFAULTS))
    if unknown:
        raise DLParamError(f"train param 'display_param': unknown keys {unknown}; known: {sorted(DISPLAY_DEFAULTS)}")
    checks = [("enabled", "a bool", lambda v: isinstance(v, (bool, np.bool_))),
              ("selected_percentage_train_samples", "a number in [0, 100]", lambda v: is_number(v) and 0 <= v <= 100),
              ("log_dir", "a folder path (str or os.PathLike) or None",
               lambda v: v is None or isinstance(v, (str, os.PathLike)))]
    for key, expected, valid in checks:
        if key in display and not valid(display[key]):
            raise DLParamError(f"train param 'display_param' key {key!r}: expected {expected}, got {display[key]!r}")


def check_change_strategy(strategy: dict[str, Any], model: Any) -> None:
    """A change strategy: a settable ``model_param``, ``epochs`` rising and as many ``values``, each value
    valid for the parameter, ``scale_momentum_threshold`` > 1 if given."""
    name = strategy.get("model_param")
    if not isinstance(name, str):
        raise DLParamError(f"change strategy {strategy}: expected 'model_param', the name of a model parameter")
    P.settable_spec(name, model.params["type"])
    epochs, values = list(np.atleast_1d(strategy.get("epochs", []))), strategy_values(strategy)
    if not epochs or len(epochs) != len(values) or not all(is_number(e) for e in epochs) \
            or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise DLParamError(f"change strategy of {name!r}: expected rising 'epochs' and one value per epoch, got "
                           f"epochs {strategy.get('epochs')!r} and values {strategy.get('values')!r}")
    for value in [strategy.get("initial_value"), *values]:
        P.coerce(name, value, model.params["type"])
    threshold = strategy.get("scale_momentum_threshold")
    if threshold is not None and (not is_number(threshold) or threshold <= 1):
        raise DLParamError(f"change strategy of {name!r}: 'scale_momentum_threshold' expected a number > 1, got "
                           f"{threshold!r}")


def check_serialization_strategy(strategy: dict[str, Any]) -> None:
    """A serialisation strategy: a known ``type``, a ``basename`` string, ``epochs`` for type 'epochs'."""
    kind = strategy.get("type")
    if kind not in SERIALIZATION_TYPES:
        raise DLParamError(f"serialization strategy {strategy}: 'type' expected one of {list(SERIALIZATION_TYPES)}, "
                           f"got {kind!r}")
    if not isinstance(strategy.get("basename"), str) or not strategy["basename"]:
        raise DLParamError(f"serialization strategy {strategy}: expected a 'basename' (a file path without suffix)")
    if kind == "epochs":
        epochs = np.atleast_1d(strategy.get("epochs", []))
        if not epochs.size or not all(is_number(e) and e > 0 for e in epochs):
            raise DLParamError(f"serialization strategy {strategy}: type 'epochs' expects 'epochs', a number > 0 "
                               f"(every that many epochs) or a list of epochs")


# -- the index stream -----------------------------------------------------------------------------

def index_stream(train_indices: list[int], num_epochs: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """HALCON's sample order for a whole run, independent of the batch size [P]: ``ceil(num_epochs)``
    random permutations of the train indices, concatenated, and a seed per stream position,
    ``floor((2^31 - 1) * u)``, both drawn from one generator seeded with ``seed``. Batch i of size B is
    ``stream[i*B:(i+1)*B]`` (so a permutation's leftovers carry into the next epoch); it runs with the
    seed at its last position."""
    rng = np.random.default_rng(seed)
    train = np.asarray(train_indices, np.int64)
    stream = np.concatenate([rng.permutation(train) for _ in range(math.ceil(num_epochs))])
    seeds = np.floor(SEED_POOL_SCALE * rng.random(len(stream))).astype(np.int64)
    return stream, seeds


def iterations(num_train: int, batch: int, num_epochs: float) -> tuple[int, int]:
    """(iterations per epoch, iterations of the run): ``floor(N / B)`` and ``int(that * num_epochs)`` [P]."""
    per_epoch = num_train // batch
    return per_epoch, int(per_epoch * num_epochs)


def evaluation_due(iteration: int, per_epoch: int, num_iterations: int, interval_epochs: float) -> bool:
    """Whether the evaluation runs after ``iteration`` (from 0) [P]: with interval ``floor(interval_epochs *
    per_epoch)`` > 0, when it is 1, when the iteration is a non-zero multiple of it, and after the last."""
    interval = math.floor(interval_epochs * per_epoch)
    return interval > 0 and (interval == 1 or (iteration % interval == 0 and iteration != 0)
                             or iteration == num_iterations - 1)


def mean_loss(train_results: list[dict[str, float]], num_samples: int, batch: int) -> float:
    """HALCON's ``mean_loss``: the mean ``total_loss`` of the last ``ceil(num_samples / batch)`` iterations."""
    last = train_results[-math.ceil(num_samples / batch):]
    return float(np.mean([r["total_loss"] for r in last])) if last else float("nan")


# -- change strategies ----------------------------------------------------------------------------

def strategy_value(strategy: dict[str, Any], epoch: float) -> Any:
    """The value of a change strategy at (fractional) ``epoch``: ``values[k]`` of the last ``epochs[k] <=
    epoch``, else ``initial_value``."""
    epochs, values = np.atleast_1d(strategy["epochs"]), strategy_values(strategy)
    reached = int(np.searchsorted(epochs, epoch, side="right"))
    return strategy["initial_value"] if reached == 0 else values[reached - 1]


def strategy_values(strategy: dict[str, Any]) -> list[Any]:
    """A change strategy's ``values`` as a list: a list, tuple or 1-d array as it is, one value (a number or
    a string, HALCON's tuple of one) as a list of it."""
    values = strategy.get("values")
    if isinstance(values, np.ndarray) and values.ndim <= 1:
        return list(np.atleast_1d(values).tolist())
    if isinstance(values, (list, tuple)):
        return list(values)
    if is_number(values) or isinstance(values, str):
        return [values]
    raise DLParamError(f"change strategy of {strategy.get('model_param')!r}: 'values' expected a number or a list of "
                       f"values (one per epoch), got {values!r}")


def apply_change_strategies(model: Any, strategies: list[dict[str, Any]], epoch: float,
                            momentum_to_restore: float | None) -> float | None:
    """Set every strategy's parameter for ``epoch`` (HALCON's ``update_train_dl_model_change_strategies``
    [P]); returns the momentum to restore before the next iteration, or None.

    A momentum scaled for one iteration is restored first. A learning rate that changes from l_old to
    l_new with ``max(l_new / l_old, l_old / l_new) > scale_momentum_threshold`` under solver 'sgd' sets
    the momentum to ``mu * l_new / l_old`` for this iteration: the velocity ``v = mu v - l g`` carries
    steps of the old rate, and the scaled momentum rescales them to the new one.
    """
    if momentum_to_restore is not None:
        set_dl_model_param(model, "momentum", momentum_to_restore)
    restore = None
    for strategy in strategies:
        name, value = strategy["model_param"], strategy_value(strategy, epoch)
        old = get_dl_model_param(model, name)
        if _same(old, value):
            continue
        set_dl_model_param(model, name, value)
        threshold = strategy.get("scale_momentum_threshold")
        if name == "learning_rate" and threshold is not None and model.params["solver_type"] == "sgd":
            ratio = float(value) / float(old)
            if max(ratio, 1.0 / ratio) > threshold:
                restore = model.params["momentum"]
                set_dl_model_param(model, "momentum", _scaled_momentum(restore, ratio, strategy))
    return restore


def _same(a: Any, b: Any) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _scaled_momentum(momentum: float, ratio: float, strategy: dict[str, Any]) -> float:
    scaled = momentum * ratio
    if not 0.0 <= scaled < 1.0:
        raise DLParamError(f"change strategy of 'learning_rate' with scale_momentum_threshold "
                           f"{strategy['scale_momentum_threshold']}: the momentum {momentum} scaled by the rate's "
                           f"change {ratio:g} is {scaled:g}, outside [0, 1); scale the momentum only for falling "
                           f"learning rates (a threshold above this change)")
    return scaled


def check_momentum_scaling(model: Any, strategies: list[dict[str, Any]], epochs: list[float]) -> None:
    """Before training: every learning-rate change the strategies make at the iterations' ``epochs`` keeps
    the scaled momentum below 1 (so no iteration fails half way through the run)."""
    for strategy in strategies:
        threshold = strategy.get("scale_momentum_threshold")
        if strategy["model_param"] != "learning_rate" or threshold is None or model.params["solver_type"] != "sgd":
            continue
        old = model.params["learning_rate"]
        for epoch in epochs:
            new = strategy_value(strategy, epoch)
            ratio = float(new) / float(old)
            if max(ratio, 1.0 / ratio) > threshold:
                _scaled_momentum(model.params["momentum"], ratio, strategy)
            old = new


# -- the comparison value ------------------------------------------------------------------------

def comparison_value(result: dict[str, Any], keys: list[str]) -> float:
    """The value that picks the best model: the mean of ``result[key]`` over the comparison keys (a
    key missing at the top is looked up in the first ``max_num_detections_*`` / ``area_*`` entry, as
    HALCON's ``reduce_dl_evaluation_result`` does [P])."""
    values = []
    for key in keys:
        entry = result
        while key not in entry:
            nested = [k for k in entry if isinstance(entry[k], dict) and k.startswith(("max_num_detections_", "area_"))]
            if not nested:
                raise DLParamError(f"evaluation_comparison_keys: {key!r} is not in the evaluation result "
                                   f"(keys {sorted(result)})")
            entry = entry[nested[0]]
        values.append(float(entry[key]))
    return float(np.mean(values))


def lower_is_better(keys: list[str], model: Any) -> bool:
    """Whether a lower comparison value is better: the model type's rule for its main measure, else for
    keys that are errors (``top1_error``, ...; the rule for other keys is ours)."""
    kind = model_type.get(model.params["type"])
    if list(keys) == [kind.MAIN_MEASURE]:
        return bool(kind.LOWER_IS_BETTER)
    return all(key.endswith("_error") for key in keys)


# -- serialisation strategies and their files -----------------------------------------------------

def epochs_reached(strategy: dict[str, Any], epoch_before: float, epoch_after: float) -> list[float]:
    """The epochs of an 'epochs' strategy passed between ``epoch_before`` (excluded) and ``epoch_after``."""
    marks = np.atleast_1d(strategy["epochs"]).astype(np.float64)
    if marks.size == 1:  # every that many epochs
        step = float(marks[0])
        first, last = math.floor(epoch_before / step) + 1, math.floor(epoch_after / step + 1e-9)
        return [k * step for k in range(first, last + 1)]
    return [float(e) for e in marks if epoch_before < e <= epoch_after + 1e-9]


def due_serializations(strategies: list[dict[str, Any]], iteration: int, num_iterations: int, per_epoch: int,
                       improved: bool) -> list[str]:
    """The basenames to write after ``iteration`` (HALCON's ``update_train_dl_model_serialization``):
    'best' when the comparison value improved, 'final' after the last iteration, 'epochs' when an
    epoch mark was passed (file ``<basename>_epoch_<e>``; the naming is ours)."""
    names = []
    for strategy in strategies:
        kind = strategy["type"]
        if iteration < 0 and kind != "best":  # the evaluation before training
            continue
        if (kind == "best" and improved) or (kind == "final" and iteration == num_iterations - 1):
            names.append(strategy["basename"])
        elif kind == "epochs":
            for epoch in epochs_reached(strategy, iteration / per_epoch, (iteration + 1) / per_epoch):
                names.append(f"{strategy['basename']}_epoch_{epoch:g}")
    return names


def interrupt_basenames(strategies: list[dict[str, Any]]) -> list[str]:
    """The basenames of the 'interrupted' strategies."""
    return [s["basename"] for s in strategies if s["type"] == "interrupted"]


def fingerprint(stream: np.ndarray, seeds: np.ndarray, param: dict[str, Any]) -> str:
    """What identifies a run: its index stream, seed pool and epoch count (a checkpoint of another run is refused)."""
    digest = hashlib.sha256(stream.tobytes() + seeds.tobytes() + repr(float(param["num_epochs"])).encode())
    return digest.hexdigest()


def write_checkpoint(model: Any, basename: str, state: dict[str, Any]) -> None:
    """``<basename>.onnx`` (with the solver state) and ``<basename>_info.json`` (``state`` and the solver's
    step count), each written atomically; the folder is created."""
    path = Path(basename)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dl_model(model, path.with_name(path.name + ".onnx"))
    info = dict(state, format=INFO_FORMAT, solver_steps=model.solver_steps())
    write_atomically(path.with_name(path.name + "_info.json"), json.dumps(to_json(info)).encode())


def checkpoint_files(strategies: list[dict[str, Any]]) -> list[Path]:
    """Every ``*_info.json`` the strategies may have written."""
    found: list[Path] = []
    for strategy in strategies:
        path = Path(strategy["basename"])
        pattern = path.name + ("_epoch_*_info.json" if strategy["type"] == "epochs" else "_info.json")
        found.extend(sorted(path.parent.glob(pattern)))
    return found


def read_checkpoint(info_path: Path) -> dict[str, Any]:
    """The state a checkpoint holds (:func:`write_checkpoint`)."""
    try:
        info = from_json(json.loads(info_path.read_text()))
    except (OSError, ValueError) as exc:
        raise DLParamError(f"cannot read the training checkpoint {str(info_path)!r}: {exc}") from exc
    if not isinstance(info, dict) or info.get("format") != INFO_FORMAT:
        raise DLParamError(f"{str(info_path)!r} is no training checkpoint of this version")
    return info


def latest_checkpoint(train_param: dict[str, Any], run: str | None = None) -> Path | None:
    """The model file of the latest checkpoint the serialisation strategies of ``train_param`` wrote (the
    most iterations done), or None. ``run``: only checkpoints of that run (:func:`fingerprint`).

    ``train_dl_model(model, dataset, train_param, 'resume')`` continues from it; ``model`` must be read
    from this file (``read_dl_model(latest_checkpoint(train_param))``), as in HALCON."""
    best: tuple[tuple[int, int], Path] | None = None
    for info_path in checkpoint_files(train_param["serialization_strategies"]):
        info = read_checkpoint(info_path)
        if run is not None and info.get("run") != run:
            continue
        key = (int(info["next_iteration"]), int(info["step_done"]))
        if best is None or key > best[0]:
            best = (key, info_path)
    if best is None:
        return None
    info_path = best[1]
    return info_path.with_name(info_path.name[:-len("_info.json")] + ".onnx")


def info_path_of(model_path: Path) -> Path:
    """``<basename>_info.json`` beside ``<basename>.onnx``."""
    return model_path.with_name(model_path.name[:-len(".onnx")] + "_info.json")


# -- JSON for infos: arrays, dicts with int keys and NaN survive the round trip ------------------------

def to_json(value: Any) -> Any:
    """``value`` as JSON-ready data that :func:`from_json` turns back into an equal value (NumPy arrays
    and scalars, dicts with non-string keys, tuples as lists)."""
    if isinstance(value, np.ndarray):
        return {"__array__": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {"__items__": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    """The inverse of :func:`to_json`."""
    if isinstance(value, dict):
        if "__array__" in value:
            return np.asarray(value["__array__"], dtype=value["dtype"]).reshape(value["shape"])
        if "__items__" in value:
            return {from_json(k): from_json(v) for k, v in value["__items__"]}
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value
