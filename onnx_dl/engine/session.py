"""Forward and backward passes on ONNX Runtime training (the only user of its training API).

A :class:`TrainingSession` generates the training artifacts of a :class:`TrainingGraph` (its
average pools first rewritten as convolutions: :mod:`onnx_dl.pool_gradients`) in a
temporary folder, adds the weight prior's gradient to it (:func:`onnx_dl.training_graph.add_prior_gradients`),
replaces slow kernels of the generated graph by equivalent faster ones
(:mod:`onnx_dl.fast_gradients`; on the CPU also :mod:`onnx_dl.nchwc`, the blocked layout for
depthwise and grouped convolutions), adds two kinds of outputs and loads it into an ``api.Module``:

- the batch mean and inverse standard deviation of every batch-norm layer, so the running
  statistics can be updated on the host after a step has succeeded (the engine's own update is
  biased, has a baked momentum and would happen before we know the step is finite);
- ``gradient_check``: sum(g) over every gradient, finite exactly when all gradients are (or when the
  sum passes float32's largest value, 3.4e38: a step no one wants either).

Gradients accumulate in the engine's buffers over the chunks of a step until :meth:`reset_grad`.
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import fast_gradients, nchwc, pool_gradients
from .. import graph as g
from ..errors import DLRuntimeError
from ..onnx_builder import GraphBuilder
from ..training_graph import TrainingGraph, add_prior_gradients
from .runtime import COUNTERS, ort, require_device, session_options
from .runtime import training as training_api

GRADIENT_CHECK = "gradient_check"

# onnxblock keeps the model it builds on in one process-wide accessor: two threads generating
# artifacts at once fail with "Base onnx model already exists" (two models trained in two threads).
_ARTIFACTS_LOCK = threading.Lock()


def _expose_outputs(training: onnx.ModelProto, tg: TrainingGraph) -> dict[str, tuple[str, str]]:
    """Add BN batch statistics and the gradient check as outputs; return {bn node: (mean, inv_std)}."""
    b = GraphBuilder(training.graph, prefix="probe/")
    bn_outputs: dict[str, tuple[str, str]] = {}
    by_input = {bn.input: bn.node for bn in tg.batchnorms}
    for node in training.graph.node:
        if node.op_type == "BatchNormInternal" and node.input[0] in by_input:
            mean, inv_std = node.output[3], node.output[4]
            bn_outputs[by_input[node.input[0]]] = (mean, inv_std)
            b.output(mean, [None])
            b.output(inv_std, [None])
    check = b.const(0.0, "zero")
    for node in training.graph.node:
        if node.op_type == "InPlaceAccumulatorV2":
            # one read of each gradient: sum(g * 0) wrote a product of every gradient first
            check = b.op("Add", [check, b.op("ReduceSum", [node.input[1]], "g_sum", keepdims=0)], "g_total")
    training.graph.node.append(helper.make_node("Identity", [check], [GRADIENT_CHECK], name="gradient_check_identity"))
    b.output(GRADIENT_CHECK, [], TensorProto.FLOAT)
    return bn_outputs


def device_string(runtime: str, device_id: int = 0) -> str:
    """The device of an ``api.Module`` on ``runtime``: 'cpu', or 'cuda:<device_id>' on 'gpu'."""
    return f"cuda:{device_id}" if runtime == "gpu" else "cpu"


class TrainingSession:
    """One training graph loaded in the engine: parameters, gradient buffers and the step call.

    ``chunk_size``: the images per run the session will mostly see (the model's batch_size), for the
    layout rewrites that pay only at a fixed batch size (other sizes take the engine's own kernels)."""

    def __init__(self, tg: TrainingGraph, runtime: str, threads: int, deterministic: bool, device_id: int = 0,
                 chunk_size: int | None = None) -> None:
        require_device(runtime)
        engine = training_api()
        self.graph = tg
        self.chunk_size = chunk_size
        self.device_id = device_id if runtime == "gpu" else 0  # the CUDA device index (parameter 'gpu')
        self.device = device_string(runtime, device_id)
        options = session_options(threads, deterministic)
        with tempfile.TemporaryDirectory(prefix="onnx_dl_") as folder:
            forward = onnx.ModelProto()
            forward.CopyFrom(tg.model)
            pool_gradients.rewrite(forward, g.tensor_shapes(forward))
            try:
                with _ARTIFACTS_LOCK:
                    engine.artifacts.generate_artifacts(
                        forward, requires_grad=tg.trainable, frozen_params=[], loss=None, optimizer=None,
                        artifact_directory=folder,
                    )
                training = onnx.load(os.path.join(folder, "training_model.onnx"))
                add_prior_gradients(training, tg)
                shapes = g.tensor_shapes(tg.model)
                # CPU threads decide whether longer Sums pay as Add chains; on a GPU only two-term ones change
                self.rewrites = fast_gradients.rewrite(
                    training, shapes, threads if runtime == "cpu" else 1,
                    nchwc.turned_input_gradient_pays(chunk_size) if runtime == "cpu" else None)
                if runtime == "cpu":  # the blocked kernels are CPU-only
                    self.rewrites.update(nchwc.rewrite(training, shapes, chunk_size))
                self.bn_outputs = _expose_outputs(training, tg)
                onnx.save(training, os.path.join(folder, "training_model.onnx"))
                self.state = engine.api.CheckpointState.load_checkpoint(os.path.join(folder, "checkpoint"))
                self.module = engine.api.Module(
                    os.path.join(folder, "training_model.onnx"), self.state, None, device=self.device,
                    session_options=options,
                )
            except DLRuntimeError:
                raise
            except Exception as exc:
                raise DLRuntimeError(f"the engine could not build the training session: {exc}") from exc
        self.output_names: list[str] = list(self.module.output_names())
        self.trainable: list[str] = list(tg.trainable)

    def run(self, feeds: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Forward and backward on one chunk; gradients add to the buffers. Returns every output."""
        try:
            with COUNTERS.timing("run"):
                outputs = self.module(*feeds)
        except Exception as exc:
            raise DLRuntimeError(f"the engine failed in the training step: {exc}") from exc
        if not isinstance(outputs, tuple):
            outputs = (outputs,)
        return dict(zip(self.output_names, outputs))

    def reset_grad(self) -> None:
        """Make the next :meth:`run` overwrite the gradient buffers instead of adding to them."""
        self.module.lazy_reset_grad()

    def parameter(self, name: str) -> np.ndarray:
        """Parameter ``name`` in the engine's buffer: a NumPy view on the CPU (writes change the model),
        a host copy on a GPU."""
        return self.state.parameters[name].data

    def gradient(self, name: str) -> np.ndarray:
        """The accumulated gradient of ``name``: a NumPy view of the engine's buffer on the CPU."""
        return self.state.parameters[name].grad

    def device_values(self, name: str) -> tuple[Any, Any]:
        """The live OrtValues of parameter ``name`` and its gradient, on the session's device (what an
        update session binds on a GPU). ONNX Runtime 1.19's public ``Parameter`` offers host copies only,
        so this one place reaches its wrapped C object."""
        found = self.state.parameters[name]._parameter  # noqa: SLF001 (see docstring)
        rt = ort()
        return rt.OrtValue(found.data), rt.OrtValue(found.grad)

    def weights(self) -> dict[str, np.ndarray]:
        """A copy of every trained parameter."""
        return {name: np.array(self.parameter(name), copy=True) for name in self.trainable}

    def load_weights(self, values: dict[str, np.ndarray]) -> None:
        """Overwrite trained parameters with ``values`` (restoring a snapshot)."""
        for name, value in values.items():
            self.state.parameters[name].data = np.ascontiguousarray(value, dtype=np.float32)
