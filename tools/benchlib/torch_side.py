"""The PyTorch eager peer of ``tools/bench.py``: the very training graph onnx_dl hands to its engine
(network + loss + weight prior, converted by ``tools/onnx_to_torch.py``), the same initial weights, the
same collated feeds; SGD is HALCON's rule with ``torch._foreach`` kernels, Adam is ``torch.optim.Adam``
(epsilon outside the root, as onnx_dl).

torch is imported inside the functions, so that the worker times the import and the parent never
loads it.
"""

from __future__ import annotations

import time
from typing import Any

from .cases import CHECK_STEPS, Case, prepare
from .workers import peak_rss_mb, timed_steps


class TorchSide:
    """Worker side running the same training graph in PyTorch eager."""

    def setup(self, case: dict[str, Any], solver: str, threads: int,
              session_config: dict[str, str] | None = None) -> dict[str, Any]:
        """Import torch (timed), convert the case's training graph, run the checked steps; returns their
        times and losses (``session_config`` is onnx_dl's and ignored here)."""
        start = time.perf_counter()
        import torch
        import_s = time.perf_counter() - start
        from onnx_to_torch import OnnxNet

        from onnx_dl import freezing
        torch.set_num_threads(threads)
        self.torch = torch
        model, samples = prepare(Case(**case), solver)
        params = model.params
        network = model.network()
        frozen = freezing.frozen_weights(network, params, model.kind.head_weights)
        tg = model.kind.build_training_graph(freezing.training_form(network, frozen), params)
        self.kind, self.samples, self.params = model.kind, samples, dict(params)
        self.feeds: list[Any] = []
        self.net = OnnxNet(tg.model, tg.trainable)
        self.optimizer = make_optimizer([self.net.parameter(name) for name in tg.trainable], params)
        self.loss_names = tg.losses
        build_s = time.perf_counter() - start - import_s
        losses, times = [], []
        for _ in range(CHECK_STEPS):
            self.collate()
            start = time.perf_counter()
            losses.append(self.step())
            times.append(time.perf_counter() - start)
        return {"import_s": import_s, "build_s": build_s, "first_step_s": times[0], "second_step_s": times[1],
                "losses": losses, "threads": torch.get_num_threads()}

    def collate(self) -> None:
        """The feeds of the next step, as onnx_dl collates them (untimed: the peer gets them for free),
        carrying state from step to step as onnx_dl does (a detector's positive-anchor average)."""
        import numpy as np

        chunks, _, state = self.kind.train_chunks(self.samples, self.params, 1)
        self.params.update(state)
        self.feeds = [self.torch.from_numpy(np.ascontiguousarray(a))
                      for a in [*chunks[0], np.array(self.params["weight_prior"], np.float32)]]

    def step(self) -> dict[str, float]:
        """One training step on the collated feeds; its losses."""
        for weight in self.optimizer.param_groups[0]["params"]:
            weight.grad = None
        outputs = self.net(*self.feeds)
        outputs[self.loss_names[0]].backward()
        self.optimizer.step()
        return {name: float(outputs[name].item()) for name in self.loss_names}

    def run(self, steps: int) -> dict[str, Any]:
        """``steps`` timed steps (collation untimed): ``times``, ``cpu_per_wall``."""
        return timed_steps(self.step, steps, untimed=self.collate)

    def finish(self) -> dict[str, Any]:
        """Peak RSS and torch's version."""
        return {"peak_rss_mb": peak_rss_mb(), "versions": {"torch": self.torch.__version__}}


def make_optimizer(weights: list[Any], params: dict[str, Any]) -> Any:
    """The torch optimizer computing onnx_dl's update for the model's ``solver_type``."""
    import torch

    if params["solver_type"] == "sgd":
        return HalconSGD(weights, params["learning_rate"], params["momentum"])
    return torch.optim.Adam(weights, lr=params["learning_rate"], eps=params["adam_epsilon"],
                            betas=(params["adam_beta1"], params["adam_beta2"]))


class HalconSGD:
    """HALCON's SGD in torch: v = momentum * v - lr * g; w = w + v (foreach kernels, no autograd)."""

    def __init__(self, weights: list[Any], lr: float, momentum: float) -> None:
        import torch
        self.param_groups = [{"params": weights}]
        self.velocity = [torch.zeros_like(w) for w in weights]
        self.lr, self.momentum = lr, momentum

    def step(self) -> None:
        """One update of every weight from its gradient."""
        import torch
        weights = self.param_groups[0]["params"]
        with torch.no_grad():
            torch._foreach_mul_(self.velocity, self.momentum)
            torch._foreach_add_(self.velocity, [w.grad for w in weights], alpha=-self.lr)
            torch._foreach_add_(weights, self.velocity)
