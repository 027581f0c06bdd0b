"""Running a solver (:mod:`onnx_dl.solvers`) over the parameters of a training session.

On the CPU the update runs on the host, in place on the engine's parameter and gradient buffers
(NumPy views of them), split over the session's threads; on a GPU it runs in its own
InferenceSession whose outputs are bound onto the same buffers as its inputs. Both paths do the same
float32 operations in the same order, so they agree bit for bit for SGD and to one unit in the last
place for Adam, whose square root the engine does not round correctly (tests/test_exactness.py). Measured
(2 threads, batch 8 at 128 x 128): the update session spent about 50 us per node, 32 ms per step for
mobilenet_v2's 158 tensors and 18 ms for resnet18's 62, where the host update takes 2 ms and 17 ms
single-threaded. The solver's hyper-parameters may change at every step without rebuilding anything.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnx

from ..onnx_builder import GraphBuilder, new_model
from ..solvers import SOLVERS
from .runtime import COUNTERS, device_value, inference_session
from .session import TrainingSession

_SPLIT_SIZE = 1 << 16  # tensors from this size are split over the threads
# The rule's operations run over a tensor piece by piece, each piece small enough to stay in the cache
# between them: about one pass over memory instead of one per operation (resnet18's 11.7 M weights, two
# threads, median of 8: SGD 9.5 -> 8.1 ms per update, Adam 25.7 -> 16.5 ms; 2**16 to 2**19 all gain)
_PIECE_SIZE = 1 << 18


def _pieces(w: np.ndarray, g: np.ndarray, state: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
    """Views of a flat weight, its gradient and its state in pieces of at most ``_PIECE_SIZE`` values."""
    return [(w[i:i + _PIECE_SIZE], g[i:i + _PIECE_SIZE], [x[i:i + _PIECE_SIZE] for x in state])
            for i in range(0, w.size, _PIECE_SIZE)]


class HostUpdate:
    """A solver's update on the host, in place on CPU buffers (NumPy views), over ``threads`` threads:
    each thread takes a fixed share of the tensors (large ones cut into contiguous parts) and runs the
    rule over them in pieces of at most ``_PIECE_SIZE`` values. The rule works value by value, so the
    result depends neither on the thread count nor on the pieces."""

    def __init__(self, kind: str, tensors: list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]],
                 threads: int) -> None:
        rule = SOLVERS[kind]
        self._rule, scratch_count = rule.host, rule.scratch_buffers
        parts = []
        for w, g, state in tensors:
            w, g, state = w.reshape(-1), g.reshape(-1), [x.reshape(-1) for x in state]
            cuts = threads if w.size >= _SPLIT_SIZE and threads > 1 else 1
            bounds = np.linspace(0, w.size, cuts + 1).astype(int)
            parts += [(w[i:j], g[i:j], [x[i:j] for x in state]) for i, j in zip(bounds[:-1], bounds[1:])]
        groups: list[list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]]] = [[] for _ in range(max(threads, 1))]
        sizes = [0] * len(groups)
        for part in sorted(parts, key=lambda p: -p[0].size):  # largest first onto the least loaded thread
            least = sizes.index(min(sizes))
            groups[least].append(part)
            sizes[least] += part[0].size
        self._groups = [[piece for part in group for piece in _pieces(*part)] for group in groups]
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
    rule = SOLVERS[solver]
    graph = onnx.GraphProto(name=f"{solver}_update")
    b = GraphBuilder(graph)
    for scalar in rule.scalar_names:
        b.input(scalar, [])
    slots = []
    for i, shape in enumerate(shapes):
        w, g = b.input(f"w{i}", shape), b.input(f"g{i}", shape)
        state = [b.input(f"{kind}{i}", shape) for kind in rule.state]
        outputs = rule.nodes(b, w, g, state)
        for out in outputs:
            b.output(out, shape)
        slots.append((w, g, state, outputs))
    return new_model(graph), slots


class Solver:
    """The state of one solver over the parameters of a TrainingSession, and its in-place update
    (on the host for the CPU, ``on_host`` False forces the update session there too)."""

    def __init__(self, kind: str, session: TrainingSession, runtime: str, threads: int, deterministic: bool,
                 state: dict[str, dict[str, np.ndarray]] | None = None, step: int = 0,
                 on_host: bool | None = None) -> None:
        self.kind = kind
        self.step_count = step
        self.on_host = runtime == "cpu" if on_host is None else on_host
        device_id = getattr(session, "device_id", 0)  # the CUDA device of the session's buffers on 'gpu'
        names = session.trainable
        shapes = [list(session.parameter(n).shape) for n in names]
        state = state or {}
        self.state: dict[str, dict[str, Any]] = {}
        for name, shape in zip(names, shapes):
            saved = state.get(name, {})
            buffers = {}
            for kind_name in SOLVERS[kind].state:
                initial = saved.get(kind_name)
                if initial is None or list(initial.shape) != shape:
                    initial = np.zeros(shape, np.float32)
                initial = np.ascontiguousarray(initial, np.float32)
                buffers[kind_name] = np.array(initial) if self.on_host else device_value(initial, runtime, device_id)
            self.state[name] = buffers
        if self.on_host:
            self._host = HostUpdate(kind, [(session.parameter(n), session.gradient(n),
                                            [self.state[n][k] for k in SOLVERS[kind].state]) for n in names], threads)
            return
        model, slots = update_graph(kind, shapes)
        self._session = inference_session(model, runtime, threads, deterministic, device_id, optimize=False,
                                          spinning=False)
        self._binding = self._session.io_binding()
        for name, (w, g, state_inputs, outputs) in zip(names, slots):
            param, gradient = session.device_values(name)
            self._binding.bind_ortvalue_input(w, param)
            self._binding.bind_ortvalue_input(g, gradient)
            self._binding.bind_ortvalue_output(outputs[0], param)
            for state_input, output, kind_name in zip(state_inputs, outputs[1:], SOLVERS[kind].state):
                self._binding.bind_ortvalue_input(state_input, self.state[name][kind_name])
                self._binding.bind_ortvalue_output(output, self.state[name][kind_name])

    def apply(self, params: dict[str, Any]) -> None:
        """One update of every parameter from its accumulated gradient."""
        values = SOLVERS[self.kind].scalars(params, self.step_count + 1)
        with COUNTERS.timing("update"):
            if self.on_host:
                self._host(values)
            else:
                for name, value in values.items():
                    self._binding.bind_cpu_input(name, value)
                self._session.run_with_iobinding(self._binding)
        self.step_count += 1

    def state_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """A copy of the solver state per parameter."""
        return {name: {k: np.array(v if self.on_host else v.numpy(), copy=True) for k, v in buffers.items()}
                for name, buffers in self.state.items()}

    def load_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Overwrite the solver state in place (restoring a snapshot)."""
        for name, buffers in state.items():
            for kind_name, value in buffers.items():
                target = self.state[name][kind_name]
                if self.on_host:
                    target[...] = value
                else:
                    target.update_inplace(np.ascontiguousarray(value, np.float32))
