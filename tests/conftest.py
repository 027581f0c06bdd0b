"""Small networks built with onnx.helper, and helpers to look inside a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_dl as dl

SIZE, CHANNELS, CLASSES = 4, 2, 3


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], classes: int, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def linear_network(classes: int = CLASSES, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """image (N, 2, 4, 4) -> Flatten -> Gemm(transB) -> logits: gradients known in closed form."""
    rng = np.random.default_rng(seed)
    inits = {"fc.weight": rng.normal(0, 0.3, (classes, CHANNELS * SIZE * SIZE)), "fc.bias": rng.normal(0, 0.1, classes)}
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1)]
    return _model(nodes, inits, classes, opset)


def bn_network(classes: int = CLASSES, training_mode: bool = False, seed: int = 0) -> onnx.ModelProto:
    """image -> BatchNormalization -> GlobalAveragePool -> Flatten -> Gemm: BN sees the raw image."""
    rng = np.random.default_rng(seed)
    inits = {"bn.scale": rng.uniform(0.5, 1.5, CHANNELS), "bn.bias": rng.normal(0, 0.1, CHANNELS),
             "bn.mean": rng.normal(0, 0.1, CHANNELS), "bn.var": rng.uniform(0.5, 1.5, CHANNELS),
             "fc.weight": rng.normal(0, 0.5, (classes, CHANNELS)), "fc.bias": np.zeros(classes)}
    outputs = ["bn_out", "bn_rm", "bn_rv"] if training_mode else ["bn_out"]
    attrs = {"training_mode": 1} if training_mode else {}
    nodes = [helper.make_node("BatchNormalization", ["image", "bn.scale", "bn.bias", "bn.mean", "bn.var"], outputs,
                              epsilon=1e-5, momentum=0.9, **attrs),
             helper.make_node("GlobalAveragePool", ["bn_out"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1)]
    return _model(nodes, inits, classes)


def load(tmp_path: Path, network: onnx.ModelProto, **params: Any) -> dl.DLModel:
    """A DLModel read from ``network`` written to a file, with ``params`` set."""
    path = tmp_path / f"net_{len(list(tmp_path.iterdir()))}.onnx"
    onnx.save(network, path)
    model = dl.read_dl_model(path, type="classification")
    for name, value in params.items():
        dl.set_dl_model_param(model, name, value)
    return model


def weights(model: dl.DLModel) -> dict[str, np.ndarray]:
    """Every initializer of the model's current network."""
    with model.lock:
        return {i.name: numpy_helper.to_array(i).copy() for i in model.network().graph.initializer}


def snapshot(model: dl.DLModel) -> dict[str, Any]:
    """Weights, solver state, step count and parameters: everything a failed call must leave alone."""
    trainer = model._trainer
    return {"weights": weights(model), "params": dict(model.params),
            "solver": trainer.solver.state_arrays() if trainer else None,
            "steps": trainer.solver.step_count if trainer else 0}


def assert_unchanged(before: dict[str, Any], model: dl.DLModel) -> None:
    """Bit-for-bit comparison of two snapshots."""
    after = snapshot(model)
    assert before["params"] == after["params"]
    assert before["steps"] == after["steps"]
    assert before["weights"].keys() == after["weights"].keys()
    for name in before["weights"]:
        assert np.array_equal(before["weights"][name], after["weights"][name]), name
    if before["solver"] is not None:  # a session created lazily by the failed call holds zero state
        for name, state in before["solver"].items():
            for kind, value in state.items():
                assert np.array_equal(value, after["solver"][name][kind]), (name, kind)


def fail_on_engine_run(monkeypatch: pytest.MonkeyPatch, call: int, failure: type[BaseException]) -> None:
    """Make the ``call``-th training run of the engine (a chunk's forward and backward) raise ``failure``."""
    from onnx_dl.engine.session import TrainingSession

    real_run, calls = TrainingSession.run, []

    def run_then_fail(self: TrainingSession, feeds: list[np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(1)
        if len(calls) == call:
            raise failure("stop")
        return real_run(self, feeds)

    monkeypatch.setattr(TrainingSession, "run", run_then_fail)


def image_samples(count: int, labels: list[int], seed: int = 0, scale: float = 1.0) -> list[dict[str, Any]]:
    """Random (4, 4, 2) images with the given labels."""
    rng = np.random.default_rng(seed)
    return [{"image": (rng.normal(0, scale, (SIZE, SIZE, CHANNELS))).astype(np.float32), "image_label_id": labels[i % len(labels)]}
            for i in range(count)]


@pytest.fixture
def linear_model(tmp_path: Path) -> dl.DLModel:
    """The linear network, batch size 4."""
    return load(tmp_path, linear_network(), batch_size=4, image_dimensions=[SIZE, SIZE, CHANNELS])


def conv_segmentation_network(classes: int = CLASSES, seed: int = 0) -> onnx.ModelProto:
    """image (N, 2, 4, 4) -> 1x1 Conv with bias -> logits (N, K, 4, 4): gradients in closed form."""
    rng = np.random.default_rng(seed)
    inits = {"head.weight": rng.normal(0, 0.5, (classes, CHANNELS, 1, 1)), "head.bias": rng.normal(0, 0.1, classes)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "head.weight", "head.bias"], ["logits"], kernel_shape=[1, 1])], "seg",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", CHANNELS, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "H", "W"])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def segmentation_samples(count: int, class_ids: list[int], seed: int = 0) -> list[dict[str, Any]]:
    """Random (4, 4, 2) images with random label images drawn from ``class_ids``."""
    rng = np.random.default_rng(seed)
    return [{"image": rng.normal(0, 1, (SIZE, SIZE, CHANNELS)).astype(np.float32),
             "segmentation_image": rng.choice(class_ids, (SIZE, SIZE)).astype(np.uint8)} for _ in range(count)]


def load_segmentation(tmp_path: Path, **params: Any) -> dl.DLModel:
    """The 1x1-conv segmentation network at 4 x 4, with ``params`` set."""
    path = tmp_path / f"seg_{len(list(tmp_path.iterdir()))}.onnx"
    onnx.save(conv_segmentation_network(), path)
    model = dl.read_dl_model(path, type="segmentation")
    dl.set_dl_model_param(model, "image_dimensions", [SIZE, SIZE, CHANNELS])
    for name, value in params.items():
        dl.set_dl_model_param(model, name, value)
    return model
