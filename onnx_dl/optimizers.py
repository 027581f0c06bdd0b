"""The solvers: HALCON's SGD with momentum and Adam (Kingma & Ba), as small ONNX update graphs.

The update runs in its own InferenceSession whose outputs are bound onto the same buffers as
its inputs (the engine's parameters and our solver state), so it updates in place on the
execution provider's device. Hyper-parameters are scalar inputs: they may change at every step
without rebuilding anything.

SGD (HALCON; the velocity keeps its scale when the learning rate changes):
    v_t = momentum * v_{t-1} - learning_rate_t * g_t
    w_t = w_{t-1} + v_t

Adam (bias-corrected; epsilon added to the root of the corrected second moment):
    m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
    v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
    w_t = w_{t-1} - learning_rate * (m_t / (1 - beta1^t)) / (sqrt(v_t / (1 - beta2^t)) + epsilon)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from . import _ort
from .backend import TrainingSession
from .onnx_builder import GraphBuilder, new_model

SOLVER_STATE = {"sgd": ("velocity",), "adam": ("moment1", "moment2")}
_SCALARS = {"sgd": ("lr", "momentum"), "adam": ("lr", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2",
                                                "bias1", "bias2", "epsilon")}


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


def update_graph(solver: str, shapes: list[list[int]]) -> tuple[onnx.ModelProto, list[tuple[str, str, list[str], list[str]]]]:
    """The update graph of ``solver`` for parameters of ``shapes``.

    Returns the model and, per parameter, (weight input, gradient input, state inputs, outputs in
    the order [weight, *state]).
    """
    graph = onnx.GraphProto(name=f"{solver}_update")
    b = GraphBuilder(graph)
    for scalar in _SCALARS[solver]:
        b.input(scalar, [])
    nodes = _sgd_nodes if solver == "sgd" else _adam_nodes
    slots = []
    for i, shape in enumerate(shapes):
        w, g = b.input(f"w{i}", shape), b.input(f"g{i}", shape)
        state = [b.input(f"{kind}{i}", shape) for kind in SOLVER_STATE[solver]]
        outputs = nodes(b, w, g, state)
        for out in outputs:
            b.output(out, shape)
        slots.append((w, g, state, outputs))
    return new_model(graph), slots


def scalars(solver: str, params: dict[str, Any], step: int) -> dict[str, np.ndarray]:
    """The scalar inputs of the update at 1-based ``step`` from the model parameters."""
    lr = params["learning_rate"]
    if solver == "sgd":
        values = {"lr": lr, "momentum": params["momentum"]}
    else:
        beta1, beta2 = params["adam_beta1"], params["adam_beta2"]
        values = {"lr": lr, "beta1": beta1, "one_minus_beta1": 1.0 - beta1, "beta2": beta2,
                  "one_minus_beta2": 1.0 - beta2, "bias1": 1.0 - beta1**step, "bias2": 1.0 - beta2**step,
                  "epsilon": params["adam_epsilon"]}
    return {k: np.array(v, dtype=np.float32) for k, v in values.items()}


class Solver:
    """The state of one solver over the parameters of a TrainingSession, and its in-place update."""

    def __init__(self, kind: str, session: TrainingSession, runtime: str, threads: int, deterministic: bool,
                 state: dict[str, dict[str, np.ndarray]] | None = None, step: int = 0) -> None:
        rt = _ort.ort()
        self.kind = kind
        self.step_count = step
        names = session.trainable
        params = [session.parameter(n) for n in names]
        shapes = [list(p.shape()) for p in params]
        model, slots = update_graph(kind, shapes)
        options = _ort.session_options(threads, deterministic, optimize=False, spinning=False)
        self._session = rt.InferenceSession(model.SerializeToString(), options,
                                            providers=_ort.providers(runtime, deterministic))
        device = "cuda" if runtime == "gpu" else "cpu"
        state = state or {}
        self.state: dict[str, dict[str, Any]] = {}
        self._binding = self._session.io_binding()
        for name, param, shape, (w, g, state_inputs, outputs) in zip(names, params, shapes, slots):
            saved = state.get(name, {})
            buffers = {}
            for kind_name in SOLVER_STATE[kind]:
                initial = saved.get(kind_name)
                if initial is None or list(initial.shape) != shape:
                    initial = np.zeros(shape, np.float32)
                buffers[kind_name] = rt.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(initial, np.float32), device, 0)
            self.state[name] = buffers
            grad = session.gradient(name)
            self._binding.bind_ortvalue_input(w, param)
            self._binding.bind_ortvalue_input(g, grad)
            self._binding.bind_ortvalue_output(outputs[0], param)
            for state_input, output, kind_name in zip(state_inputs, outputs[1:], SOLVER_STATE[kind]):
                self._binding.bind_ortvalue_input(state_input, buffers[kind_name])
                self._binding.bind_ortvalue_output(output, buffers[kind_name])

    def apply(self, params: dict[str, Any]) -> None:
        """One update of every parameter from its accumulated gradient."""
        for name, value in scalars(self.kind, params, self.step_count + 1).items():
            self._binding.bind_cpu_input(name, value)
        self._session.run_with_iobinding(self._binding)
        self.step_count += 1

    def state_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """A copy of the solver state per parameter."""
        return {name: {k: np.array(v.numpy(), copy=True) for k, v in buffers.items()}
                for name, buffers in self.state.items()}

    def load_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Overwrite the solver state in place (restoring a snapshot)."""
        for name, buffers in state.items():
            for kind_name, value in buffers.items():
                self.state[name][kind_name].update_inplace(np.ascontiguousarray(value, np.float32))
