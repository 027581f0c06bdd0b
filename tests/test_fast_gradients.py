"""The faster kernels put into the generated training graph (onnx_dl.fast_gradients) compute the
same gradients: against a NumPy reference of a small conv net, and against the engine's own kernels."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from conftest import image_samples, load
from onnx import TensorProto, helper, numpy_helper
from reference import weighted_cross_entropy

import onnx_dl as dl
from onnx_dl import fast_gradients, nets
from onnx_dl.engine import runtime

RTOL = 1e-5
SIZE, CHANNELS, CLASSES = 8, 2, 3
# (name, out channels, kernel, stride, pads top/left/bottom/right): a stride-1 3x3, a stride-2 3x3 and an
# asymmetric 3x2 kernel with uneven pads
LAYERS = [("c1", 4, (3, 3), 1, (1, 1, 1, 1)), ("c2", 4, (3, 3), 2, (1, 1, 1, 1)), ("c3", 5, (3, 2), 1, (1, 0, 1, 1))]


# the same with groups (sixth item), 9 x 9 images: 3x3 dense, depthwise stride 1 and stride 2, a grouped
# 1x1 of stride 2, a grouped 3x3 and a dense 2x2 of stride 2 with uneven pads
GROUPED_LAYERS = [("g1", 6, (3, 3), 1, (1, 1, 1, 1), 1), ("g2", 6, (3, 3), 1, (1, 1, 1, 1), 6),
                  ("g3", 6, (3, 3), 2, (1, 1, 1, 1), 6), ("g4", 8, (1, 1), 2, (0, 0, 0, 0), 2),
                  ("g5", 8, (3, 3), 1, (1, 1, 1, 1), 4), ("g6", 8, (2, 2), 2, (1, 1, 0, 0), 1)]


def conv_relu_network(seed: int = 0, layers: list[tuple] = LAYERS, size: int = SIZE, channels: int = CHANNELS,
                      std: float = 0.4) -> onnx.ModelProto:
    """image (N, channels, size, size) -> [Conv -> Relu] x layers -> GlobalAveragePool -> Flatten -> Gemm -> logits.

    A layer is (name, out channels, kernel, stride, pads[, group[, dilation[, with bias]]])."""
    rng = np.random.default_rng(seed)
    inits, nodes, x, c_in = {}, [], "image", channels
    for name, c_out, kernel, stride, pads, *extra in layers:
        groups, dilation, bias = [*extra, *(1, 1, False)[len(extra):]]
        inits[f"{name}.weight"] = rng.normal(0, std, (c_out, c_in // groups, *kernel))
        inputs = [x, f"{name}.weight"]
        if bias:
            inits[f"{name}.bias"] = rng.normal(0, 0.2, c_out)
            inputs.append(f"{name}.bias")
        nodes += [helper.make_node("Conv", inputs, [f"{name}.out"], kernel_shape=list(kernel), strides=[stride, stride],
                                   dilations=[dilation, dilation], pads=list(pads), group=groups),
                  helper.make_node("Relu", [f"{name}.out"], [f"{name}.relu"])]
        x, c_in = f"{name}.relu", c_out
    inits["fc.weight"], inits["fc.bias"] = rng.normal(0, 0.5, (CLASSES, c_in)), rng.normal(0, 0.1, CLASSES)
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "conv_relu", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pads: tuple[int, ...]) -> np.ndarray:
    """y[n, m, i, j] = sum_{c, a, b} w[m, c, a, b] * x_padded[n, c, i * stride + a, j * stride + b]."""
    top, left, bottom, right = pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    kh, kw = w.shape[2:]
    out_h, out_w = (padded.shape[2] - kh) // stride + 1, (padded.shape[3] - kw) // stride + 1
    y = np.zeros((x.shape[0], w.shape[0], out_h, out_w))
    for a in range(kh):
        for b in range(kw):
            window = padded[:, :, a:a + stride * out_h:stride, b:b + stride * out_w:stride]
            y += np.einsum("nchw,mc->nmhw", window, w[:, :, a, b])
    return y


def conv2d_backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, stride: int,
                    pads: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(dL/dx, dL/dw) of :func:`conv2d` for dL/dy = ``dy``."""
    top, left, bottom, right = pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    d_padded, dw = np.zeros_like(padded), np.zeros_like(w)
    out_h, out_w = dy.shape[2:]
    for a in range(w.shape[2]):
        for b in range(w.shape[3]):
            rows, cols = slice(a, a + stride * out_h, stride), slice(b, b + stride * out_w, stride)
            dw[:, :, a, b] = np.einsum("nmhw,nchw->mc", dy, padded[:, :, rows, cols])
            d_padded[:, :, rows, cols] += np.einsum("nmhw,mc->nchw", dy, w[:, :, a, b])
    return d_padded[:, :, top:top + x.shape[2], left:left + x.shape[3]], dw


