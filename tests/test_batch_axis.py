"""A batch size baked in by the exporter: freed where provable, else refused naming the node and the size.

Reference: the PyTorch module (``torch_parity``); the networks here have no batch norm, so
PyTorch's train() and eval() agree and the dynamo exporter's eval-mode graph trains like it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch_parity as tp
from conftest import assert_unchanged, snapshot

import onnx_dl as dl
from onnx_dl import batch_axis

SIZE = 16


def _flat_net() -> nn.Module:
    """The issue's reproduction: pool, flatten, linear (the dynamo exporter writes Reshape(x, [1, 8]))."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


class _Grouped(nn.Module):
    """A reshape to (N, 8, H * W) and a mean over it: exported with batch 1 as Reshape(x, [1, 8, -1])."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc(x.reshape(x.shape[0], 8, -1).mean(-1))


def _reshape_targets(path: Path) -> list[list[int]]:
    model = onnx.load(path)
    inits = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in model.graph.initializer}
    return [inits.get(n.input[1]) for n in model.graph.node if n.op_type == "Reshape"]


@pytest.mark.parametrize("recipe", ["dynamo_static", "torchscript_static"])
def test_baked_flatten_trains_at_any_batch_like_pytorch(tmp_path: Path, recipe: str) -> None:
    net = _flat_net()
    path = tmp_path / "static.onnx"
    if recipe == "dynamo_static":
        tp.export(net, path, recipe, SIZE)
        assert [1, 8] in _reshape_targets(path), "the exporter no longer bakes the batch: this test lost its subject"
    else:
        torch.onnx.export(net, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"])
    model = dl.read_dl_model(path, type="classification")
    assert batch_axis.fixed_batch(model.network()) is None
    for batch in (2, 3):
        result = tp.compare(net, path, SIZE, batch=batch, classes=4)
        assert result["losses"][-1] < result["losses"][0]


def test_unprovable_batch_is_refused_naming_node_and_size(tmp_path: Path) -> None:
    net = _Grouped()
    path = tp.export(net, tmp_path / "grouped.onnx", "dynamo_static", SIZE)
    model = dl.read_dl_model(path, type="classification")
    assert dl.get_dl_model_param(model, "batch_size") == 1  # the one size it runs
    before = snapshot(model)
    with pytest.raises(dl.DLParamError, match=r"exactly 1 image.*node '[^']+' \(Reshape\).*got 2"):
        dl.set_dl_model_param(model, "batch_size", 2)
    assert_unchanged(before, model)
    data, images, labels = tp.samples(3, SIZE, 4)
    loss = dl.train_dl_model_batch(model, data[:1])["total_loss"]
    expected = nn.functional.cross_entropy(net(torch.from_numpy(images[:1])), torch.from_numpy(labels[:1]))
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-5)
    applied = dl.apply_dl_model(model, data)  # three images, one at a time
    written = tmp_path / "written.onnx"
    dl.write_dl_model(model, written)
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    for image, result in zip(images, applied):
        plain = session.run(None, {session.get_inputs()[0].name: image[None]})[0][0]
        np.testing.assert_allclose(np.array(result["classification_confidences"]),
                                   plain[result["classification_class_ids"]], rtol=1e-5, atol=1e-7)


def _reshape_graph(between: str | None) -> onnx.ModelProto:
    """image (1, 3, 4, 4) -> Reshape [1, 48] -> [between] -> MatMul (48, 2)."""
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(np.array([1, 48], np.int64), "target"),
             onnx.numpy_helper.from_array(rng.standard_normal((48, 2)).astype(np.float32), "w")]
    nodes = [onnx.helper.make_node("Reshape", ["image", "target"], ["flat"], name="flatten")]
    if between:
        nodes.append(onnx.helper.make_node(between, ["flat"], ["flat2"]))
    nodes.append(onnx.helper.make_node("MatMul", ["flat2" if between else "flat", "w"], ["scores"]))
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [1, 2])], inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("between, free", [(None, True), ("Identity", True), ("Relu", False), ("Softmax", False)])
def test_only_reshapes_read_per_row_are_freed(between: str | None, free: bool) -> None:
    """[1, K] read by per-row products is freed; read by anything else (a Softmax over its last axis
    would mix the samples of a [1, N * K] reading) the batch stays fixed."""
    model = _reshape_graph(between)
    batch_axis.free_batch(model)
    assert (batch_axis.fixed_batch(model) is None) == free
    if free:
        x = np.random.default_rng(1).standard_normal((3, 3, 4, 4)).astype(np.float32)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        w = onnx.numpy_helper.to_array(model.graph.initializer[1])
        np.testing.assert_allclose(session.run(None, {"image": x})[0], x.reshape(3, 48) @ w, rtol=1e-5)


class _ViewBySize(nn.Module):
    """``x.view(x.size(0), -1)`` and a channel shuffle from ``x.size()``: traced with a fixed input, the
    TorchScript exporter writes every size as a constant (also without constant folding)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 7 * 7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(x.view(x.size(0), -1))


def test_torchscript_sizes_traced_as_constants_keep_the_batch_fixed(tmp_path: Path) -> None:
    """The shuffle's Reshape to [1, 2, 2, 7, 7] is not provably per sample: refused at another size;
    with a dynamic batch axis the same module trains at any batch."""
    net = _ViewBySize().eval()
    path = tmp_path / "static_input.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=17,
                      do_constant_folding=False, input_names=["image"])
    model = dl.read_dl_model(path, type="classification")
    assert batch_axis.fixed_batch(model.network()) == 1
    with pytest.raises(dl.DLParamError, match=r"exactly 1 image.*node '/Reshape' \(Reshape\)"):
        dl.set_dl_model_param(model, "batch_size", 4)
    dynamic = tp.export(net, tmp_path / "dynamic.onnx", "eval_nofold", SIZE)
    tp.compare(net, dynamic, SIZE, batch=3, classes=4)


class _Upsampled(nn.Module):
    """conv, bilinear upsampling to the input size (as torchvision's segmentation heads), conv: the dynamo
    exporter bakes the Resize sizes [1, 4, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = nn.functional.interpolate(torch.relu(self.down(x)), size=x.shape[-2:], mode="bilinear")
        return self.out(up)


def test_rewrite_sized_at_the_baked_batch_trains_there_and_refuses_others(tmp_path: Path) -> None:
    """The Resize rewrite reads its sizes at the batch the network is fixed to (the zoo's segmentation
    networks through the dynamo exporter were refused at read: probed at 2, sizes for 1)."""
    net = _Upsampled()
    path = tp.export(net, tmp_path / "upsampled.onnx", "dynamo_static", SIZE)
    resizes = [n for n in onnx.load(path).graph.node if n.op_type == "Resize"]
    assert resizes, "the exporter no longer writes Resize: this test lost its subject"
    model = dl.read_dl_model(path, type="segmentation")
    assert dl.get_dl_model_param(model, "batch_size") == 1
    with pytest.raises(dl.DLParamError, match=r"exactly 1 image.*\(Resize\).*got 2"):
        dl.set_dl_model_param(model, "batch_size", 2)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((SIZE, SIZE, 3)).astype(np.float32)
    label = rng.integers(0, 3, (SIZE, SIZE))
    loss = dl.train_dl_model_batch(model, [{"image": image, "segmentation_image": label.astype(np.uint8)}])
    expected = nn.functional.cross_entropy(net(torch.from_numpy(image.transpose(2, 0, 1)[None].copy())),
                                           torch.from_numpy(label[None]).long())
    np.testing.assert_allclose(loss["total_loss"], expected.item(), rtol=1e-5)
