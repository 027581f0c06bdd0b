"""gen_dl_model_heatmap (Grad-CAM) against PyTorch autograd, the model left untouched, bad input refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnx_dl as dl
from onnx_dl.engine.session import TrainingSession
from onnx_dl.errors import DLParamError, DLSampleError
from onnx_dl.heatmap import grad_cam_graph

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_grad_cam(features: Any, logits: Any, class_index: int, size: tuple[int, int]) -> np.ndarray:
    """Grad-CAM written from the paper with torch autograd: ``features`` (1, C, h, w) a tensor ``logits`` (1, K)
    depends on; ReLU(sum_k mean_ij(dy_c/dA_k) A_k), bilinear (align_corners=False) to ``size``, / max."""
    (gradient,) = torch.autograd.grad(logits[0, class_index], features)
    alpha = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((alpha * features).sum(dim=1, keepdim=True))
    up = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0]
    return (up / up.max() if up.max() > 0 else torch.zeros_like(up)).detach().numpy()


def run_onnx_in_torch(network: onnx.ModelProto, image: np.ndarray, keep: str) -> tuple[Any, Any]:
    """(the tensor ``keep``, the logits) of ``network`` evaluated node by node with torch (eval mode: batch
    norm on running statistics) on one (C, H, W) image; only the operators of classifier_compact."""
    values: dict[str, Any] = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in network.graph.initializer}
    values[network.graph.input[0].name] = torch.from_numpy(image[None].copy())
    for node in network.graph.node:
        x = [values[name] for name in node.input]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Mul":
            out = x[0] * x[1]
        elif node.op_type == "Conv":
            pads = attrs.get("pads", [0, 0, 0, 0])
            out = F.conv2d(x[0], x[1], x[2] if len(x) > 2 else None, stride=attrs.get("strides", [1, 1]),
                           padding=(pads[0], pads[1]), groups=attrs.get("group", 1))
        elif node.op_type == "BatchNormalization":
            out = F.batch_norm(x[0], x[3], x[4], x[1], x[2], training=False, eps=attrs.get("epsilon", 1e-5))
        elif node.op_type == "Relu":
            out = F.relu(x[0])
        elif node.op_type == "GlobalAveragePool":
            out = x[0].mean(dim=(2, 3), keepdim=True)
        elif node.op_type == "Flatten":
            out = x[0].flatten(1)
        elif node.op_type == "Gemm":
            out = x[0] @ (x[1].T if attrs.get("transB") else x[1]) + x[2]
        else:
            raise AssertionError(f"operator {node.op_type} not in this reference")
        if node.output[0] == keep:
            out = out.detach().requires_grad_(True)
        values[node.output[0]] = out
    return values[keep], values[network.graph.output[0].name]


def test_grad_cam_of_classifier_compact_equals_torch_autograd() -> None:
    model = dl.read_dl_model("classifier_compact")
    dl.set_dl_model_param(model, "image_dimensions", [64, 48, 3])  # feature map 3 x 4
    images = np.random.default_rng(0).uniform(-127, 128, (2, 48, 64, 3)).astype(np.float32)
    samples = [{"image": image} for image in images]
    classes = model.params["class_ids"]
    peaks = []
    for target in (None, classes[3], classes[1]):
        results = dl.gen_dl_model_heatmap(model, samples, "grad_cam", [] if target is None else [target])
        for image, result in zip(images, results):
            found = result["heatmap_grad_cam"]
            class_id = result["classification_class_ids"][0] if target is None else target
            assert found["target_class_id"] == class_id
            assert found["target_conv_layer"] == "stage3.down.relu"  # the input of the global pooling
            features, logits = run_onnx_in_torch(model.network(), np.moveaxis(image, 2, 0), "stage3.down.relu")
            expected = torch_grad_cam(features, logits, classes.index(class_id), (48, 64))
            assert found["heatmap"].shape == (48, 64) and found["heatmap"].dtype == np.float32
            np.testing.assert_allclose(found["heatmap"], expected, rtol=0, atol=1e-5)
            assert found["heatmap"].min() >= 0
            peaks.append(float(found["heatmap"].max()))
    assert peaks == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # class 1 scores nowhere: ReLU leaves nothing, the map is 0


def test_the_offset_gradient_is_the_score_gradient_of_the_feature_map() -> None:
    """What the engine returns for the zero offset equals torch autograd's dy_c / dA (before any averaging)."""
    model = dl.read_dl_model("classifier_compact")
    dl.set_dl_model_param(model, "image_dimensions", [32, 32, 3])
    graph = grad_cam_graph(model.network(), model.params, None)
    session = TrainingSession(graph.training, "cpu", 1, True)
    image = np.random.default_rng(5).uniform(-127, 128, (3, 32, 32)).astype(np.float32)
    for class_index in (0, 6):
        features, gradient = graph.run(session, image, class_index)
        expected_features, logits = run_onnx_in_torch(model.network(), image, graph.feature_map)
        (expected,) = torch.autograd.grad(logits[0, class_index], expected_features)
        np.testing.assert_allclose(features, expected_features[0].detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gradient, expected[0].numpy(), rtol=1e-5, atol=1e-7)
        assert np.abs(gradient).max() > 1e-4  # a real gradient, not zeros