def reference_gradients(weights: dict[str, np.ndarray], images: np.ndarray,
                        labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Cross-entropy (unit class weights) and its gradient for :func:`conv_relu_network`, in float64."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    x, cache = images.astype(np.float64), []
    for name, _, _, stride, pads in LAYERS:
        y = conv2d(x, w[f"{name}.weight"], stride, pads)
        cache.append((x, y))
        x = np.maximum(y, 0.0)
    pooled = x.mean(axis=(2, 3))
    loss, dz = weighted_cross_entropy(pooled @ w["fc.weight"].T + w["fc.bias"], labels, np.ones(CLASSES))
    grads = {"fc.weight": dz.T @ pooled, "fc.bias": dz.sum(axis=0)}
    d_x = np.broadcast_to((dz @ w["fc.weight"])[:, :, None, None] / (x.shape[2] * x.shape[3]), x.shape)
    for (name, _, _, stride, pads), (x_in, y) in zip(reversed(LAYERS), reversed(cache)):
        d_x, grads[f"{name}.weight"] = conv2d_backward(x_in, w[f"{name}.weight"], d_x * (y > 0), stride, pads)
    return loss, grads


def engine_gradients(model: dl.DLModel, samples: list[dict]) -> tuple[float, dict[str, np.ndarray]]:
    """The cross-entropy and the gradient buffers after one forward and backward pass (no update)."""
    session = model.trainer().session
    feeds = model.kind.train_chunks(samples, model.params, 1)[0]
    outputs = session.run([*feeds[0], np.array(0.0, np.float32)])
    grads = {name: session.gradient(name).copy() for name in session.trainable}
    session.reset_grad()
    return float(outputs["loss_cross_entropy"]), grads


def _samples(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.uniform(-127, 128, (SIZE, SIZE, CHANNELS)).astype(np.float32),
             "image_label_id": int(rng.integers(CLASSES))} for _ in range(count)]


@pytest.mark.parametrize("banded, frozen", [(False, []), (True, []), (True, ["c2.weight"]), (False, ["c3.weight"])])
def test_conv_relu_gradients_match_reference(tmp_path, monkeypatch, banded, frozen):
    """ReLU and stride-1 input gradients rewritten, (banded) every weight gradient split into row bands,
    (frozen) a convolution whose weight is a constant: input gradient only."""
    if banded:  # one output row per band, whatever the size
        monkeypatch.setattr(fast_gradients, "BAND_THRESHOLD_BYTES", 0)
        monkeypatch.setattr(fast_gradients, "BAND_BYTES", 1)
    model = load(tmp_path, conv_relu_network(), batch_size=5, image_dimensions=[SIZE, SIZE, CHANNELS],
                 weight_prior=0.0, frozen_layers=frozen)
    samples = _samples(5, seed=3)
    loss, grads = engine_gradients(model, samples)
    rewrites = model.trainer().session.rewrites
    assert rewrites["ReluGrad"] == 3
    assert rewrites["ConvGrad"] == (3 if banded else 1) - (1 if banded and frozen == ["c2.weight"] else 0)
    assert set(grads) == {"c1.weight", "c2.weight", "c3.weight", "fc.weight", "fc.bias"} - set(frozen)
    initial = {i.name: numpy_helper.to_array(i) for i in model.network().graph.initializer}
    images = np.stack([s["image"].transpose(2, 0, 1) for s in samples])
    expected_loss, expected = reference_gradients(initial, images, np.array([s["image_label_id"] for s in samples]))
    assert loss == pytest.approx(expected_loss, rel=RTOL)
    for name in grads:
        value = expected[name]
        np.testing.assert_allclose(grads[name], value, rtol=RTOL, atol=1e-6 * np.abs(value).max(), err_msg=name)


def rewritten_against_engine(tmp_path, monkeypatch, network: onnx.ModelProto, size: int, count: int,
                             seed: int) -> dict[str, int]:
    """Trains ``network`` (size x size images, ``count`` per batch) once with fast_gradients' rewrites and once
    without; asserts the same loss and gradients and returns the rewrites' counts."""
    rng = np.random.default_rng(seed)
    samples = [{"image": rng.uniform(-1, 1, (size, size, CHANNELS)).astype(np.float32), "image_label_id": i % CLASSES}
               for i in range(count)]
    found = {}
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(fast_gradients, "rewrite", lambda training, *args: {})
        model = load(tmp_path, network, batch_size=count, image_dimensions=[size, size, CHANNELS], weight_prior=0.0)
        found[fast] = (*engine_gradients(model, samples), model.trainer().session.rewrites)
    assert found[True][0] == pytest.approx(found[False][0], rel=1e-6)
    assert set(found[True][1]) == set(found[False][1])
    for name, value in found[False][1].items():
        np.testing.assert_allclose(found[True][1][name], value, rtol=RTOL, atol=1e-6 * np.abs(value).max(), err_msg=name)
    return found[True][2]


