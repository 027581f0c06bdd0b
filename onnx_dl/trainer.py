"""One training step of a model: chunks through the engine, checks, one update, BN statistics.

Nothing of the model changes until every chunk has run and every loss and gradient is finite:
gradients wait in the engine's buffers (discarded on failure), the solver updates once, and the
batch-norm running statistics are updated on the host from the batch statistics of each chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine.session import GRADIENT_CHECK, TrainingSession
from .engine.solver import Solver
from .errors import DLNonFiniteError, DLParamError
from .training_graph import TrainingGraph


@dataclass(frozen=True)
class Engine:
    """What a step needs of an engine: ``session(graph, runtime, threads, deterministic)`` builds the
    training session (``run(feeds) -> outputs`` adding to the gradients, ``reset_grad()``,
    ``bn_outputs``, ``weights()``, ``load_weights(values)``) and ``solver(kind, session, runtime,
    threads, deterministic, state=, step=)`` the solver over its parameters (``apply(params)``, ``kind``,
    ``step_count``, ``state_arrays()``, ``load_state(state)``). :data:`ONNX_RUNTIME` is the one the
    library uses; tests of this layer pass a fake (tests/test_trainer.py). The session is also given
    ``chunk_size=`` (the model's batch_size, or None), and on runtime 'gpu' ``device_id=`` (the CUDA
    device index, parameter ``gpu``)."""

    session: Any
    solver: Any


ONNX_RUNTIME = Engine(session=TrainingSession, solver=Solver)


class Trainer:
    """The engine session, the solver and the batch-norm running statistics of one model."""

    def __init__(self, tg: TrainingGraph, running_stats: dict[str, np.ndarray], params: dict[str, Any],
                 runtime: str, threads: int, deterministic: bool,
                 solver_state: dict[str, dict[str, np.ndarray]] | None = None, solver_steps: int = 0,
                 engine: Engine = ONNX_RUNTIME) -> None:
        self.graph = tg
        self.engine = engine
        device = {"device_id": params.get("gpu", 0)} if runtime == "gpu" else {}  # the CUDA device index
        self.session = engine.session(tg, runtime, threads, deterministic, chunk_size=params.get("batch_size"), **device)
        self._engine = (runtime, threads, deterministic)
        self.solver = engine.solver(params["solver_type"], self.session, *self._engine, state=solver_state,
                                    step=solver_steps)
        self.running = {name: np.array(value, np.float32) for name, value in running_stats.items()}

    def check_batchnorm_size(self, chunk_size: int) -> None:
        """Raise unless every batch norm sees more than one value per channel in a chunk of ``chunk_size``."""
        for bn in self.graph.batchnorms:
            values = chunk_size * self.graph.bn_elements.get(bn.node, 0)
            if values == 1:
                raise DLParamError(
                    f"batch norm {bn.node!r} sees one value per channel with batch_size {chunk_size}: "
                    f"training needs more than one; raise 'batch_size'"
                )

    def step(self, chunks: list[list[np.ndarray]], params: dict[str, Any], update: bool = True) -> dict[str, float]:
        """One weight update from ``chunks`` (the per-chunk feeds without the weight prior).

        With ``update`` False the losses are computed and nothing changes (a step without signal).
        """
        chunk_size = len(chunks[0][0])
        self.check_batchnorm_size(chunk_size)
        outputs = self.gradients(chunks, params)
        totals = self.loss_totals(outputs)
        if not update:
            self.session.reset_grad()
            return totals
        self.apply_gradients(params, [out["batch_stats"] for out in outputs], chunk_size)
        return totals

    def gradients(self, chunks: list[list[np.ndarray]], params: dict[str, Any], first: int = 0,
                  count: int | None = None) -> list[dict[str, Any]]:
        """Forward and backward of ``chunks``, chunks ``first``.. of a step of ``count`` (default: these),
        their gradients added up in the engine's buffers (discarded on any error; only the step's first
        chunk carries the weight prior). Per chunk: its losses (floats) and ``batch_stats`` ({bn node:
        (mean, inv_std)}). Data-parallel workers run this on their share (:mod:`onnx_dl.distributed`)."""
        count = len(chunks) if count is None else count
        found = []
        try:
            for index, feeds in enumerate(chunks, start=first):
                prior = np.array(params["weight_prior"] if index == 0 else 0.0, np.float32)
                outputs = self.session.run([*feeds, prior])
                self._check_finite(outputs, index, count)
                found.append({**{name: float(outputs[name]) for name in self.graph.losses},
                              "batch_stats": {bn: (outputs[m], outputs[s]) for bn, (m, s) in self.session.bn_outputs.items()}})
        except BaseException:
            self.session.reset_grad()  # the next step starts from fresh gradients
            raise
        return found

    def loss_totals(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        """Each loss summed over the chunks' ``outputs`` (of :meth:`gradients`) in chunk order."""
        totals = dict.fromkeys(self.graph.losses, 0.0)
        for losses in outputs:
            for name in totals:
                totals[name] += losses[name]
        return totals

    def apply_gradients(self, params: dict[str, Any], batch_stats: list[dict[str, tuple[np.ndarray, np.ndarray]]],
                        chunk_size: int) -> None:
        """One solver update from the gradients in the engine's buffers, then fresh buffers and the
        running statistics from each chunk's ``batch_stats`` in chunk order."""
        try:
            solver = self.solver
            if solver.kind != params["solver_type"]:  # a new solver starts from a zero state
                solver = self.engine.solver(params["solver_type"], self.session, *self._engine)
            solver.apply(params)
        finally:
            self.session.reset_grad()  # also after a failure: the next step must not add to these gradients
        self.solver = solver
        for stats in batch_stats:
            self._update_running_stats(stats, chunk_size, params.get("batchnorm_momentum", "auto"))

    def _check_finite(self, outputs: dict[str, np.ndarray], index: int, count: int) -> None:
        bad = [name for name in self.graph.losses if not np.isfinite(outputs[name])]
        where = f"chunk {index + 1} of {count}"
        if bad:
            values = ", ".join(f"{name}={float(outputs[name])}" for name in bad)
            raise DLNonFiniteError(f"{where}: the loss went non-finite ({values}); no update was applied")
        if not np.isfinite(outputs[GRADIENT_CHECK]):
            raise DLNonFiniteError(f"{where}: a gradient went non-finite (or the sum of the gradients past float32's "
                                   f"3.4e38) although the loss is finite; no update was applied")

    def _update_running_stats(self, stats: dict[str, tuple[np.ndarray, np.ndarray]], chunk_size: int,
                              momentum: float | str = "auto") -> None:
        """running = m * running + (1 - m) * batch, with the unbiased batch variance (ONNX BatchNormalization's
        convention: m weighs the old value; PyTorch's momentum is 1 - m). m: ``momentum`` (the parameter
        ``batchnorm_momentum``), or each node's own momentum attribute when it is 'auto'."""
        for bn in self.graph.batchnorms:
            mean, inv_std = (np.asarray(a, np.float64) for a in stats[bn.node])
            n = chunk_size * self.graph.bn_elements.get(bn.node, 0)
            variance = 1.0 / np.square(inv_std) - bn.epsilon  # the engine keeps 1 / sqrt(var + eps)
            if n > 1:
                variance *= n / (n - 1)
            m = bn.momentum if momentum == "auto" else float(momentum)
            self.running[bn.mean] = (m * self.running[bn.mean] + (1 - m) * mean).astype(np.float32)
            self.running[bn.var] = (m * self.running[bn.var] + (1 - m) * variance).astype(np.float32)

    def weights(self) -> dict[str, np.ndarray]:
        """Copies of every trained weight and running statistic."""
        return {**self.session.weights(), **{k: v.copy() for k, v in self.running.items()}}