def _bilinear(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel-centred bilinear resizing of a (h, w) plane, one output pixel at a time, edges clamped."""
    rows, cols = plane.shape
    out = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            r = min(max((i + 0.5) * rows / height - 0.5, 0.0), rows - 1.0)
            c = min(max((j + 0.5) * cols / width - 0.5, 0.0), cols - 1.0)
            r0, c0 = int(r), int(c)
            r1, c1, fr, fc = min(r0 + 1, rows - 1), min(c0 + 1, cols - 1), r - r0, c - c0
            out[i, j] = ((1 - fr) * ((1 - fc) * plane[r0, c0] + fc * plane[r0, c1])
                         + fr * ((1 - fc) * plane[r1, c0] + fc * plane[r1, c1]))
    return out


def test_a_network_with_a_fixed_batch_against_the_closed_form(tmp_path: Path) -> None:
    """image (3, 2, 5, 6) -> 1x1 Conv -> Relu = A -> GlobalAveragePool -> Reshape [3, 4] -> Relu -> Gemm: the
    batch stays fixed at 3 (padded), and dy_c / dA_k = W[c, k] [mean A_k > 0] / (h w) in closed form."""
    rng = np.random.default_rng(6)
    weights = {"conv.weight": rng.normal(0, 1, (4, 2, 1, 1)), "conv.bias": rng.normal(0, 0.5, 4),
               "fc.weight": rng.normal(0, 1, (3, 4)), "fc.bias": rng.normal(0, 0.1, 3)}
    nodes = [onnx.helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["conv"]),
             onnx.helper.make_node("Relu", ["conv"], ["features"]),
             onnx.helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
             onnx.helper.make_node("Reshape", ["pooled", "shape"], ["flat"]),
             onnx.helper.make_node("Relu", ["flat"], ["gated"]),
             onnx.helper.make_node("Gemm", ["gated", "fc.weight", "fc.bias"], ["logits"], transB=1)]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array(np.array([3, 4], np.int64), "shape"))
    graph = onnx.helper.make_graph(
        nodes, "fixed", [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [3, 2, 5, 6])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [3, 3])], inits)
    network = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    network.ir_version = 9
    onnx.save(network, tmp_path / "fixed.onnx")
    model = dl.read_dl_model(tmp_path / "fixed.onnx", type="classification")
    assert model.params["batch_size"] == 3  # the batch is not freed: every run is padded to 3
    images = rng.normal(0, 1, (2, 5, 6, 2)).astype(np.float32)
    results = dl.gen_dl_model_heatmap(model, [{"image": image} for image in images], "grad_cam", [2])
    w, b = weights["conv.weight"][:, :, 0, 0], weights["conv.bias"]
    for image, result in zip(images, results):
        features = np.maximum(np.einsum("kc,ijc->kij", w, image.astype(np.float64)) + b[:, None, None], 0)
        alpha = weights["fc.weight"][2] * (features.mean(axis=(1, 2)) > 0) / 30
        up = _bilinear(np.maximum(np.tensordot(alpha, features, axes=1), 0), 5, 6)
        expected = up / up.max() if up.max() > 0 else up
        np.testing.assert_allclose(result["heatmap_grad_cam"]["heatmap"], expected, rtol=0, atol=1e-5)
        assert result["heatmap_grad_cam"]["target_conv_layer"] == "features"
    assert max(float(r["heatmap_grad_cam"]["heatmap"].max()) for r in results) == 1.0


def test_grad_cam_of_torchvision_resnet18_equals_torch_hooks(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=5)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # running statistics unlike a fresh network's, so eval-mode batch norm matters
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    dl.export_torch(net, tmp_path / "resnet18.onnx", (96, 96))
    model = dl.read_dl_model(tmp_path / "resnet18.onnx", type="classification")
    images = np.random.default_rng(2).standard_normal((2, 96, 96, 3)).astype(np.float32)
    results = dl.gen_dl_model_heatmap(model, [{"image": image} for image in images], "grad_cam", 3)
    net.eval()
    kept: dict[str, Any] = {}
    handle = net.layer4.register_forward_hook(lambda module, inputs, output: kept.update(features=output))
    try:
        for image, result in zip(images, results):
            logits = net(torch.from_numpy(np.moveaxis(image, 2, 0)[None].copy()))
            expected = torch_grad_cam(kept["features"], logits, 3, (96, 96))
            found = result["heatmap_grad_cam"]
            assert found["target_class_id"] == 3
            np.testing.assert_allclose(found["heatmap"], expected, rtol=0, atol=1e-5)
            assert found["heatmap"].max() == 1.0 and np.ptp(found["heatmap"]) == 1.0
    finally:
        handle.remove()


def _state(model: dl.DLModel) -> tuple[dict[str, np.ndarray], Any, dict[str, Any]]:
    network = model.network()
    weights = {i.name: numpy_helper.to_array(i).copy() for i in network.graph.initializer}
    return weights, model.solver_state(), dict(model.params)


def test_the_model_is_left_exactly_as_it_was() -> None:
    model = dl.read_dl_model("classifier_compact")
    dl.set_dl_model_param(model, "image_dimensions", [32, 32, 3])
    dl.set_dl_model_param(model, "batch_size", 2)
    rng = np.random.default_rng(3)
    batch = [{"image": rng.uniform(-127, 128, (32, 32, 3)).astype(np.float32), "image_label_id": i} for i in (0, 1)]
    dl.train_dl_model_batch(model, batch)  # a trainer, momentum and moved running statistics exist
    trainer = model.trainer()
    weights, (solver, steps, velocity), params = _state(model)
    dl.gen_dl_model_heatmap(model, batch, "grad_cam", [], {"target_conv_layer": "stage2.conv.relu"})
    after_weights, (after_solver, after_steps, after_velocity), after_params = _state(model)
    assert model.trainer() is trainer and after_params == params and (after_solver, after_steps) == (solver, steps)
    assert weights.keys() == after_weights.keys()
    for name in weights:
        np.testing.assert_array_equal(after_weights[name], weights[name], err_msg=name)
    for name in velocity:
        for kind in velocity[name]:
            np.testing.assert_array_equal(after_velocity[name][kind], velocity[name][kind])
    assert np.isfinite(dl.train_dl_model_batch(model, batch)["total_loss"])  # training goes on


def test_a_named_layer_is_used_by_node_or_tensor_name() -> None:
    model = dl.read_dl_model("classifier_compact")
    dl.set_dl_model_param(model, "image_dimensions", [32, 32, 3])
    sample = {"image": np.random.default_rng(4).uniform(-127, 128, (32, 32, 3)).astype(np.float32)}
    node = next(n.name for n in model.network().graph.node if n.output[0] == "stage2.conv.relu")
    by_tensor = dl.gen_dl_model_heatmap(model, sample, "grad_cam", None, {"target_conv_layer": "stage2.conv.relu"})
    by_node = dl.gen_dl_model_heatmap(model, sample, "grad_cam", None, {"target_conv_layer": node})
    assert by_tensor[0]["heatmap_grad_cam"]["target_conv_layer"] == "stage2.conv.relu"
    np.testing.assert_array_equal(by_tensor[0]["heatmap_grad_cam"]["heatmap"], by_node[0]["heatmap_grad_cam"]["heatmap"])
    features, logits = run_onnx_in_torch(model.network(), np.moveaxis(sample["image"], 2, 0), "stage2.conv.relu")
    class_index = model.params["class_ids"].index(by_tensor[0]["classification_class_ids"][0])
    np.testing.assert_allclose(by_tensor[0]["heatmap_grad_cam"]["heatmap"],
                               torch_grad_cam(features, logits, class_index, (32, 32)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda m, s: dl.gen_dl_model_heatmap(m, s, "grad_cam", [99]), "got 99"),
    (lambda m, s: dl.gen_dl_model_heatmap(m, s, "grad_cam", [0, 1]), "one class id"),
    (lambda m, s: dl.gen_dl_model_heatmap(m, s, "grad_cam", "0"), "got '0'"),
    (lambda m, s: dl.gen_dl_model_heatmap(m, s, "guided_grad_cam"), "heatmap_method"),
    (lambda m, s: dl.gen_dl_model_heatmap(m, s, "grad_cam", None, {"layer": "x"}), "unknown key(s) ['layer']"),
    (lambda m, s: dl.gen_dl_model_heatmap(m, s, "grad_cam", None, {"target_conv_layer": "logits"}),
     "'target_conv_layer'"),
    (lambda m, s: dl.gen_dl_model_heatmap(m, s, "grad_cam", None, {"target_conv_layer": "nothing"}), "got 'nothing'"),
])
def test_bad_arguments_are_refused_by_name(call: Any, message: str) -> None:
    model = dl.read_dl_model("classifier_compact")
    dl.set_dl_model_param(model, "image_dimensions", [32, 32, 3])
    with pytest.raises(DLParamError, match="gen_dl_model_heatmap") as error:
        call(model, [{"image": np.zeros((32, 32, 3), np.float32)}])
    assert message in str(error.value)


def test_bad_samples_and_model_types_are_refused() -> None:
    model = dl.read_dl_model("classifier_compact")
    dl.set_dl_model_param(model, "image_dimensions", [32, 32, 3])
    with pytest.raises(DLSampleError, match="sample 0, key 'image': expected shape"):
        dl.gen_dl_model_heatmap(model, [{"image": np.zeros((16, 16, 3), np.float32)}])
    segmenter = dl.read_dl_model("segmentation_compact")
    with pytest.raises(DLParamError, match="expected a 'classification' model, got a 'segmentation' model"):
        dl.gen_dl_model_heatmap(segmenter, [{"image": np.zeros((64, 64, 3), np.float32)}])
    with pytest.raises(DLParamError, match="expected a DLModel"):
        dl.gen_dl_model_heatmap("classifier_compact", [])
