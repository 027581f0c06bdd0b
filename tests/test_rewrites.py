"""The training rewrites (onnx_dl.rewrites): each is exact in the forward pass against ONNX Runtime
running the original operator, and its gradient in the engine equals PyTorch's autograd (or, for
Resize modes torch has no twin of, the transpose of the operator's own matrix read from ONNX Runtime)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import onnx_dl as dl
from onnx_dl import rewrites
from onnx_dl.engine import runtime
from onnx_dl.rewrites import resize

RTOL = 1e-5


def _graph(node: onnx.NodeProto, x_shape: list[int], y_shape: list[int], inits: dict[str, np.ndarray],
           opset: int = 17, extra_opsets: tuple[tuple[str, int], ...] = (),
           before: tuple[onnx.NodeProto, ...] = ()) -> onnx.ModelProto:
    """x -> Add(x, w) = h -> node(h, ...) = y -> loss = sum(y * r): grad of w = the op's vector-Jacobian
    product (``before``: nodes computing other inputs of ``node``)."""
    rng = np.random.default_rng(1)
    tensors = {"w": rng.standard_normal(x_shape), "r": rng.standard_normal(y_shape), **inits}
    nodes = [*before, helper.make_node("Add", ["x", "w"], ["h"]), node,
             helper.make_node("Mul", ["y", "r"], ["yr"]), helper.make_node("ReduceSum", ["yr"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("loss", TensorProto.FLOAT, []),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f"
                                                                  else np.int64), k) for k, v in tensors.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    *[helper.make_opsetid(d, v) for d, v in extra_opsets]])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def _rewritten(model: onnx.ModelProto) -> onnx.ModelProto:
    target = next(n for n in model.graph.node if n.output[0] == "y")
    result = rewrites.for_training(model, {"y"})
    kept = target.op_type == "LayerNormalization" or (target.op_type == "Gelu" and target.attribute[0].s == b"none")
    assert kept or all(n.op_type != target.op_type for n in result.graph.node)
    return result


def _forward(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = runtime.ort().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def _engine_gradients(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Gradients of the loss output w.r.t. ``names`` from one training step of the engine."""
    engine = runtime.training()
    del model.graph.output[1:]
    with tempfile.TemporaryDirectory() as folder:
        engine.artifacts.generate_artifacts(model, requires_grad=names, frozen_params=[], loss=None, optimizer=None,
                                            artifact_directory=folder)
        state = engine.api.CheckpointState.load_checkpoint(os.path.join(folder, "checkpoint"))
        module = engine.api.Module(os.path.join(folder, "training_model.onnx"), state, None, device="cpu")
        module.lazy_reset_grad()
        module(x)
        return {name: np.array(state.parameters[name].grad) for name in names}


def _check(node: onnx.NodeProto, x_shape: list[int], y_shape: list[int], torch_op: Any,
           inits: dict[str, np.ndarray] | None = None, trained: tuple[str, ...] = ("w",), opset: int = 17,
           seed: int = 0) -> None:
    """Forward of the rewrite == the original operator in ONNX Runtime (1e-6); engine gradients of the
    rewrite == torch autograd of ``torch_op(h, *trained tensors but w)`` (1e-5 relative)."""
    model = _graph(node, x_shape, y_shape, inits or {}, opset)
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(np.float32) * 4
    rewritten = _rewritten(model)
    np.testing.assert_allclose(_forward(rewritten, x), _forward(model, x), rtol=1e-6, atol=1e-6)
    ours = _engine_gradients(rewritten, x, list(trained))
    values = {i.name: torch.tensor(numpy_helper.to_array(i), dtype=torch.float64) for i in model.graph.initializer}
    leaves = {name: values[name].clone().requires_grad_(True) for name in trained}
    h = torch.tensor(x, dtype=torch.float64) + leaves["w"]
    y = torch_op(h, *[leaves[n] for n in trained[1:]])
    (y * values["r"]).sum().backward()
    for name in trained:
        expected = leaves[name].grad.numpy()
        scale = np.abs(expected).max()
        np.testing.assert_allclose(ours[name], expected, rtol=RTOL, atol=RTOL * scale, err_msg=name)


def test_hard_swish_forward_and_gradient() -> None:
    node = helper.make_node("HardSwish", ["h"], ["y"])
    _check(node, [2, 3, 5, 5], [2, 3, 5, 5], F.hardswish)


@pytest.mark.parametrize(("alpha", "beta"), [(1 / 6, 0.5), (0.2, 0.5), (0.3, -0.1)])
def test_hard_sigmoid_forward_and_gradient(alpha: float, beta: float) -> None:
    node = helper.make_node("HardSigmoid", ["h"], ["y"], alpha=alpha, beta=beta)
    _check(node, [2, 3, 5, 5], [2, 3, 5, 5], lambda h: torch.clamp(h * alpha + beta, 0, 1))


