"""Head replacement on hand-built head shapes of the zoo (no PyTorch needed): what changes, what stays."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_dl as dl
from conftest import assert_unchanged, snapshot

SIZE, CLASSES = 6, 5


def _network(head: list[onnx.NodeProto], inits: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    """image (N, 3, 6, 6) -> Conv 3x3 -> Relu -> ``head`` -> scores (N, 5)."""
    rng = np.random.default_rng(0)
    all_inits = {"body.weight": rng.normal(0, 0.3, (4, 3, 3, 3)), "body.bias": rng.normal(0, 0.1, 4), **inits}
    nodes = [helper.make_node("Conv", ["image", "body.weight", "body.bias"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["features"]), *head]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(np.asarray(v, np.int64 if k.startswith("shape") else np.float32), k)
         for k, v in all_inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def _squeezenet_head() -> onnx.ModelProto:
    """Conv 1x1 -> Relu -> GlobalAveragePool -> Flatten (torchvision squeezenet, TorchScript)."""
    w = np.random.default_rng(1).normal(0, 0.3, (CLASSES, 4, 1, 1))
    return _network([helper.make_node("Conv", ["features", "head.weight", "head.bias"], ["h"]),
                     helper.make_node("Relu", ["h"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                     helper.make_node("Flatten", ["p"], ["scores"])], {"head.weight": w, "head.bias": np.zeros(CLASSES)})


def _dynamo_squeezenet_head() -> onnx.ModelProto:
    """Conv 1x1 without bias -> Relu -> ReduceMean(axes [-1, -2]) -> Reshape(x, [-1, K]) (dynamo, opset 18)."""
    w = np.random.default_rng(1).normal(0, 0.3, (CLASSES, 4, 1, 1))
    return _network([helper.make_node("Conv", ["features", "head.weight"], ["h"]),
                     helper.make_node("Relu", ["h"], ["r"]),
                     helper.make_node("ReduceMean", ["r", "shape_axes"], ["p"], keepdims=1),
                     helper.make_node("Reshape", ["p", "shape_target"], ["scores"])],
                    {"head.weight": w, "shape_axes": [-1, -2], "shape_target": [-1, CLASSES]}, opset=18)


def _matmul_head() -> onnx.ModelProto:
    """GlobalAveragePool -> Flatten -> MatMul without a bias (a dynamo Linear whose zero bias was dropped)."""
    w = np.random.default_rng(1).normal(0, 0.3, (4, CLASSES))
    return _network([helper.make_node("GlobalAveragePool", ["features"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
                     helper.make_node("MatMul", ["f", "head.weight"], ["scores"])], {"head.weight": w})


def _read(tmp_path, network: onnx.ModelProto) -> dl.DLModel:
    path = tmp_path / "net.onnx"
    onnx.save(network, path)
    model = dl.read_dl_model(path, type="classification")
    dl.set_dl_model_param(model, "batch_size", 2)
    return model


def _samples(count: int = 2) -> list[dict]:
    rng = np.random.default_rng(3)
    return [{"image": rng.normal(0, 1, (SIZE, SIZE, 3)).astype(np.float32), "image_label_id": i % 3} for i in range(count)]


@pytest.mark.parametrize("build, weight_shape", [(_squeezenet_head, (3, 4, 1, 1)), (_dynamo_squeezenet_head, (3, 4, 1, 1)),
                                                 (_matmul_head, (4, 3))])
def test_new_head_has_the_new_width_a_zero_bias_and_keeps_the_body(tmp_path, build, weight_shape):
    model = _read(tmp_path, build())
    dl.set_dl_model_param(model, "class_ids", [0, 1, 2])
    network = model.network()
    inits = {i.name: numpy_helper.to_array(i) for i in network.graph.initializer}
    assert inits["head.weight"].shape == weight_shape and abs(float(inits["head.weight"].std()) - 0.01) < 0.01
    biases = [v for k, v in inits.items() if k not in ("head.weight", "body.weight", "body.bias")
              and not k.startswith("shape") and v.dtype == np.float32]
    assert len(biases) == 1 and biases[0].shape == (3,) and not biases[0].any()
    original = {i.name: numpy_helper.to_array(i) for i in build().graph.initializer}
    for name in ("body.weight", "body.bias"):
        assert np.array_equal(inits[name], original[name])
    x = np.stack([s["image"].transpose(2, 0, 1) for s in _samples()])
    session = ort.InferenceSession(network.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": x})[0].shape == (2, 3)
    assert np.isfinite(dl.train_dl_model_batch(model, _samples())["total_loss"])
    dl.set_dl_model_param(model, "freeze_backbone", True)  # the new layer, bias included, is the head
    assert dl.get_dl_model_param(model, "num_trainable_params") == int(np.prod(weight_shape)) + 3


def test_a_head_after_a_channel_mixing_node_is_refused_and_changes_nothing(tmp_path):
    """Scores that a Softmax over channels (not class-wise) separates from the last layer: refused by name."""
    w = np.random.default_rng(1).normal(0, 0.3, (CLASSES, 4, 1, 1))
    model = _read(tmp_path, _network([helper.make_node("Conv", ["features", "head.weight"], ["h"]),
                                      helper.make_node("Softmax", ["h"], ["s"], axis=1, name="mix"),
                                      helper.make_node("GlobalAveragePool", ["s"], ["p"]),
                                      helper.make_node("Flatten", ["p"], ["scores"])], {"head.weight": w}))
    before = snapshot(model)
    with pytest.raises(dl.DLModelFileError, match="Softmax 'mix'"):
        dl.set_dl_model_param(model, "class_ids", [0, 1, 2])
    assert_unchanged(before, model)
