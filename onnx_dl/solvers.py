"""The solvers, one registry: each is its hyper-parameters (model parameters it reads), the state it
keeps per weight and its update rule, written once as ONNX nodes (run by the engine on a GPU) and once
as in-place NumPy (run on the host for the CPU), with the same float32 operations in the same order.

A new solver is one more :class:`SolverRule` in ``SOLVERS``: ``params`` offers its name for
``solver_type``, the command line for ``--solver``, and :mod:`onnx_dl.engine.solver` runs it; its
hyper-parameters are model parameters with their checks in :mod:`onnx_dl.params`.

SGD (HALCON; the velocity keeps its scale when the learning rate changes):
    v_t = momentum * v_{t-1} - learning_rate_t * g_t
    w_t = w_{t-1} + v_t

Adam (bias-corrected; epsilon added to the root of the corrected second moment):
    m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
    v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
    w_t = w_{t-1} - learning_rate * (m_t / (1 - beta1^t)) / (sqrt(v_t / (1 - beta2^t)) + epsilon)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .onnx_builder import GraphBuilder

Scalars = dict[str, np.ndarray]


@dataclass(frozen=True)
class SolverRule:
    """One solver. ``scalars(params, step)`` gives the update's scalar inputs at 1-based ``step`` (named
    ``scalar_names``); ``nodes(b, w, g, state)`` appends the update as ONNX nodes and returns the new
    weight and state tensors; ``host(w, g, state, scalars, scratch)`` does the same in place on flat
    float32 arrays with ``scratch_buffers`` scratch arrays of their size."""

    name: str
    hyper_parameters: tuple[str, ...]
    state: tuple[str, ...]
    scalar_names: tuple[str, ...]
    scalars: Callable[[dict[str, Any], int], Scalars]
    nodes: Callable[[GraphBuilder, str, str, list[str]], list[str]]
    host: Callable[[np.ndarray, np.ndarray, list[np.ndarray], Scalars, list[np.ndarray]], None]
    scratch_buffers: int


def _float32(values: dict[str, float]) -> Scalars:
    return {k: np.array(v, dtype=np.float32) for k, v in values.items()}


def _sgd_scalars(params: dict[str, Any], step: int) -> Scalars:
    return _float32({"lr": params["learning_rate"], "momentum": params["momentum"]})


def _adam_scalars(params: dict[str, Any], step: int) -> Scalars:
    beta1, beta2 = params["adam_beta1"], params["adam_beta2"]
    return _float32({"lr": params["learning_rate"], "beta1": beta1, "one_minus_beta1": 1.0 - beta1, "beta2": beta2,
                     "one_minus_beta2": 1.0 - beta2, "bias1": 1.0 - beta1**step, "bias2": 1.0 - beta2**step,
                     "epsilon": params["adam_epsilon"]})


def _sgd_nodes(b: GraphBuilder, w: str, g: str, state: list[str]) -> list[str]:
    (v,) = state
    v_new = b.op("Sub", [b.op("Mul", [v, "momentum"]), b.op("Mul", [g, "lr"])], "v_new")
    return [b.op("Add", [w, v_new], "w_new"), v_new]


def _adam_nodes(b: GraphBuilder, w: str, g: str, state: list[str]) -> list[str]:
    m, v = state
    m_new = b.op("Add", [b.op("Mul", [m, "beta1"]), b.op("Mul", [g, "one_minus_beta1"])], "m_new")
    v_new = b.op("Add", [b.op("Mul", [v, "beta2"]), b.op("Mul", [b.op("Mul", [g, g]), "one_minus_beta2"])], "v_new")
    m_hat = b.op("Div", [m_new, "bias1"], "m_hat")
    denominator = b.op("Add", [b.op("Sqrt", [b.op("Div", [v_new, "bias2"])]), "epsilon"], "denom")
    step = b.op("Mul", [b.op("Div", [m_hat, denominator]), "lr"], "step")
    return [b.op("Sub", [w, step], "w_new"), m_new, v_new]


def _sgd_host(w: np.ndarray, g: np.ndarray, state: list[np.ndarray], s: Scalars,
              scratch: list[np.ndarray]) -> None:
    """``_sgd_nodes`` in place: v = v * momentum - g * lr; w = w + v."""
    (v,) = state
    step = scratch[0]
    np.multiply(v, s["momentum"], out=v)
    np.multiply(g, s["lr"], out=step)
    np.subtract(v, step, out=v)
    np.add(w, v, out=w)


def _adam_host(w: np.ndarray, g: np.ndarray, state: list[np.ndarray], s: Scalars,
               scratch: list[np.ndarray]) -> None:
    """``_adam_nodes`` in place, operation by operation."""
    m, v = state
    a, b = scratch
    np.multiply(m, s["beta1"], out=m)
    np.multiply(g, s["one_minus_beta1"], out=a)
    np.add(m, a, out=m)
    np.multiply(v, s["beta2"], out=v)
    np.multiply(g, g, out=a)
    np.multiply(a, s["one_minus_beta2"], out=a)
    np.add(v, a, out=v)
    np.divide(m, s["bias1"], out=a)  # m_hat
    np.divide(v, s["bias2"], out=b)
    np.sqrt(b, out=b)
    np.add(b, s["epsilon"], out=b)  # the denominator
    np.divide(a, b, out=a)
    np.multiply(a, s["lr"], out=a)
    np.subtract(w, a, out=w)


SOLVERS: dict[str, SolverRule] = {rule.name: rule for rule in (
    SolverRule("sgd", ("learning_rate", "momentum"), ("velocity",), ("lr", "momentum"), _sgd_scalars,
               _sgd_nodes, _sgd_host, 1),
    SolverRule("adam", ("learning_rate", "adam_beta1", "adam_beta2", "adam_epsilon"), ("moment1", "moment2"),
               ("lr", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "bias1", "bias2", "epsilon"),
               _adam_scalars, _adam_nodes, _adam_host, 2),
)}
