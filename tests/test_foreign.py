"""Bring your own ONNX: exporter-style networks load, train, change class count, freeze and export
with parity; untrainable graphs are refused with the node and operator named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import assert_unchanged, snapshot
from foreign_models import dropout_style, keras_style, torch_segmentation, torch_style, with_node
from onnx import TensorProto, helper, numpy_helper

import onnx_dl as dl
from onnx_dl import score_head
from onnx_dl.engine import runtime
from onnx_dl.foreign import GRADIENT_OPS

SIZE = 16


def _read(tmp_path: Path, network: onnx.ModelProto, model_type: str = "classification") -> dl.DLModel:
    path = tmp_path / f"foreign_{len(list(tmp_path.iterdir()))}.onnx"
    onnx.save(network, path)
    return dl.read_dl_model(path, type=model_type)


def _samples(count: int, labels: list[int], seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.normal(0, 40, (SIZE, SIZE, 3)).astype(np.float32) + 30 * labels[i % len(labels)],
             "image_label_id": labels[i % len(labels)]} for i in range(count)]


def _segmentation_samples(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        labels = rng.integers(0, 3, (SIZE, SIZE)).astype(np.uint8)
        image = np.repeat((labels[..., None] * 60.0 - 60.0), 3, axis=2) + rng.normal(0, 10, (SIZE, SIZE, 3))
        result.append({"image": image.astype(np.float32), "segmentation_image": labels})
    return result


def _initializers(model: dl.DLModel) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i).copy() for i in model.network().graph.initializer}


def _plain_runtime(path: Path, images: np.ndarray) -> np.ndarray:
    """The written file run by a plain onnxruntime.InferenceSession (no onnx_dl code)."""
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    session = runtime.ort().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def _batch(samples: list[dict[str, Any]]) -> np.ndarray:
    return np.stack([np.transpose(s["image"], (2, 0, 1)) for s in samples]).astype(np.float32)


EXPORTS = {
    "torch_opset13": lambda: torch_style(opset=13),
    "torch_opset17": lambda: torch_style(opset=17),
    "torch_opset22": lambda: torch_style(opset=22),  # newer than the engine: converted down to 17
    "torch_training_export": lambda: torch_style(training_export=True),
    "keras_tf2onnx": keras_style,
    "dropout": dropout_style,
}


@pytest.mark.parametrize("style", sorted(EXPORTS))
def test_exporter_patterns_load_train_retarget_freeze_and_export(tmp_path: Path, style: str) -> None:
    model = _read(tmp_path, EXPORTS[style]())
    assert dl.get_dl_model_param(model, "image_dimensions") == [SIZE, SIZE, 3]
    assert dl.get_dl_model_param(model, "num_classes") == 3
    for name, value in [("batch_size", 8), ("solver_type", "adam"), ("learning_rate", 0.01)]:
        dl.set_dl_model_param(model, name, value)
    batch = _samples(8, [0, 1, 2])
    losses = [dl.train_dl_model_batch(model, batch)["total_loss"] for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0], losses

    dl.set_dl_model_param(model, "class_ids", [0, 1, 2, 3, 4])
    dl.set_dl_model_param(model, "freeze_backbone", True)
    before = _initializers(model)
    bigger = _samples(8, [0, 1, 2, 3, 4], seed=1)
    losses = [dl.train_dl_model_batch(model, bigger)["total_loss"] for _ in range(20)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    after = _initializers(model)
    head = {n for n in after if not np.array_equal(before[n], after[n])}
    assert head and all(n in score_head.head_weights(model.network(), score_head.logits_output(model.network())[0])
                        for n in head), head  # only the score layer moved; BN statistics included

    path = tmp_path / "exported.onnx"
    dl.write_dl_model(model, path)
    test = _samples(5, [0, 1, 2, 3, 4], seed=2)
    expected = np.array([[r["classification_confidences"][r["classification_class_ids"].index(c)] for c in range(5)]
                         for r in dl.apply_dl_model(model, test)])
    np.testing.assert_allclose(_plain_runtime(path, _batch(test)), expected, rtol=1e-5, atol=1e-6)
    again = dl.read_dl_model(path)
    assert dl.get_dl_model_param(again, "freeze_backbone") is True
    assert dl.get_dl_model_param(again, "num_classes") == 5


def test_keras_nhwc_input_becomes_nchw(tmp_path: Path) -> None:
    model = _read(tmp_path, keras_style())
    image = model.network().graph.input[0]
    assert image.name == "input_1"
    dims = image.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    assert not any(n.op_type == "Transpose" for n in model.network().graph.node)
    # the original graph (NHWC) and the rewritten one (NCHW) give the same probabilities
    original = keras_style()
    test = _samples(3, [0, 1, 2])
    nhwc = np.stack([s["image"] for s in test]).astype(np.float32)
    session = runtime.ort().InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"input_1": nhwc})[0]
    ours = np.array([[r["classification_confidences"][r["classification_class_ids"].index(c)] for c in range(3)]
                     for r in dl.apply_dl_model(model, test)])
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_softmax_model_trains_on_logits_and_writes_one_softmax(tmp_path: Path) -> None:
    model = _read(tmp_path, keras_style())
    dl.set_dl_model_param(model, "batch_size", 4)
    result = dl.train_dl_model_batch(model, _samples(4, [0, 1, 2]))
    assert result["loss_cross_entropy"] > 0.1  # cross-entropy of logits, not of probabilities
    path = tmp_path / "k.onnx"
    dl.write_dl_model(model, path)
    assert sum(n.op_type == "Softmax" for n in onnx.load(path).graph.node) == 1


def test_dropout_is_on_in_training_and_off_in_apply(tmp_path: Path) -> None:
    model = _read(tmp_path, dropout_style(ratio=0.5))
    for name, value in [("batch_size", 8), ("learning_rate", 1e-12)]:  # weights stay (practically) put
        dl.set_dl_model_param(model, name, value)
    batch = _samples(8, [0, 1, 2])
    losses = {round(dl.train_dl_model_batch(model, batch)["total_loss"], 6) for _ in range(6)}
    assert len(losses) > 1  # masks change from step to step
    first, second = (dl.apply_dl_model(model, batch) for _ in range(2))
    assert first == second  # inference: deterministic, no dropout
    written = tmp_path / "d.onnx"
    dl.write_dl_model(model, written)
    dropout = [n for n in onnx.load(written).graph.node if n.op_type == "Dropout"]
    assert dropout and all(len(n.input) <= 2 for n in dropout)  # no training_mode in the written file


def test_dropout_runs_repeat_exactly(tmp_path: Path) -> None:
    runs = []
    for _ in range(2):
        model = _read(tmp_path, dropout_style(ratio=0.5))
        dl.set_dl_model_param(model, "batch_size", 8)
        runs.append([dl.train_dl_model_batch(model, _samples(8, [0, 1, 2]))["total_loss"] for _ in range(4)])
    assert runs[0] == runs[1]


def test_frozen_layers_by_name_and_prefix_stay_bit_identical(tmp_path: Path) -> None:
    model = _read(tmp_path, torch_style())
    dl.set_dl_model_param(model, "frozen_layers", ["conv1.weight", "bn1.*"])
    dl.set_dl_model_param(model, "batch_size", 8)
    total = dl.get_dl_model_param(model, "num_trainable_params")
    assert total == 16 * 8 * 9 + 16 + 3 * 16 + 3 + 8  # conv2, fc and conv1's bias
    before = _initializers(model)
    for _ in range(3):
        dl.train_dl_model_batch(model, _samples(8, [0, 1, 2]))
    after = _initializers(model)
    for name in ("conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        assert np.array_equal(before[name], after[name]), name
    for name in ("conv1.bias", "conv2.weight", "fc.weight"):
        assert not np.array_equal(before[name], after[name]), name


def test_frozen_batchnorm_uses_running_statistics(tmp_path: Path) -> None:
    """With everything but the head frozen, a step's loss equals the loss computed from apply's
    probabilities (the frozen BN runs in inference form in training too)."""
    model = _read(tmp_path, torch_style())
    dl.set_dl_model_param(model, "freeze_backbone", True)
    dl.set_dl_model_param(model, "batch_size", 4)
    batch = _samples(4, [0, 1, 2])
    results = dl.apply_dl_model(model, batch)
    probabilities = [r["classification_confidences"][r["classification_class_ids"].index(s["image_label_id"])]
                     for r, s in zip(results, batch)]
    loss = dl.train_dl_model_batch(model, batch)["loss_cross_entropy"]
    assert loss == pytest.approx(-np.mean(np.log(probabilities)), rel=1e-5)


def test_freezing_errors_change_nothing(tmp_path: Path) -> None:
    model = _read(tmp_path, torch_style())
    before = snapshot(model)
    with pytest.raises(dl.DLParamError, match="'nonexistent.weight' matches no trained weight"):
        dl.set_dl_model_param(model, "frozen_layers", ["nonexistent.weight"])
    with pytest.raises(dl.DLParamError, match="expected True, False"):
        dl.set_dl_model_param(model, "freeze_backbone", "yes")
    assert_unchanged(before, model)


def test_segmentation_foreign_model_freezes_and_exports(tmp_path: Path) -> None:
    model = _read(tmp_path, torch_segmentation(), "segmentation")
    for name, value in [("batch_size", 4), ("solver_type", "adam"), ("learning_rate", 0.01)]:
        dl.set_dl_model_param(model, name, value)
    batch = _segmentation_samples(4)
    losses = [dl.train_dl_model_batch(model, batch)["total_loss"] for _ in range(10)]
    assert losses[-1] < losses[0]
    dl.set_dl_model_param(model, "freeze_backbone", True)
    before = _initializers(model)
    dl.train_dl_model_batch(model, batch)
    after = _initializers(model)
    assert {n for n in after if not np.array_equal(before[n], after[n])} == {"head.weight", "head.bias"}
    path = tmp_path / "seg.onnx"
    dl.write_dl_model(model, path)
    results = dl.apply_dl_model(model, batch)
    plain = _plain_runtime(path, _batch(batch))
    np.testing.assert_allclose(plain.max(axis=1), np.stack([r["segmentation_confidence"] for r in results]),
                               rtol=1e-5, atol=1e-6)
    assert np.array_equal(plain.argmax(axis=1), np.stack([r["segmentation_image"] for r in results]))


@pytest.mark.parametrize("name", ["classifier_compact", "segmentation_compact"])
def test_bundled_models_export_parity(tmp_path: Path, name: str) -> None:
    model = dl.read_dl_model(name)
    dl.set_dl_model_param(model, "image_dimensions", [32, 32, 3])
    dl.set_dl_model_param(model, "batch_size", 2)
    rng = np.random.default_rng(0)
    images = [rng.uniform(-127, 128, (32, 32, 3)).astype(np.float32) for _ in range(2)]
    if name == "classifier_compact":
        samples = [{"image": im, "image_label_id": i} for i, im in enumerate(images)]
    else:
        samples = [{"image": im, "segmentation_image": rng.integers(0, 4, (32, 32))} for im in images]
    dl.train_dl_model_batch(model, samples)  # BN statistics and weights move away from their start
    path = tmp_path / f"{name}.onnx"
    dl.write_dl_model(model, path)
    plain = _plain_runtime(path, _batch(samples))
    results = dl.apply_dl_model(model, samples)
    if name == "classifier_compact":
        ours = np.array([[r["classification_confidences"][r["classification_class_ids"].index(c)]
                          for c in range(plain.shape[1])] for r in results])
    else:
        ours = np.stack([r["segmentation_confidence"] for r in results])
        plain = plain.max(axis=1)
    np.testing.assert_allclose(plain, ours, rtol=1e-5, atol=1e-6)


def test_untrainable_operator_is_refused_naming_node_and_operator(tmp_path: Path) -> None:
    network = with_node(torch_style(), "/relu/Relu_output_0", "Softplus")
    with pytest.raises(dl.DLModelFileError, match=r"'inserted_Softplus' \(Softplus\).*no gradient for Softplus "
                                                  r"\(no training rewrite exists for Softplus\)"):
        _read(tmp_path, network)


def test_untrainable_operator_before_the_first_weight_is_fine(tmp_path: Path) -> None:
    network = with_node(torch_style(), "input.1", "Floor")  # input preprocessing: no gradient needed
    model = _read(tmp_path, network)
    dl.set_dl_model_param(model, "batch_size", 2)
    assert np.isfinite(dl.train_dl_model_batch(model, _samples(2, [0, 1]))["total_loss"])


def test_resize_without_a_rewrite_is_refused_saying_why(tmp_path: Path) -> None:
    network = torch_segmentation()
    scales = numpy_helper.from_array(np.array([1, 1, 1, 1], np.float32), "scales")
    network.graph.initializer.append(scales)
    network = with_node(network, "er", "Identity")
    node = next(n for n in network.graph.node if n.name == "inserted_Identity")
    node.op_type = "Resize"
    node.input.extend(["", "scales"])
    node.attribute.append(helper.make_attribute("mode", "cubic"))
    with pytest.raises(dl.DLModelFileError, match=r"no gradient for Resize \(mode 'cubic' is not rewritten"):
        _read(tmp_path, network, "segmentation")


def test_resize_with_sizes_from_image_values_is_refused_at_read(tmp_path: Path) -> None:
    """A rewrite that needs sizes runs once at read when the export fixes H and W: sizes computed from
    image values (here: the shape plus 0 * max(image)) cannot be fixed for training."""
    network = torch_segmentation(size=SIZE)
    network = with_node(network, "er", "Identity")
    node = next(n for n in network.graph.node if n.name == "inserted_Identity")
    node.op_type, node.name = "Resize", "upsample"
    node.input.extend(["", "", "sizes"])
    network.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    sizes = [helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
             helper.make_node("Mul", ["peak", "zero"], ["nothing"]),
             helper.make_node("Cast", ["nothing"], ["nothing_int"], to=TensorProto.INT64),
             helper.make_node("Shape", ["er"], ["er_shape"]),
             helper.make_node("Add", ["er_shape", "nothing_int"], ["sizes"])]
    index = next(i for i, n in enumerate(network.graph.node) if n.name == "upsample")
    for offset, extra in enumerate(sizes):
        network.graph.node.insert(index + offset, extra)
    with pytest.raises(dl.DLModelFileError, match=r"'upsample' \(Resize\).*depends on the image values"):
        _read(tmp_path, network, "segmentation")


def test_two_image_inputs_are_refused(tmp_path: Path) -> None:
    network = torch_style()
    network.graph.input.append(helper.make_tensor_value_info("second", TensorProto.FLOAT, ["N", 3, SIZE, SIZE]))
    with pytest.raises(dl.DLModelFileError, match="exactly one image input.*'input.1', 'second'"):
        _read(tmp_path, network)


def test_integer_only_graph_is_refused(tmp_path: Path) -> None:
    weights = numpy_helper.from_array(np.ones((3, 3 * SIZE * SIZE), np.int64), "w")
    nodes = [helper.make_node("Cast", ["image"], ["ints"], to=TensorProto.INT64),
             helper.make_node("Flatten", ["ints"], ["flat"]),
             helper.make_node("MatMul", ["flat", "wt"], ["scores_int"]),
             helper.make_node("Transpose", ["w"], ["wt"]),
             helper.make_node("Cast", ["scores_int"], ["scores"], to=TensorProto.FLOAT)]
    nodes = [nodes[0], nodes[1], nodes[3], nodes[2], nodes[4]]
    graph = helper.make_graph(nodes, "ints", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])], [weights])
    network = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    network.ir_version = 9
    with pytest.raises(dl.DLModelFileError, match="no float weights"):
        _read(tmp_path, network)


def test_checker_failure_is_reported(tmp_path: Path) -> None:
    network = torch_style()
    network.graph.node[0].input[1] = "missing.weight"
    with pytest.raises(dl.DLModelFileError, match="ONNX checker"):
        _read(tmp_path, network)


def _engine_trains(op_type: str) -> bool:
    """Whether ONNX Runtime builds and runs one training step of weight -> op_type -> sum."""
    import os
    import tempfile
    shape = [2, 4, 6, 6]
    nodes = [helper.make_node("Add", ["x", "w"], ["h"]), helper.make_node(op_type, ["h"], ["y"]),
             helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
                              [numpy_helper.from_array(np.full(shape, 0.5, np.float32), "w")])
    network = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    network.ir_version = 9
    engine = runtime.training()
    with tempfile.TemporaryDirectory() as folder:
        try:
            engine.artifacts.generate_artifacts(network, requires_grad=["w"], frozen_params=[], loss=None,
                                                optimizer=None, artifact_directory=folder)
            state = engine.api.CheckpointState.load_checkpoint(os.path.join(folder, "checkpoint"))
            module = engine.api.Module(os.path.join(folder, "training_model.onnx"), state, None, device="cpu")
            module(np.ones(shape, np.float32))
            return True
        except Exception:  # noqa: BLE001 - any refusal by the engine means "does not train"
            return False


@pytest.mark.parametrize("op_type", ["Relu", "Sigmoid", "Dropout", "GlobalAveragePool", "HardSwish", "Softplus",
                                     "GlobalMaxPool", "Elu"])
def test_gradient_table_matches_the_engine(op_type: str) -> None:
    """The measured operator table agrees with the engine on unary operators in and out of it."""
    assert _engine_trains(op_type) == (op_type in GRADIENT_OPS)


def test_weight_read_through_a_transpose_is_trained(tmp_path: Path) -> None:
    # TorchScript exports nn.Linear on a channels-last tensor as MatMul(x, Transpose(weight)) (convnext)
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(0, 0.1, (3, 3 * SIZE * SIZE)).astype(np.float32), np.zeros(3, np.float32)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]),
             helper.make_node("Transpose", ["fc.weight"], ["fc.weight_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["flat", "fc.weight_t"], ["mm"]),
             helper.make_node("Add", ["mm", "fc.bias"], ["logits"])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                          ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(weight, "fc.weight"), numpy_helper.from_array(bias, "fc.bias")])
    network = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    network.ir_version = 8
    model = _read(tmp_path, network)
    assert dl.get_dl_model_param(model, "num_trainable_params") == weight.size + bias.size
    dl.set_dl_model_param(model, "batch_size", 4)
    dl.set_dl_model_param(model, "weight_prior", 0.01)
    dl.train_dl_model_batch(model, _samples(4, [0, 1, 2]))
    assert not np.array_equal(_initializers(model)["fc.weight"], weight)
