"""Rewrites of slow kernels in a generated training graph into equivalent faster ones.

Measured on ONNX Runtime 1.19.2 (CPU) inside the training step of the bundled networks:

- ``ReluGrad(dY, Y)`` runs single-threaded and costs about ten times the forward ReLU; it
  becomes ``dY * Clip(Y * 2^127, 0, 1)``: three multi-threaded elementwise kernels (faster than
  ``dY * Cast(Y > 0)``, whose Cast is single-threaded). The mask is exactly 0 where Y = 0 and 1
  wherever Y >= 2^-126; only a subnormal activation (0 < Y < 2^-126, about 1e-38) would pass a
  fraction Y * 2^127 of its gradient instead of all of it.
- ``ConvGrad`` computes the input gradient dX with a GEMM and a col2im per image (per group and
  image for grouped ones). For a stride-1, undilated convolution, dX is the forward convolution of
  dY with the kernel transposed over (out, in) within each group and flipped in space,

      dX = Conv(dY, flip(W^T), pads = k - 1 - p, group = G)

  which the engine's forward kernel computes about twice as fast (depthwise: mobilenet_v2 at
  128 x 128, batch 8, 241 -> 221 ms per step). ConvGrad keeps dW and dB. The turn of each kernel is
  a GEMM with a reversal matrix (see ``transposed_flipped``). On the CPU a dense convolution with more
  input channels than input positions keeps the engine's dX (``turn_pays``; see
  :func:`onnx_dl.nchwc.turned_input_gradient_pays`).
- Nearest upsampling written as ``Expand(Unsqueeze(x, [3, 5]), [1, 1, 1, s, 1, s])`` (the
  bundled decoder's form: the engine has no Resize gradient) copies element by element; the
  same (N, C, H, s, W, s) tensor is ``Reshape(Resize(x, nearest, scales [1, 1, s, s]))``, about
  eight times faster. Only the forward computation changes: the gradient graph already built for
  the Expand stays valid.
- ``Sum`` (the engine adds up the gradients of a tensor with several consumers with it, e.g. a
  residual block's input, or a weight shared by a detector's heads on every level) runs single-threaded; on
  two or more threads it becomes a chain of ``Add`` (multi-threaded), which adds in the same order,
  bit for bit (resnet18, 2 threads: 285 -> 275 ms per step). On one thread only two-term Sums change
  (as fast as one Add); longer chains would read the partial sums again.
- The weight gradient of a convolution on a large image (ConvGrad's im2col buffer over 8 MB per
  image) is memory-bound; it becomes the sum of ConvGrads over bands of output rows (each with its
  slice of dY and of X, halo rows included) whose buffers stay in cache: about twice as fast.

Apart from that subnormal case, every rewrite computes the same values up to float32 summation order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import graph as g
from .onnx_builder import GraphBuilder, SharedConstants

Shape = list[int | None] | None
TurnPays = Callable[[Shape, Shape, list[int]], bool]

_MS = "com.microsoft"
BAND_THRESHOLD_BYTES = 8 << 20  # split a weight gradient whose im2col buffer per image exceeds this
BAND_BYTES = 4 << 20  # ... into bands of output rows whose buffers are about this size (cache-sized)


def _relu_grad(b: GraphBuilder, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """dX = dY * Clip(Y * 2^127, 0, 1): the mask is 1 wherever Y >= 2^-126 and 0 where Y = 0."""
    d_y, y = node.input
    scaled, mask = b.fresh("relu_scaled"), b.fresh("relu_mask")
    return [
        helper.make_node("Mul", [y, b.const(2.0**127, "relu_gain")], [scaled], name=b.fresh("relu_scaled_node")),
        # an explicit lower bound: with the optional min left out, the engine's Clip produced NaNs here
        helper.make_node("Clip", [scaled, b.const(0.0, "zero"), b.const(1.0, "one")], [mask],
                         name=b.fresh("relu_mask_node")),
        helper.make_node("Mul", [d_y, mask], [node.output[0]], name=b.fresh("relu_grad_node")),
    ]


def _sum_as_adds(b: GraphBuilder, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Sum(a, b, c, ...) as Add(Add(a, b), c) ...: the same additions in the same order."""
    total, nodes = node.input[0], []
    for i, term in enumerate(node.input[1:], start=2):
        out = node.output[0] if i == len(node.input) else b.fresh("sum_partial")
        nodes.append(helper.make_node("Add", [total, term], [out], name=b.fresh("sum_add_node")))
        total = out
    return nodes


