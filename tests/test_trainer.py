"""The training step above the engine, on a fake engine (onnx_dl.trainer.Engine): what the step promises
(losses summed over chunks, one update, nothing changed after a non-finite loss or gradient, batch-norm
running statistics from the formula) holds whatever engine runs the graph."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest

from onnx_dl import graph as g
from onnx_dl.engine.session import GRADIENT_CHECK
from onnx_dl.errors import DLNonFiniteError
from onnx_dl.trainer import Engine, Trainer
from onnx_dl.training_graph import TrainingGraph

BN = g.BatchNormStats(node="bn", input="x", mean="bn.mean", var="bn.var", momentum=0.9, epsilon=1e-5)


class FakeSession:
    """A 'network' with one weight w; each chunk's loss is the first feed, its gradient the second."""

    def __init__(self, tg: TrainingGraph, runtime: str, threads: int, deterministic: bool,
                 chunk_size: int | None = None) -> None:
        self.w = np.array([1.0, 2.0], np.float32)
        self.grad = np.zeros(2, np.float32)
        self.bn_outputs = {BN.node: ("batch_mean", "batch_inv_std")}
        self.resets = 0

    def run(self, feeds: list[np.ndarray]) -> dict[str, Any]:
        loss, gradient, mean, inv_std, _prior = feeds
        self.grad += gradient
        return {"loss_total": np.float32(loss[0]), GRADIENT_CHECK: np.float32(np.sum(gradient)),
                "batch_mean": mean, "batch_inv_std": inv_std}

    def reset_grad(self) -> None:
        self.grad[:] = 0
        self.resets += 1

    def weights(self) -> dict[str, np.ndarray]:
        return {"w": self.w.copy()}


class FakeSolver:
    """Plain gradient descent with the learning rate of the parameters."""

    built: list[str] = []

    def __init__(self, kind: str, session: FakeSession, runtime: str, threads: int, deterministic: bool,
                 state: Any = None, step: int = 0) -> None:
        self.kind, self.session, self.step_count = kind, session, step
        FakeSolver.built.append(kind)

    def apply(self, params: dict[str, Any]) -> None:
        self.session.w -= params["learning_rate"] * self.session.grad
        self.step_count += 1


FAKE = Engine(session=FakeSession, solver=FakeSolver)


def _trainer(elements: int = 4) -> Trainer:
    tg = TrainingGraph(model=onnx.ModelProto(), inputs=["loss", "grad", "mean", "inv_std"], losses=["loss_total"],
                       trainable=["w"], batchnorms=[BN], bn_elements={BN.node: elements})
    running = {BN.mean: np.zeros(3, np.float32), BN.var: np.ones(3, np.float32)}
    return Trainer(tg, running, PARAMS, "cpu", 1, False, engine=FAKE)


PARAMS = {"solver_type": "sgd", "learning_rate": 0.5, "weight_prior": 0.0}


def _chunk(loss: float, grad: list[float], mean: list[float] | None = None,
           inv_std: list[float] | None = None) -> list[np.ndarray]:
    return [np.array([loss] * 2, np.float32), np.array(grad, np.float32),
            np.array(mean or [0.0, 1.0, 2.0], np.float32), np.array(inv_std or [1.0, 0.5, 2.0], np.float32)]


def test_losses_add_over_chunks_and_one_update_uses_the_summed_gradient() -> None:
    trainer = _trainer()
    losses = trainer.step([_chunk(1.5, [1.0, -2.0]), _chunk(0.25, [0.5, 0.5])], PARAMS)
    assert losses == {"loss_total": pytest.approx(1.75)}
    np.testing.assert_allclose(trainer.session.w, [1.0 - 0.5 * 1.5, 2.0 - 0.5 * -1.5])
    assert trainer.solver.step_count == 1 and trainer.session.resets == 1


@pytest.mark.parametrize("bad, message", [
    (_chunk(float("nan"), [1.0, 1.0]), "chunk 2 of 2: the loss went non-finite"),
    (_chunk(1.0, [float("inf"), 1.0]), "chunk 2 of 2: a gradient went non-finite .* although the loss is finite"),
])
def test_a_non_finite_chunk_changes_nothing(bad: list[np.ndarray], message: str) -> None:
    trainer = _trainer()
    running = {k: v.copy() for k, v in trainer.running.items()}
    with pytest.raises(DLNonFiniteError, match=message):
        trainer.step([_chunk(1.0, [1.0, 1.0]), bad], PARAMS)
    np.testing.assert_array_equal(trainer.session.w, [1.0, 2.0])
    assert trainer.solver.step_count == 0 and not trainer.session.grad.any()  # gradients discarded
    for name, value in running.items():
        np.testing.assert_array_equal(trainer.running[name], value)


def test_a_step_without_update_only_reports_losses() -> None:
    trainer = _trainer()
    assert trainer.step([_chunk(2.0, [1.0, 1.0])], PARAMS, update=False) == {"loss_total": 2.0}
    np.testing.assert_array_equal(trainer.session.w, [1.0, 2.0])
    assert not trainer.session.grad.any()


def test_a_new_solver_type_starts_a_new_solver_from_the_engine() -> None:
    FakeSolver.built.clear()
    trainer = _trainer()
    trainer.step([_chunk(1.0, [1.0, 1.0])], PARAMS)
    trainer.step([_chunk(1.0, [1.0, 1.0])], dict(PARAMS, solver_type="adam"))
    assert FakeSolver.built == ["sgd", "adam"] and trainer.solver.kind == "adam" and trainer.solver.step_count == 1


def test_running_statistics_follow_the_formula_per_chunk() -> None:
    """running = m * running + (1 - m) * batch, batch variance unbiased: (1 / inv_std^2 - eps) * n / (n - 1),
    n = chunk size * values per channel; one update per chunk, in order."""
    trainer = _trainer(elements=4)
    chunks = [_chunk(1.0, [0.0, 0.0], [0.5, -1.0, 3.0], [2.0, 0.25, 1.0]),
              _chunk(1.0, [0.0, 0.0], [1.5, 0.0, -3.0], [1.0, 4.0, 0.5])]
    trainer.step(chunks, PARAMS)
    mean, var = np.zeros(3), np.ones(3)
    n = 2 * 4  # chunk size (the first feed's length) x values per channel
    for chunk in chunks:
        batch_var = (1.0 / chunk[3].astype(np.float64) ** 2 - BN.epsilon) * n / (n - 1)
        mean = 0.9 * mean + 0.1 * chunk[2].astype(np.float64)
        var = 0.9 * var + 0.1 * batch_var
    np.testing.assert_allclose(trainer.running[BN.mean], mean, rtol=1e-6)
    np.testing.assert_allclose(trainer.running[BN.var], var, rtol=1e-6)