def test_hard_sigmoid_default_attributes() -> None:
    node = helper.make_node("HardSigmoid", ["h"], ["y"])
    _check(node, [2, 3, 4, 4], [2, 3, 4, 4], lambda h: torch.clamp(h * 0.2 + 0.5, 0, 1))


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_normalization_forward_and_gradients(axis: int) -> None:
    rng = np.random.default_rng(3)
    normalized = (6,) if axis == -1 else (3, 5, 6)
    inits = {"scale": rng.standard_normal(normalized), "bias": rng.standard_normal(normalized)}
    node = helper.make_node("LayerNormalization", ["h", "scale", "bias"], ["y"], axis=axis, epsilon=1e-5)
    _check(node, [2, 3, 5, 6], [2, 3, 5, 6], lambda h, s, b: F.layer_norm(h, normalized, s, b, 1e-5),
           inits, trained=("w", "scale", "bias"))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_forward_and_gradient(approximate: str) -> None:
    node = helper.make_node("Gelu", ["h"], ["y"], approximate=approximate)
    _check(node, [2, 3, 5, 5], [2, 3, 5, 5], lambda h: F.gelu(h, approximate=approximate), opset=20)


def test_engine_gradient_of_gelu_tanh_is_wrong_so_it_is_rewritten() -> None:
    """Why the tanh Gelu is rewritten: the engine's own gradient of the node ignores ``approximate``."""
    node = helper.make_node("Gelu", ["h"], ["y"], approximate="tanh")
    model = _graph(node, [2, 3, 4, 4], [2, 3, 4, 4], {}, opset=20)
    x = np.random.default_rng(0).standard_normal([2, 3, 4, 4]).astype(np.float32)
    ours = _engine_gradients(model, x, ["w"])["w"]
    w = torch.tensor(numpy_helper.to_array(model.graph.initializer[0]), dtype=torch.float64, requires_grad=True)
    r = torch.tensor(numpy_helper.to_array(model.graph.initializer[1]), dtype=torch.float64)
    (F.gelu(torch.tensor(x, dtype=torch.float64) + w, approximate="tanh") * r).sum().backward()
    assert np.abs(ours - w.grad.numpy()).max() > 1e-4


def test_contrib_gelu_trains_in_the_engine_as_torch() -> None:
    node = helper.make_node("Gelu", ["h"], ["y"], domain="com.microsoft")
    model = _graph(node, [2, 3, 4, 4], [2, 3, 4, 4], {}, extra_opsets=(("com.microsoft", 1),))
    x = np.random.default_rng(0).standard_normal([2, 3, 4, 4]).astype(np.float32)
    ours = _engine_gradients(model, x, ["w"])["w"]
    w = torch.tensor(numpy_helper.to_array(model.graph.initializer[0]), dtype=torch.float64, requires_grad=True)
    r = torch.tensor(numpy_helper.to_array(model.graph.initializer[1]), dtype=torch.float64)
    (F.gelu(torch.tensor(x, dtype=torch.float64) + w) * r).sum().backward()
    np.testing.assert_allclose(ours, w.grad.numpy(), rtol=RTOL, atol=RTOL)


# --- Resize -------------------------------------------------------------------------------------

def _resize_node(mode: str, coordinates: str, nearest: str = "round_prefer_floor", sizes: bool = True) -> onnx.NodeProto:
    inputs = ["h", "", "", "sizes"] if sizes else ["h", "", "scales"]
    return helper.make_node("Resize", inputs, ["y"], mode=mode, coordinate_transformation_mode=coordinates,
                            nearest_mode=nearest)


def _resize_matrix(node: onnx.NodeProto, inits: dict[str, np.ndarray], shape_in: list[int],
                   shape_out: list[int]) -> np.ndarray:
    """The (out, in) matrix of Resize on one (H, W) plane, read from ONNX Runtime on unit images."""
    plane = shape_in[2] * shape_in[3]
    basis = np.eye(plane, dtype=np.float32).reshape(plane, 1, shape_in[2], shape_in[3])
    inits = {k: (np.array([plane, 1, *v[2:]]) if k == "sizes" else v) for k, v in inits.items()}
    graph = helper.make_graph([helper.make_node("Resize", ["h", *node.input[1:]], ["y"], **{
        a.name: helper.get_attribute_value(a) for a in node.attribute})], "resize",
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [plane, 1, *shape_in[2:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32 if k == "scales" else np.int64), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    session = runtime.ort().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"h": basis})[0]
    return out.reshape(plane, shape_out[2] * shape_out[3]).T