def _conv_attributes(node: onnx.NodeProto) -> tuple[list[int], list[int], list[int], int] | None:
    """(kernel, pads, strides, group) of a 2-D, undilated ConvGrad with explicit pads; else None."""
    a = g.attributes(node)
    kernel = list(a.get("kernel_shape", []))
    if (len(kernel) != 2 or any(d != 1 for d in a.get("dilations", [1, 1]))
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
        return None
    pads = list(a.get("pads", [0, 0, 0, 0]))
    return kernel, pads, list(a.get("strides", [1, 1])), int(a.get("group", 1))


def _input_gradient_as_conv(kernel: list[int], pads: list[int], strides: list[int]) -> bool:
    """Whether dX equals one forward convolution: stride 1 and pads within the kernel.

    Strided convolutions keep the engine's dX: the forward convolution of dY dilated by the strides
    (zeros written by Pad) was measured slower than ConvGrad (resnet18 at 128 x 128, batch 8: 270 ->
    290 ms per step; mobilenet_v2's depthwise ones 221 -> 230 ms)."""
    return all(s == 1 for s in strides) and all(0 <= p <= k - 1 for p, k in zip(pads, kernel * 2))


def transposed_flipped(b: GraphBuilder, weight: str, kernel: list[int], group: int,
                        shape: list[int | None] | None) -> tuple[str, list[onnx.NodeProto]] | None:
    """flip(W^T) per group: (O, I/G, kh, kw) -> (I, O/G, kh, kw), each kernel turned by 180 degrees;
    None where a grouped weight's shape is unknown.

    The turn reverses the kh * kw taps of a kernel, a product with the reversal permutation matrix P
    (one GEMM: a Slice with negative steps copies element by element, three times slower on resnet18's
    512 x 512 x 3 x 3 weights). x * 1 + sum of (0 * other taps) is x exactly for finite weights (a zero
    may lose its sign). A 1 x 1 kernel needs no turn; a depthwise weight (O = G, I/G = 1) no transposition."""
    taps = kernel[0] * kernel[1]
    if group == 1:
        layout = [0, 0, taps]
        perm = [1, 0, 2]
    elif shape is not None and len(shape) == 4 and shape[0] is not None and shape[1] is not None:
        layout = [group, shape[0] // group, shape[1], taps]
        perm = [0, 2, 1, 3]
    else:
        return None
    depthwise = group > 1 and layout[1] == 1 and layout[2] == 1
    rows, transposed = b.fresh("conv_grad_weight_taps"), b.fresh("conv_grad_weight_t")
    nodes = [helper.make_node("Reshape", [weight, b.const(layout, "taps_shape")], [rows], name=b.fresh("conv_grad_taps_node"))]
    if depthwise:
        transposed = rows
    else:
        nodes.append(helper.make_node("Transpose", [rows], [transposed], name=b.fresh("conv_grad_transpose_node"), perm=perm))
    turned = transposed
    if taps > 1:
        turned = b.fresh("conv_grad_weight_turned")
        reversal = np.eye(taps, dtype=np.float32)[::-1].copy()
        nodes.append(helper.make_node("MatMul", [transposed, b.const(reversal, "tap_reversal")], [turned],
                                      name=b.fresh("conv_grad_turn_node")))
    flipped = b.fresh("conv_grad_weight_flipped")
    if group > 1:
        target = [layout[0] * layout[2], layout[1], *kernel]
    elif shape is not None and len(shape) == 4 and shape[0] is not None and shape[1] is not None:
        target = [shape[1], shape[0], *kernel]  # spelled out: later rewrites read the turned kernel's shape
    else:
        target = [0, 0, *kernel]
    nodes.append(helper.make_node("Reshape", [turned, b.const(target, "kernel_shape")], [flipped],
                                  name=b.fresh("conv_grad_kernel_node")))
    return flipped, nodes


def _input_gradient(b: GraphBuilder, node: onnx.NodeProto, kernel: list[int], pads: list[int], group: int,
                    weight_shape: list[int | None] | None) -> list[onnx.NodeProto] | None:
    """dX = Conv(dY, flip(W^T) per group, pads = k - 1 - p, group G) for a stride-1 convolution."""
    found = transposed_flipped(b, node.input[2], kernel, group, weight_shape)
    if found is None:
        return None
    flipped, nodes = found
    return [*nodes, helper.make_node("Conv", [node.input[0], flipped], [node.output[0]], name=b.fresh("conv_grad_input_node"),
                                     kernel_shape=kernel, pads=[k - 1 - p for p, k in zip(pads, kernel * 2)],
                                     strides=[1, 1], group=group)]


def _bands(shape: list[int | None] | None, kernel: list[int], pads: list[int], strides: list[int]) -> list[tuple[int, int]]:
    """Output row ranges whose im2col buffers stay near BAND_BYTES; none when banding does not pay."""
    if shape is None or len(shape) != 4 or None in shape[1:]:
        return []
    channels, height, width = shape[1], shape[2], shape[3]
    out_h = (height + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    out_w = (width + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    row_bytes = 4 * channels * kernel[0] * kernel[1] * out_w  # im2col floats per output row, per image
    if out_h < 2 or row_bytes * out_h <= BAND_THRESHOLD_BYTES:
        return []
    rows = max(1, BAND_BYTES // row_bytes)
    return [(start, min(start + rows, out_h)) for start in range(0, out_h, rows)]


def _banded_weight_gradient(b: GraphBuilder, node: onnx.NodeProto, height: int, bands: list[tuple[int, int]],
                            kernel: list[int], pads: list[int], strides: list[int]) -> list[onnx.NodeProto]:
    """dW (and dB) of ConvGrad as the sum over bands of output rows, each from its slice of dY and X."""
    d_y, x, weight = node.input
    rows_axis = b.const([2], "rows_axis")
    nodes = []
    parts: dict[int, list[str]] = {i: [] for i in (1, 2) if len(node.output) > i and node.output[i]}
    for first, last in bands:
        start = first * strides[0] - pads[0]  # input rows the band reads, padding included
        end = (last - 1) * strides[0] - pads[0] + kernel[0]
        x_band, d_y_band = b.fresh("band_x"), b.fresh("band_dy")
        nodes.append(helper.make_node("Slice", [x, b.const([max(start, 0)], "band_x_start"),
                                                b.const([min(end, height)], "band_x_end"), rows_axis],
                                      [x_band], name=b.fresh("band_x_node")))
        nodes.append(helper.make_node("Slice", [d_y, b.const([first], "band_dy_start"), b.const([last], "band_dy_end"),
                                                rows_axis], [d_y_band], name=b.fresh("band_dy_node")))
        outputs = ["", *(b.fresh(f"band_grad{i}") if i in parts else "" for i in (1, 2))]
        nodes.append(helper.make_node("ConvGrad", [d_y_band, x_band, weight], outputs, name=b.fresh("band_grad_node"),
                                      domain=_MS, kernel_shape=kernel, strides=strides,
                                      pads=[max(-start, 0), pads[1], max(end - height, 0), pads[3]]))
        for i, names in parts.items():
            names.append(outputs[i])
    for i, names in parts.items():
        nodes.append(helper.make_node("Sum", names, [node.output[i]], name=b.fresh("band_sum_node")))
    return nodes


def _conv_grad(b: GraphBuilder, node: onnx.NodeProto, shapes: dict[str, list[int | None]],
               turn_pays: TurnPays | None = None, counts: dict[str, int] | None = None) -> list[onnx.NodeProto] | None:
    """Cheaper nodes computing what ConvGrad ``node`` computes; None when nothing pays. A dense dX that
    ``turn_pays`` refuses to turn stays the engine's (counted in ``counts["engine dX"]``)."""
    found = _conv_attributes(node)
    if found is None:
        return None
    kernel, pads, strides, group = found
    wants_input = len(node.output) > 0 and node.output[0] != ""
    wants_weights = any(node.output[1:])
    shape = shapes.get(node.input[1])
    input_nodes = None
    if wants_input and _input_gradient_as_conv(kernel, pads, strides):
        if turn_pays is None or group > 1 or turn_pays(shape, shapes.get(node.input[2]), kernel):
            input_nodes = _input_gradient(b, node, kernel, pads, group, shapes.get(node.input[2]))
        elif counts is not None:
            counts["engine dX"] += 1
    bands = _bands(shape, kernel, pads, strides) if wants_weights and shape and group == 1 else []
    if input_nodes is None and not bands:
        return None
    nodes = []
    if input_nodes is not None:
        nodes += input_nodes
        if shape is not None:  # dX has X's shape; declared for later rewrites (nchwc sizes convolutions by it)
            b.graph.value_info.append(helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, shape))
    elif wants_input:  # the engine's own dX, without dW and dB
        input_only = helper.make_node("ConvGrad", node.input, [node.output[0]], name=b.fresh("conv_grad_dx_node"),
                                      domain=_MS)
        input_only.attribute.extend(node.attribute)
        nodes.append(input_only)
    if bands and shape:
        nodes += _banded_weight_gradient(b, node, int(shape[2] or 0), bands, kernel, pads, strides)
    elif wants_weights:
        weights_only = helper.make_node("ConvGrad", node.input, ["", *node.output[1:]], name=node.name, domain=_MS)
        weights_only.attribute.extend(node.attribute)
        nodes.append(weights_only)
    return nodes


def _constant(training: onnx.ModelProto, name: str) -> list[int] | None:
    for init in training.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).reshape(-1).tolist()
    return None


def _upsampling_factor(training: onnx.ModelProto, node: onnx.NodeProto,
                       producer: dict[str, onnx.NodeProto]) -> int | None:
    """s when ``node`` is Expand(Unsqueeze(x, [3, 5]), [1, 1, 1, s, 1, s]) with s >= 2, else None."""
    spread = producer.get(node.input[0])
    if spread is None or spread.op_type != "Unsqueeze" or len(spread.input) != 2:
        return None
    axes, tiles = _constant(training, spread.input[1]), _constant(training, node.input[1])
    if axes != [3, 5] or tiles is None or len(tiles) != 6 or tiles[:3] != [1, 1, 1] or tiles[4] != 1:
        return None
    return tiles[3] if tiles[3] == tiles[5] and tiles[3] >= 2 else None


def _upsampling(b: GraphBuilder, node: onnx.NodeProto, spread: onnx.NodeProto, factor: int) -> list[onnx.NodeProto]:
    """Expand's output computed as Reshape(Resize(x, nearest, [1, 1, s, s]), Shape(spread) * tiles)."""
    resized, spread_shape, tiled_shape = b.fresh("up_resized"), b.fresh("up_spread_shape"), b.fresh("up_tiled_shape")
    scales = b.const(np.array([1.0, 1.0, factor, factor], np.float32), "up_scales")
    return [
        helper.make_node("Resize", [spread.input[0], "", scales], [resized], name=b.fresh("up_resize_node"),
                         mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Shape", [node.input[0]], [spread_shape], name=b.fresh("up_spread_shape_node")),
        helper.make_node("Mul", [spread_shape, node.input[1]], [tiled_shape], name=b.fresh("up_tiled_shape_node")),
        helper.make_node("Reshape", [resized, tiled_shape], [node.output[0]], name=b.fresh("up_tiled_node")),
    ]


def rewrite(training: onnx.ModelProto, shapes: dict[str, list[int | None]] | None = None, threads: int = 1,
            turn_pays: TurnPays | None = None) -> dict[str, int]:
    """Replace slow nodes of ``training`` in place; return how many of each kind were replaced.

    ``shapes`` holds the static shapes of forward tensors (needed to split weight gradients into bands);
    ``threads`` the session's thread count; ``turn_pays`` (X's shape, W's shape, kernel), where given, says
    whether a dense convolution's dX pays as the turned forward convolution (else the engine's ConvGrad
    keeps it; see :func:`onnx_dl.nchwc.turned_input_gradient_pays` for the CPU).
    """
    shapes = {**g.declared_shapes(training), **(shapes or {})}
    b = SharedConstants(training.graph, prefix="fast/")
    nodes: list[onnx.NodeProto] = []
    counts = {"ReluGrad": 0, "ConvGrad": 0, "Expand": 0, "Sum": 0, "engine dX": 0}
    producer = {out: node for node in training.graph.node for out in node.output}
    for node in training.graph.node:
        factor = _upsampling_factor(training, node, producer) if node.op_type == "Expand" and node.domain == "" else None
        if factor is not None:
            nodes += _upsampling(b, node, producer[node.input[0]], factor)
        elif node.domain == "" and node.op_type == "Sum" and (len(node.input) == 2 or len(node.input) > 2 and threads > 1):
            nodes += _sum_as_adds(b, node)
        elif node.domain == _MS and node.op_type == "ReluGrad":
            nodes += _relu_grad(b, node)
        elif (node.domain == _MS and node.op_type == "ConvGrad"
              and (faster := _conv_grad(b, node, shapes, turn_pays, counts)) is not None):
            nodes += faster
        else:
            nodes.append(node)
            continue
        counts[node.op_type] += 1
    del training.graph.node[:]
    training.graph.node.extend(nodes)
    return counts