def test_grouped_and_strided_input_gradients_equal_the_engine_kernels(tmp_path, monkeypatch):
    """Depthwise and grouped stride-1 convolutions' dX as grouped forward convolutions (strided ones keep
    the engine's): the same gradients as the engine's own ConvGrad."""
    counts = rewritten_against_engine(tmp_path, monkeypatch, conv_relu_network(layers=GROUPED_LAYERS, size=9), 9, 3, 7)
    assert counts["ConvGrad"] == 2  # g2 and g5 (g1 reads the image: no dX; the strided keep the engine's)


# 6 x 6 images: a strided 3x3 to 12 channels at 3 x 3, then stride-1 3x3 (12 input channels > 9 positions: the
# engine's dX), 1x1 (turned) and 3x3 (5 input channels: turned) convolutions
WIDE_LAYERS = [("w1", 12, (3, 3), 2, (1, 1, 1, 1)), ("w2", 6, (3, 3), 1, (1, 1, 1, 1)),
               ("w3", 5, (1, 1), 1, (0, 0, 0, 0)), ("w4", 4, (3, 3), 1, (1, 1, 1, 1))]


@pytest.mark.parametrize("runtime_rule", [True, False])
def test_more_input_channels_than_positions_keep_the_engine_input_gradient(tmp_path, monkeypatch, runtime_rule):
    """On the CPU a dense stride-1 k x k convolution with more input channels than input positions keeps
    ConvGrad's dX (nchwc.turned_input_gradient_pays); without the rule (a GPU session) every stride-1 dX
    turns. Either way the gradients equal those of the engine's own kernels."""
    from onnx_dl import nchwc

    if not runtime_rule:
        monkeypatch.setattr(nchwc, "turned_input_gradient_pays", lambda chunk: None)
    counts = rewritten_against_engine(tmp_path, monkeypatch, conv_relu_network(layers=WIDE_LAYERS, size=6), 6, 4, 11)
    assert counts["engine dX"] == (1 if runtime_rule else 0)  # w2
    assert counts["ConvGrad"] == (2 if runtime_rule else 3)  # w3, w4 (and w2 without the rule)


def test_turned_input_gradient_pays_where_the_input_has_as_many_positions_as_channels():
    """The CPU rule itself: turn where C <= H x W, for 1 x 1 kernels, where the turned convolution runs in
    blocks, where an image has fewer than 64 positions but the chunk more, or where the shape is unknown;
    else (C > H x W) keep the engine's dX."""
    from onnx_dl import nchwc

    pays = nchwc.turned_input_gradient_pays(8)
    assert pays([None, 128, 16, 16], [128, 128, 3, 3], [3, 3])  # 128 <= 256
    assert not pays([None, 256, 8, 8], [256, 256, 3, 3], [3, 3])  # 256 > 64, not in blocks at 8 images (r 0.22)
    assert pays([None, 512, 4, 4], [512, 512, 3, 3], [3, 3])  # 16 positions, 128 in the chunk: the turn spreads
    assert not nchwc.turned_input_gradient_pays(4)([None, 512, 4, 4], [512, 512, 3, 3], [3, 3])  # 64 in the chunk
    assert pays([None, 512, 4, 4], [512, 512, 1, 1], [1, 1])
    wide = ([None, 128, 8, 8], [128, 128, 3, 3], [3, 3])  # 128 channels > 64 positions, whole blocks
    assert nchwc.turned_input_gradient_pays(8)(*wide)  # in blocks at 8 images: 4 x 8 x 64 >= 128 x 9
    assert not nchwc.turned_input_gradient_pays(4)(*wide)  # not at 4 images (1024 < 1152)
    assert not nchwc.turned_input_gradient_pays(None)(*wide)
    assert pays(None, None, [3, 3]) and pays([None, 64, None, 8], None, [3, 3])


def test_bundled_segmentation_network_same_gradients_as_engine_kernels(tmp_path, monkeypatch):
    """Upsampling, ReLU, conv input and banded weight gradients against the engine's own kernels."""
    monkeypatch.setattr(fast_gradients, "BAND_THRESHOLD_BYTES", 0)
    monkeypatch.setattr(fast_gradients, "BAND_BYTES", 4096)
    path = tmp_path / "seg.onnx"
    onnx.save(nets.segmentation_compact(num_classes=3, widths=(4, 8, 8, 8)), path)
    rng = np.random.default_rng(5)
    samples = [{"image": rng.uniform(-127, 128, (16, 16, 3)).astype(np.float32),
                "segmentation_image": rng.integers(0, 3, (16, 16)).astype(np.uint8)} for _ in range(3)]
    found = {}
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(fast_gradients, "rewrite", lambda training, *args: {})
        model = dl.read_dl_model(path, type="segmentation")
        for name, value in (("image_dimensions", [16, 16, 3]), ("batch_size", 3), ("weight_prior", 0.0)):
            dl.set_dl_model_param(model, name, value)
        found[fast] = (*engine_gradients(model, samples), model.trainer().session.rewrites)
    assert found[True][2]["Expand"] == 3 and found[True][2]["ReluGrad"] == 9 and found[True][2]["ConvGrad"] >= 9
    assert found[True][0] == pytest.approx(found[False][0], rel=1e-6)
    for name, value in found[False][1].items():
        np.testing.assert_allclose(found[True][1][name], value, rtol=RTOL, atol=1e-6 * np.abs(value).max(), err_msg=name)