RESIZE_CASES = [  # mode, coordinates, nearest_mode, (H, W) in, (H, W) out
    ("linear", "half_pixel", "", (4, 5), (8, 10)),
    ("linear", "pytorch_half_pixel", "", (3, 5), (7, 1)),
    ("linear", "align_corners", "", (4, 5), (9, 7)),
    ("linear", "asymmetric", "", (5, 4), (3, 9)),
    ("linear", "half_pixel", "", (6, 6), (4, 3)),
    ("nearest", "asymmetric", "floor", (3, 4), (6, 8)),
    ("nearest", "half_pixel", "round_prefer_floor", (4, 5), (7, 11)),
    ("nearest", "pytorch_half_pixel", "round_prefer_ceil", (5, 3), (2, 7)),
    ("nearest", "align_corners", "round_prefer_floor", (4, 4), (7, 9)),
    ("nearest", "tf_half_pixel_for_nn", "ceil", (3, 5), (8, 4)),
    ("nearest", "half_pixel", "floor", (6, 5), (6, 5)),
]


@pytest.mark.parametrize(("mode", "coordinates", "nearest", "size_in", "size_out"), RESIZE_CASES)
@pytest.mark.parametrize("sizes", [True, False], ids=["sizes", "scales"])
def test_resize_forward_and_gradient(mode: str, coordinates: str, nearest: str, size_in: tuple[int, int],
                                     size_out: tuple[int, int], sizes: bool) -> None:
    shape_in, shape_out = [2, 3, *size_in], [2, 3, *size_out]
    node = _resize_node(mode, coordinates, nearest or "round_prefer_floor", sizes)
    scales = np.array([1, 1, size_out[0] / size_in[0], size_out[1] / size_in[1]], np.float32)
    inits = {"sizes": np.array(shape_out)} if sizes else {"scales": scales}
    matrix = _resize_matrix(node, inits, shape_in, shape_out)

    def reference(h: torch.Tensor) -> torch.Tensor:  # Y = A X on every (H, W) plane
        flat = h.reshape(2, 3, -1) @ torch.tensor(matrix, dtype=torch.float64).T
        return flat.reshape(shape_out)

    _check(node, shape_in, shape_out, reference, inits)


@pytest.mark.parametrize(("mode", "coordinates", "torch_mode", "align_corners"), [
    ("linear", "pytorch_half_pixel", "bilinear", False), ("linear", "align_corners", "bilinear", True),
    ("nearest", "asymmetric", "nearest", None)])
def test_resize_gradient_equals_torch_interpolate(mode: str, coordinates: str, torch_mode: str,
                                                  align_corners: bool | None) -> None:
    """The modes torch.onnx.export writes for F.interpolate, against F.interpolate's autograd."""
    node = _resize_node(mode, coordinates, "floor")
    shape_in, shape_out = [2, 3, 5, 6], [2, 3, 10, 13]
    _check(node, shape_in, shape_out, lambda h: F.interpolate(h, size=(10, 13), mode=torch_mode,
                                                                align_corners=align_corners),
           {"sizes": np.array(shape_out)})


@pytest.mark.parametrize("coordinates", resize.COORDINATES)
@pytest.mark.parametrize("rounding", [*resize.NEAREST, "linear"])
def test_resize_index_tables_equal_the_engine_over_many_sizes(coordinates: str, rounding: str) -> None:
    """Per axis, the rewrite's indices and weights reproduce ONNX Runtime's Resize of arange(L_in)
    and of a second ramp, for every (L_in, L_out) in 1..9 x 1..13 and non-ratio scales."""
    mode = "linear" if rounding == "linear" else "nearest"
    for length_in in range(1, 10):
        cases = [(length_in, out, np.float32(out / length_in)) for out in range(1, 14)]
        cases += [(length_in, int(np.float32(s) * length_in), np.float32(s)) for s in (0.7, 1.3, 1.7, 2.5)]
        for _, length_out, scale in cases:
            if length_out < 1 or length_out == length_in:  # the engine copies a tensor whose size stays
                continue
            ramp = np.stack([np.arange(length_in), np.arange(length_in) ** 2 * 0.37 + 1]).astype(np.float32)
            node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode,
                                    coordinate_transformation_mode=coordinates,
                                    nearest_mode=rounding if mode == "nearest" else "round_prefer_floor")
            graph = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [1, 2, 1, length_in])],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                      [numpy_helper.from_array(np.array([1, 1, 1, scale], np.float32), "scales")])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 9
            session = runtime.ort().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            engine = session.run(None, {"x": ramp.reshape(1, 2, 1, length_in)})[0].reshape(2, -1)
            assert engine.shape[1] == length_out
            coordinate = resize.original_coordinate(coordinates, np.arange(length_out), scale, length_out, length_in)
            if mode == "nearest":
                ours = ramp[:, resize.nearest_indices(rounding, coordinate, length_in)]
                np.testing.assert_array_equal(ours, engine, err_msg=f"{length_in} -> {length_out} ({scale})")
            else:
                i0, i1, w0, w1 = resize.linear_taps(coordinate, length_in)
                ours = ramp[:, i0] * w0 + ramp[:, i1] * w1
                np.testing.assert_allclose(ours, engine, rtol=1e-6, atol=1e-6,
                                           err_msg=f"{length_in} -> {length_out} ({scale})")


