"""The model-type contract and the registry of model types.

A model type (classification, segmentation, detection, ...) is one module that provides every name
of :class:`ModelType` and registers itself with :func:`register`; the parameter table, the handle,
the operators, evaluation, the training loop, the dataset helpers and the command line find
everything type-specific through :func:`get`. The built-in types live in :mod:`onnx_dl.tasks`;
``tests/test_model_types.py`` checks every registered type against this contract.

Adding a type (README, "Extending"): write ``onnx_dl/tasks/<name>.py`` with the names below, add it
to the built-ins in ``onnx_dl/tasks/__init__.py`` (or call :func:`register` from your own package),
and give it tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnx

from .errors import DLParamError


@runtime_checkable
class ModelType(Protocol):
    """What a model type provides (a module satisfies it structurally)."""

    # -- identity and samples
    NAME: str  # the value of the model parameter 'type'
    DATASET_KEYS: tuple[str, ...]  # annotation keys of its samples or dataset entries (a dataset's type is
    # recognised by them)
    RESULT_KEYS: tuple[str, ...]  # what apply_dl_model returns per sample
    SCORE_RANK: int  # rank of the network's score output (N, K) = 2, (N, K, H, W) = 4

    # -- parameters (the common ones are in onnx_dl.params.SPECS)
    PARAMS: tuple[Any, ...]  # parameters only this type has (onnx_dl.params.ParamSpec; params reads this
    # registry, so the contract names the class without importing it)
    PARAM_CHECKS: dict[str, Callable[[Any], str | None]]  # checks replacing a common parameter's
    FIXED_AFTER_CREATION: frozenset[str]  # parameters set_dl_model_param refuses once the model exists
    TRAINING_STATE: tuple[str, ...]  # read-only parameters that training steps change
    DEFAULT_CLASS_WEIGHT: float  # each class's weight while 'class_weights' is unset

    # -- evaluation, the training loop and the command line
    MAIN_MEASURE: str  # the measure that picks the best model
    LOWER_IS_BETTER: bool  # whether a lower main measure is better
    EVALUATION_OVERRIDES: dict[str, Any]  # parameters an evaluation applies the model with
    CLI_NETWORK: str  # the bundled network the command line starts from
    CLI_IMAGE_SIZE: int  # the command line's default square input size

    def check_params(self, params: dict[str, Any]) -> None:
        """Raise :class:`DLParamError` if the type's parameters disagree with each other."""

    def head_weights(self, network: onnx.ModelProto) -> set[str]:
        """The weights ``freeze_backbone`` keeps trainable."""

    def output_shapes(self, network: onnx.ModelProto, params: dict[str, Any]) -> dict[str, list[int]]:
        """The outputs the type reads, with their shapes per image."""

    def num_classes(self, network: onnx.ModelProto, params: dict[str, Any]) -> int:
        """The class count the network predicts."""

    def with_classes(self, network: onnx.ModelProto, params: dict[str, Any], class_ids: list[int]) -> onnx.ModelProto:
        """The network predicting ``len(class_ids)`` classes (a new score layer), or raise if the type
        cannot change its class count."""

    def inference_graph(self, network: onnx.ModelProto, params: dict[str, Any]) -> onnx.ModelProto:
        """The network ending in what ``apply_dl_model`` reads."""

    def build_training_graph(self, network: onnx.ModelProto, params: dict[str, Any],
                             trainable: list[str] | None = None) -> Any:
        """The network with the type's losses appended (an onnx_dl.training_graph.TrainingGraph, a higher
        layer than this contract)."""

    def train_chunks(self, samples: list[dict[str, Any]], params: dict[str, Any],
                     chunks: int) -> tuple[list[list[np.ndarray]], bool, dict[str, Any]]:
        """Validated samples as per-chunk feeds, whether the step carries any weight, and the training
        state the step sets if it succeeds."""

    def results(self, outputs: list[np.ndarray], params: dict[str, Any], keys: list[str]) -> list[dict[str, Any]]:
        """``apply_dl_model``'s result per sample from the inference graph's outputs."""

    def measures(self, results: list[dict[str, Any]], samples: list[dict[str, Any]],
                 params: dict[str, Any]) -> dict[str, Any]:
        """The evaluation measures of ``results`` against the samples' annotations."""

    def synthetic_samples(self, count: int, size: int, seed: int) -> list[dict[str, Any]]:
        """``count`` generated samples of ``size`` x ``size`` (tests, benchmarks, the command line)."""


_TYPES: dict[str, ModelType] = {}


def register(model_type: ModelType) -> ModelType:
    """Add ``model_type`` to the registry (under its ``NAME``); raise if it misses a name of the contract."""
    missing = [name for name in _contract_names() if not hasattr(model_type, name)]
    if missing:
        raise TypeError(f"model type {getattr(model_type, 'NAME', model_type)!r} misses {missing} of "
                        f"onnx_dl.model_type.ModelType")
    _TYPES[model_type.NAME] = model_type
    return model_type


def get(name: str) -> ModelType:
    """The registered model type ``name``; raise :class:`DLParamError` naming the registered ones."""
    if name not in _TYPES:
        raise DLParamError(f"model type {name!r} is not supported; supported: {names()}")
    return _TYPES[name]


def names() -> list[str]:
    """The registered model types, in registration order."""
    return list(_TYPES)


def registered() -> list[ModelType]:
    """Every registered model type, in registration order."""
    return list(_TYPES.values())


def _contract_names() -> list[str]:
    annotated = [name for klass in ModelType.__mro__ for name in getattr(klass, "__annotations__", {})]
    methods = [name for name, value in vars(ModelType).items() if callable(value) and not name.startswith("_")]
    return sorted(set(annotated + methods))
