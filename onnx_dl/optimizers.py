"""The solvers: HALCON's SGD with momentum and Adam (Kingma & Ba), as small ONNX update graphs.

On the CPU the update runs on the host, in place on the engine's parameter and gradient buffers
(NumPy views of them), split over the session's threads; on a GPU it runs in its own
InferenceSession whose outputs are bound onto the same buffers as its inputs. Both paths do the same
float32 operations in the same order, so they agree bit for bit for SGD and to one unit in the last
place for Adam, whose square root the engine does not round correctly (tests/test_exactness.py). Measured
(2 threads, batch 8 at 128 x 128): the update session spent about 50 us per node, 32 ms per step for
mobilenet_v2's 158 tensors and 18 ms for resnet18's 62, where the host update takes 2 ms and 17 ms
single-threaded. Hyper-parameters may change at every step without rebuilding anything.

SGD (HALCON; the velocity keeps its scale when the learning rate changes):
    v_t = momentum * v_{t-1} - learning_rate_t * g_t
    w_t = w_{t-1} + v_t

Adam (bias-corrected; epsilon added to the root of the corrected second moment):
    m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
    v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
    w_t = w_{t-1} - learning_rate * (m_t / (1 - beta1^t)) / (sqrt(v_t / (1 - beta2^t)) + epsilon)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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


def _sgd_host(w: np.ndarray, g: np.ndarray, state: list[np.ndarray], s: dict[str, np.ndarray],
              scratch: list[np.ndarray]) -> None:
    """``_sgd_nodes`` in place: v = v * momentum - g * lr; w = w + v."""
    (v,) = state
    step = scratch[0]
    np.multiply(v, s["momentum"], out=v)
    np.multiply(g, s["lr"], out=step)
    np.subtract(v, step, out=v)
    np.add(w, v, out=w)


def _adam_host(w: np.ndarray, g: np.ndarray, state: list[np.ndarray], s: dict[str, np.ndarray],
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


_HOST_RULES = {"sgd": (_sgd_host, 1), "adam": (_adam_host, 2)}  # the rule and its scratch buffers
_SPLIT_SIZE = 1 << 16  # tensors from this size are split over the threads


class HostUpdate:
    """A solver's update on the host, in place on CPU buffers (NumPy views), over ``threads`` threads:
    each thread takes a fixed share of the tensors (large ones cut into contiguous parts), so the
    result does not depend on the thread count."""

    def __init__(self, kind: str, tensors: list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]],
                 threads: int) -> None:
        self._rule, scratch_count = _HOST_RULES[kind]
        parts = []
        for w, g, state in tensors:
            w, g, state = w.reshape(-1), g.reshape(-1), [x.reshape(-1) for x in state]
            cuts = threads if w.size >= _SPLIT_SIZE and threads > 1 else 1
            bounds = np.linspace(0, w.size, cuts + 1).astype(int)
            parts += [(w[i:j], g[i:j], [x[i:j] for x in state]) for i, j in zip(bounds[:-1], bounds[1:])]
        self._groups: list[list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]]] = [[] for _ in range(max(threads, 1))]
        sizes = [0] * len(self._groups)
        for part in sorted(parts, key=lambda p: -p[0].size):  # largest first onto the least loaded thread
            least = sizes.index(min(sizes))
            self._groups[least].append(part)
            sizes[least] += part[0].size
        self._scratch = [[np.empty(max((p[0].size for p in group), default=0), np.float32)
                          for _ in range(scratch_count)] for group in self._groups]
        self._pool = ThreadPoolExecutor(len(self._groups) - 1) if len(self._groups) > 1 else None

    def _run(self, index: int, scalars: dict[str, np.ndarray]) -> None:
        scratch = self._scratch[index]
        for w, g, state in self._groups[index]:
            self._rule(w, g, state, scalars, [buffer[:w.size] for buffer in scratch])

    def __call__(self, scalars: dict[str, np.ndarray]) -> None:
        """One update of every tensor with the scalar hyper-parameters ``scalars``."""
        others = [self._pool.submit(self._run, i, scalars) for i in range(1, len(self._groups))] if self._pool else []
        self._run(0, scalars)
        for future in others:
            future.result()


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
    """The state of one solver over the parameters of a TrainingSession, and its in-place update
    (on the host for the CPU, ``on_host`` False forces the update session there too)."""

    def __init__(self, kind: str, session: TrainingSession, runtime: str, threads: int, deterministic: bool,
                 state: dict[str, dict[str, np.ndarray]] | None = None, step: int = 0,
                 on_host: bool | None = None) -> None:
        rt = _ort.ort()
        self.kind = kind
        self.step_count = step
        self.on_host = runtime == "cpu" if on_host is None else on_host
        names = session.trainable
        params = [session.parameter(n) for n in names]
        shapes = [list(p.shape()) for p in params]
        device = "cuda" if runtime == "gpu" else "cpu"
        state = state or {}
        self.state: dict[str, dict[str, Any]] = {}
        for name, shape in zip(names, shapes):
            saved = state.get(name, {})
            buffers = {}
            for kind_name in SOLVER_STATE[kind]:
                initial = saved.get(kind_name)
                if initial is None or list(initial.shape) != shape:
                    initial = np.zeros(shape, np.float32)
                buffers[kind_name] = rt.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(initial, np.float32), device, 0)
            self.state[name] = buffers
        if self.on_host:
            self._host = HostUpdate(kind, [(p.numpy(), session.gradient(n).numpy(),
                                            [self.state[n][k].numpy() for k in SOLVER_STATE[kind]])
                                           for n, p in zip(names, params)], threads)
            return
        model, slots = update_graph(kind, shapes)
        options = _ort.session_options(threads, deterministic, optimize=False, spinning=False)
        self._session = rt.InferenceSession(model.SerializeToString(), options,
                                            providers=_ort.providers(runtime, deterministic))
        self._binding = self._session.io_binding()
        for name, param, (w, g, state_inputs, outputs) in zip(names, params, slots):
            self._binding.bind_ortvalue_input(w, param)
            self._binding.bind_ortvalue_input(g, session.gradient(name))
            self._binding.bind_ortvalue_output(outputs[0], param)
            for state_input, output, kind_name in zip(state_inputs, outputs[1:], SOLVER_STATE[kind]):
                self._binding.bind_ortvalue_input(state_input, self.state[name][kind_name])
                self._binding.bind_ortvalue_output(output, self.state[name][kind_name])

    def apply(self, params: dict[str, Any]) -> None:
        """One update of every parameter from its accumulated gradient."""
        values = scalars(self.kind, params, self.step_count + 1)
        if self.on_host:
            self._host(values)
        else:
            for name, value in values.items():
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