def test_bands_cover_every_output_row_once():
    """Row bands of a large weight gradient partition the output rows; small ones stay whole."""
    bands = fast_gradients._bands([None, 32, 256, 256], [3, 3], [1, 1, 1, 1], [1, 1])
    assert bands[0][0] == 0 and bands[-1][1] == 256 and len(bands) > 1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bands))
    assert fast_gradients._bands([None, 16, 32, 32], [3, 3], [1, 1, 1, 1], [1, 1]) == []
    assert fast_gradients._bands([None, 32, None, 256], [3, 3], [1, 1, 1, 1], [1, 1]) == []


def test_solver_session_does_not_spin():
    """The update session's idle threads sleep at once: spinning ones took cores from the next training step."""
    options = runtime.session_options(2, False, optimize=False, spinning=False)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_solver_update_runs_on_the_host_on_cpu_and_else_in_a_non_spinning_session(linear_model):
    """On the CPU the solver updates with NumPy in place (no session); its update session (a GPU's) has
    spinning off."""
    from onnx_dl.engine.solver import Solver

    dl.train_dl_model_batch(linear_model, image_samples(4, [0, 1, 2, 0]))
    trainer = linear_model.trainer()
    assert trainer.solver.on_host and not hasattr(trainer.solver, "_session")
    solver = Solver("sgd", trainer.session, "cpu", 2, False, on_host=False)
    assert solver._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_relu_mask_is_exact_from_the_smallest_normal_float_up():
    """dY * Clip(Y * 2^127, 0, 1) equals the engine's ReluGrad at 0, 2^-126, small, ordinary and huge Y."""
    y = np.array([0.0, 2.0**-126, 1e-30, 0.5, 1.0, 7.0, 3e38, 0.0], np.float32)
    d_y = np.array([1.5, -2.0, 3.0, -4.0, 0.25, 1e-20, -1e30, -3.0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReluGrad", ["dY", "Y"], ["dX"], domain="com.microsoft")], "relu_grad",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [8]) for n in ("dY", "Y")],
        [helper.make_tensor_value_info("dX", TensorProto.FLOAT, [8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert fast_gradients.rewrite(rewritten)["ReluGrad"] == 1
    assert "ReluGrad" not in {n.op_type for n in rewritten.graph.node}
    rt = runtime.ort()
    results = [rt.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"dY": d_y, "Y": y})[0]
               for m in (model, rewritten)]
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[1], np.where(y > 0, d_y, 0.0))


@pytest.mark.parametrize("threads", [1, 2])
def test_sums_become_adds_in_the_same_order_bit_for_bit(threads):
    """Sum of 2, 3 and 4 terms (one broadcast) as chains of Add: equal bit for bit to the engine's Sum; on
    one thread only the two-term Sum changes."""
    shapes = {"a": [2, 3, 4, 5], "b": [2, 3, 4, 5], "c": [2, 3, 4, 5], "d": [1, 3, 1, 5]}
    nodes = [helper.make_node("Sum", ["a", "b"], ["two"]), helper.make_node("Sum", ["a", "b", "c"], ["three"]),
             helper.make_node("Sum", ["c", "d", "a", "b"], ["four"])]
    graph = helper.make_graph(nodes, "sums", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("two", "three", "four")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert fast_gradients.rewrite(rewritten, threads=threads)["Sum"] == (3 if threads > 1 else 1)
    assert [n.op_type for n in rewritten.graph.node].count("Sum") == (0 if threads > 1 else 2)
    rng = np.random.default_rng(6)
    # magnitudes far apart, so that another order of the additions would round differently
    feeds = {n: (rng.standard_normal(s) * 10.0 ** rng.integers(-6, 7, s)).astype(np.float32) for n, s in shapes.items()}
    rt = runtime.ort()
    results = [rt.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
               for m in (model, rewritten)]
    for ours, engine in zip(results[1], results[0]):
        np.testing.assert_array_equal(ours, engine)
    np.testing.assert_array_equal(results[1][2], ((feeds["c"] + feeds["d"]) + feeds["a"]) + feeds["b"])
