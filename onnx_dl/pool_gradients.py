"""Average pooling for the training graph: the engine's own gradient of it cannot be used.

ONNX Runtime 1.19.2's CPU ``AveragePoolGrad`` sizes its output dX from the *static* shape the
graph declares for it, batch dimension included (its ``MaxPoolGrad`` takes the batch from dY;
``AveragePoolGrad`` does not). The training graph's batch dimension is symbolic, so dX comes out
with batch 0 and the next kernel fails: a broadcast error, or the process dies with SIGFPE
(torchvision's densenet121, whose transitions average-pool, killed the Python process).

So before the engine builds the gradient, every ``AveragePool`` of the training graph becomes a
depthwise convolution with a constant kernel, whose gradient (``ConvGrad``) takes every shape from
its inputs. The written model keeps its ``AveragePool``: only the training graph changes.

    AveragePool(x) = Conv(x, ones(C, 1, k...), group = C, strides, pads') * F

Per spatial axis, window j reads input positions [s = j * stride - pad_begin, s + k). ``pads'``
extends the end padding where ``ceil_mode`` adds a last window, so the convolution yields every
window of the pooling; F = 1 / divisor, with the divisor the engine's AveragePool uses (so
training computes what inference computes):

- ``count_include_pad = 1``: the whole kernel, prod(k), also for a ``ceil_mode`` window that
  runs past the padded input (PyTorch divides such a window by its part inside the padded input:
  there the engine and PyTorch differ, whatever the training graph does);
- ``count_include_pad = 0``: the window clipped to the input [0, size).

The divisor of an n-d window is the product of its per-axis extents, so F is an outer product;
when it is the same everywhere it is folded into the kernel (no ``Mul``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .errors import DLModelFileError
from .onnx_builder import GraphBuilder


def _ints(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    """The ints of attribute ``name`` of ``node`` (``default`` when absent)."""
    found = next((a for a in node.attribute if a.name == name), None)
    return [int(v) for v in found.ints] if found is not None else default


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    found = next((a for a in node.attribute if a.name == name), None)
    return int(found.i) if found is not None else default


def _known(dims: list[int | None]) -> list[int]:
    return [int(d) for d in dims if d is not None]


def _axis_divisors(size: int, kernel: int, stride: int, begin: int, out: int, include_pad: bool) -> np.ndarray:
    """Per output position along one axis: how many positions the window averages over."""
    starts = np.arange(out) * stride - begin
    if include_pad:
        return np.full(out, kernel)
    return np.minimum(starts + kernel, size) - np.maximum(starts, 0)


def _refuse(node: onnx.NodeProto, why: str) -> DLModelFileError:
    return DLModelFileError(f"cannot train through AveragePool '{node.name}': {why}")


def _as_convolution(b: GraphBuilder, node: onnx.NodeProto, in_shape: list[int | None],
                    out_shape: list[int | None]) -> list[onnx.NodeProto]:
    """Nodes computing AveragePool ``node`` as a depthwise convolution times the divisor map."""
    kernel = _ints(node, "kernel_shape", [])
    rank = len(kernel)
    if len(in_shape) != rank + 2 or None in in_shape[1:] or len(out_shape) != rank + 2 or None in out_shape[2:]:
        raise _refuse(node, f"its input shape {in_shape} / output shape {out_shape} are not known "
                            "at the training image size")
    auto_pad = next((a.s for a in node.attribute if a.name == "auto_pad"), b"NOTSET")
    if auto_pad != b"NOTSET":
        raise _refuse(node, f"auto_pad {auto_pad.decode()} is not supported; export with explicit pads")
    if any(d != 1 for d in _ints(node, "dilations", [1] * rank)):
        raise _refuse(node, f"dilations {_ints(node, 'dilations', [])} are not supported")
    strides = _ints(node, "strides", [1] * rank)
    pads = _ints(node, "pads", [0] * (2 * rank))
    channels, *sizes = _known(in_shape[1:])
    outs = _known(out_shape[2:])
    include_pad = bool(_int(node, "count_include_pad", 0))
    divisors = np.ones([1, 1], np.float64)
    conv_end = []
    for axis in range(rank):
        begin, end = pads[axis], pads[axis + rank]
        per_axis = _axis_divisors(sizes[axis], kernel[axis], strides[axis], begin, outs[axis], include_pad)
        divisors = np.multiply.outer(divisors, per_axis)
        conv_end.append(max(end, (outs[axis] - 1) * strides[axis] + kernel[axis] - sizes[axis] - begin))
    scale = (1.0 / divisors).astype(np.float32)
    uniform = bool(np.all(scale == scale.flat[0]))
    weight = np.full([channels, 1, *kernel], scale.flat[0] if uniform else 1.0, np.float32)
    conv_out = node.output[0] if uniform else b.fresh("avgpool_sum")
    nodes = [helper.make_node("Conv", [node.input[0], b.const(weight, "avgpool_kernel")], [conv_out],
                              name=b.fresh("avgpool_conv_node"), group=channels, kernel_shape=kernel,
                              strides=strides, pads=[*pads[:rank], *conv_end])]
    if not uniform:
        nodes.append(helper.make_node("Mul", [conv_out, b.const(scale, "avgpool_scale")], [node.output[0]],
                                      name=b.fresh("avgpool_scale_node")))
    return nodes


def rewrite(model: onnx.ModelProto, shapes: dict[str, list[int | None]]) -> int:
    """Replace every AveragePool of ``model`` (a training graph before artifact generation) in place.

    ``shapes`` holds the inferred shapes of its tensors at the training image size. Returns how
    many nodes were replaced; raises :class:`DLModelFileError` naming a node that cannot be.
    """
    b = GraphBuilder(model.graph, prefix="avgpool/")
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in model.graph.node:
        if node.op_type == "AveragePool" and node.domain in ("", "ai.onnx"):
            nodes += _as_convolution(b, node, shapes.get(node.input[0], []), shapes.get(node.output[0], []))
            count += 1
        else:
            nodes.append(node)
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return count
