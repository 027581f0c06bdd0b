"""The training graph's AveragePool rewrite computes what the engine's AveragePool computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnx_dl import graph as g
from onnx_dl import pool_gradients
from onnx_dl.errors import DLModelFileError

CASES = [  # spatial size, kernel, strides, pads, ceil_mode, count_include_pad
    ([8, 8], [2, 2], [2, 2], [0, 0, 0, 0], 0, 1),
    ([9, 7], [3, 3], [2, 2], [1, 1, 1, 1], 0, 0),
    ([9, 7], [3, 2], [2, 1], [1, 0, 1, 1], 0, 1),
    ([9, 9], [3, 3], [2, 2], [1, 1, 1, 1], 1, 0),
    ([9, 9], [2, 2], [2, 2], [0, 0, 0, 0], 1, 1),
    ([10], [4], [3], [2, 1], 0, 0),
    ([5, 6, 7], [2, 3, 2], [2, 2, 1], [0, 1, 1, 1, 0, 0], 0, 0),
]


def _pool_model(size: list[int], **attrs: object) -> onnx.ModelProto:
    node = helper.make_node("AveragePool", ["x"], ["y"], name="pool", **attrs)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, *size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("size, kernel, strides, pads, ceil_mode, include_pad", CASES)
def test_rewrite_equals_average_pool(size, kernel, strides, pads, ceil_mode, include_pad):
    """Depthwise Conv (times the divisor map) equals ONNX Runtime's AveragePool, for 1-, 2- and 3-d pools."""
    original = _pool_model(size, kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=ceil_mode,
                           count_include_pad=include_pad)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    assert pool_gradients.rewrite(rewritten, g.tensor_shapes(rewritten)) == 1
    assert "AveragePool" not in {n.op_type for n in rewritten.graph.node}
    x = np.random.default_rng(0).standard_normal((2, 3, *size)).astype(np.float32)
    expected = _run(original, x)
    np.testing.assert_allclose(_run(rewritten, x), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_run(rewritten, x[:1]), expected[:1], rtol=1e-6, atol=1e-6)  # any batch size


def test_unknown_shape_is_refused_naming_the_node():
    model = _pool_model([8, 8], kernel_shape=[2, 2], strides=[2, 2])
    with pytest.raises(DLModelFileError, match="AveragePool 'pool'"):
        pool_gradients.rewrite(model, {})