@pytest.mark.parametrize("mode", resize.MODES)
def test_resize_that_keeps_the_size_copies_like_the_engine(mode: str) -> None:
    """Scales 1.3 and 1.1 on 3 x 5 keep the size: the engine copies the tensor, so does the rewrite."""
    node = helper.make_node("Resize", ["h", "", "scales"], ["y"], mode=mode, coordinate_transformation_mode="half_pixel")
    _check(node, [2, 3, 3, 5], [2, 3, 3, 5], lambda h: h, {"scales": np.array([1, 1, 1.3, 1.1], np.float32)})


def test_resize_with_one_axis_at_scale_one_keeps_that_axis() -> None:
    """H keeps its size at scale 1.3 while W grows: the engine still maps H through the scale."""
    node = helper.make_node("Resize", ["h", "", "scales"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel")
    inits = {"scales": np.array([1, 1, 1.3, 1.5], np.float32)}
    matrix = _resize_matrix(node, inits, [2, 3, 3, 5], [2, 3, 3, 7])
    _check(node, [2, 3, 3, 5], [2, 3, 3, 7], lambda h: (h.reshape(2, 3, -1) @ torch.tensor(matrix, dtype=torch.float64).T)
           .reshape(2, 3, 3, 7), inits)


def test_resize_18_with_axes_and_scales_of_those_axes() -> None:
    node = helper.make_node("Resize", ["h", "", "scales"], ["y"], mode="linear", axes=[2, 3],
                            coordinate_transformation_mode="pytorch_half_pixel")
    _check(node, [2, 3, 4, 5], [2, 3, 8, 10], lambda h: F.interpolate(h, scale_factor=2.0, mode="bilinear"),
           {"scales": np.array([2, 2], np.float32)}, opset=18)


def test_resize_sizes_computed_from_the_input_shape_are_read_at_the_training_size() -> None:
    """TorchScript's F.interpolate(size=...) pattern: sizes = Concat(Shape(x)[:2], (H, W))."""
    node = helper.make_node("Resize", ["h", "", "", "sizes"], ["y"], mode="linear",
                            coordinate_transformation_mode="pytorch_half_pixel")
    shape = (helper.make_node("Shape", ["x"], ["x_shape"]),
             helper.make_node("Slice", ["x_shape", "start", "stop"], ["nc"]),
             helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0))
    model = _graph(node, [2, 3, 4, 5], [2, 3, 7, 9], {"hw": np.array([7, 9]), "start": np.array([0]),
                                                      "stop": np.array([2])}, before=shape)
    x = np.random.default_rng(0).standard_normal([2, 3, 4, 5]).astype(np.float32)
    rewritten = rewrites.for_training(model, {"y"})
    assert "Resize" not in {n.op_type for n in rewritten.graph.node}
    np.testing.assert_allclose(_forward(rewritten, x), _forward(model, x), rtol=1e-6, atol=1e-6)


def test_resize_sizes_that_depend_on_image_values_are_refused() -> None:
    node = helper.make_node("Resize", ["h", "", "", "sizes"], ["y"], name="data_dependent", mode="nearest")
    values = (helper.make_node("ReduceMax", ["x"], ["x_max"], axes=[0, 1, 2, 3], keepdims=0),
              helper.make_node("Cast", ["x_max"], ["x_int"], to=TensorProto.INT64),
              helper.make_node("Add", ["x_int", "base"], ["sizes"]))
    model = _graph(node, [2, 3, 4, 4], [2, 3, 8, 8], {"base": np.array([2, 3, 8, 8])}, before=values)
    with pytest.raises(dl.DLModelFileError, match=r"'data_dependent' \(Resize\).*depends on the image values"):
        rewrites.for_training(model, {"y"})


def test_resize_refusals_name_the_reason() -> None:
    cubic = helper.make_node("Resize", ["h", "", "scales"], ["y"], mode="cubic")
    assert "mode 'cubic'" in rewrites.refusal(cubic, _graph(cubic, [1, 1, 2, 2], [1, 1, 4, 4], {
        "scales": np.array([1, 1, 2, 2], np.float32)}))
    crop = _resize_node("linear", "tf_crop_and_resize")
    assert "tf_crop_and_resize" in rewrites.check_node(crop, 17)


def test_resize_of_the_batch_axis_is_refused_naming_the_node() -> None:
    node = helper.make_node("Resize", ["h", "", "", "sizes"], ["y"], name="upsample", mode="nearest")
    model = _graph(node, [2, 3, 4, 4], [1, 3, 8, 8], {"sizes": np.array([1, 3, 8, 8])})
    with pytest.raises(dl.DLModelFileError, match=r"'upsample' \(Resize\).*batch axis \(2 -> 1"):
        rewrites.for_training(model, {"y"})


# --- ConvTranspose --------------------------------------------------------------------------------

CONV_TRANSPOSE_CASES = [  # kernel, strides, pads, output_padding, dilations, group, channels in/out
    ((3, 3), (1, 1), (0, 0, 0, 0), (0, 0), (1, 1), 1, (4, 3)),
    ((2, 2), (2, 2), (0, 0, 0, 0), (0, 0), (1, 1), 1, (4, 3)),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (1, 1), 1, (4, 6)),
    ((4, 3), (2, 3), (1, 2, 2, 0), (1, 2), (1, 1), 1, (3, 2)),
    ((3, 3), (2, 2), (1, 1, 1, 1), (0, 0), (2, 2), 1, (2, 2)),
    ((3, 3), (2, 1), (2, 0, 1, 1), (0, 0), (1, 1), 2, (4, 6)),
    ((5, 5), (3, 3), (4, 4, 4, 4), (2, 0), (1, 1), 1, (2, 3)),  # pads beyond the kernel: cropping
]


@pytest.mark.parametrize(("kernel", "strides", "pads", "output_padding", "dilations", "group", "channels"),
                         CONV_TRANSPOSE_CASES)
def test_conv_transpose_forward_and_gradients(kernel: tuple[int, int], strides: tuple[int, int],
                                              pads: tuple[int, ...], output_padding: tuple[int, int],
                                              dilations: tuple[int, int], group: int, channels: tuple[int, int]) -> None:
    c_in, c_out = channels
    rng = np.random.default_rng(5)
    inits = {"kernel": rng.standard_normal((c_in, c_out // group, *kernel)) * 0.3, "bias": rng.standard_normal(c_out)}
    size = (5, 4)
    out = [(size[i] - 1) * strides[i] + output_padding[i] + dilations[i] * (kernel[i] - 1) + 1 - pads[i] - pads[i + 2]
           for i in range(2)]
    node = helper.make_node("ConvTranspose", ["h", "kernel", "bias"], ["y"], kernel_shape=list(kernel),
                            strides=list(strides), pads=list(pads), output_padding=list(output_padding),
                            dilations=list(dilations), group=group)
    symmetric = pads[0] == pads[2] and pads[1] == pads[3]

    def reference(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if symmetric:
            return F.conv_transpose2d(h, weight, bias, strides, pads[:2], output_padding, group, dilations)
        full = F.conv_transpose2d(h, weight, None, strides, 0, 0, group, dilations)  # then pad, crop, add the bias
        full = F.pad(full, (0, output_padding[1], 0, output_padding[0]))
        cropped = full[:, :, pads[0]:full.shape[2] - pads[2], pads[1]:full.shape[3] - pads[3]]
        return cropped + bias.reshape(1, -1, 1, 1)

    _check(node, [2, c_in, *size], [2, c_out, *out], reference, inits, trained=("w", "kernel", "bias"))


def test_conv_transpose_output_shape_attribute_is_refused() -> None:
    node = helper.make_node("ConvTranspose", ["h", "k"], ["y"], output_shape=[8, 8])
    assert "output_shape" in rewrites.check_node(node, 17)


def test_rewrite_leaves_its_input_model_unchanged() -> None:
    node = helper.make_node("HardSwish", ["h"], ["y"])
    model = _graph(node, [1, 2, 3, 3], [1, 2, 3, 3], {})
    before = model.SerializeToString()
    rewritten = rewrites.for_training(model, {"y"})
    assert model.SerializeToString() == before
    assert [n.op_type for n in rewritten.graph.node].count("HardSwish") == 0
    assert not [i.name for i in rewritten.graph.initializer if i.name.startswith("train_rewrite/")]
