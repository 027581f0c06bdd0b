"""Depthwise and grouped convolutions of a training graph in the engine's blocked channel layout (NCHWc).

ONNX Runtime's CPU Conv runs a depthwise convolution (one input channel per group) or a grouped one
in NCHW as one small GEMM per group and image. Its blocked kernels (domain ``com.microsoft.nchwc``, channels in
blocks of B = 8 or 16 as the CPU's vector width decides) compute them directly, but the engine's
own layout transformer hands them only constant weights, which a trained weight never is. So every
depthwise ``Conv``, every grouped one whose groups hold whole blocks and the dense ones where it pays (below) of the training graph (the
forward ones and the input-gradient convolutions of :mod:`onnx_dl.fast_gradients`) becomes

    ReorderInput(X) -> nchwc.Conv(., W reordered, B padded) -> ReorderOutput(channels = C)

with the weight reordered in the graph at every step (small next to the image; see
``_reordered_weight``). A depthwise convolution's channels are zero-padded to a multiple of B;
the padded channels have zero weights and are dropped by ReorderOutput. The values are the same
convolution summed in another order (within float32 rounding); the gradient graph, built before,
still reads the NCHW input and weight.

Measured on a 2-vCPU AVX-512 machine, batch 8, 3 x 3, two threads, reorders included: 32 channels
at 64 x 64 1.95 -> 0.82 ms, 96 at 64 x 64 stride 2 5.45 -> 1.14 ms, 384 at 8 x 8 1.02 -> 0.20 ms;
groups of 16 channels (regnet_x_400mf): 64 channels at 32 x 32 1.53 -> 0.95 ms, 400 at 8 x 8
1.16 -> 0.55 ms. Dense k x k convolutions whose channels are whole blocks run in blocks too where
their weight is small next to the image (``_dense_pays``; 16 -> 16 channels at 112 x 112
4.1 -> 2.7 ms): the blocked kernel is 1.2-1.5x faster than im2col + GEMM at every size, but a
512 x 512 x 3 x 3 weight's reorder costs more than that. A first layer (fewer than B input channels, the
image's) runs in the blocked kernel that reads NCHW input where it is strided and its window large
(``_first_layer_pays``; resnet's 7 x 7 stem 5.1 -> 4.0 ms). 1 x 1 convolutions stay (a GEMM in NCHW, about
3x slower in blocks).

Only for the CPU: the blocked kernels have no CUDA implementation.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import fast_gradients
from . import graph as g
from .engine.runtime import ort
from .onnx_builder import GraphBuilder, SharedConstants

DOMAIN = "com.microsoft.nchwc"
_MS = "com.microsoft"


@functools.cache
def block_size() -> int:
    """The engine's NCHWc block on this CPU: the channels ReorderInput pads 4 channels to."""
    node = helper.make_node("ReorderInput", ["x"], ["y"], domain=DOMAIN)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 8
    session = ort().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return int(session.run(None, {"x": np.zeros((1, 4, 1, 1), np.float32)})[0].shape[1])


def _static_shapes(graph: onnx.GraphProto, shapes: dict[str, list[int | None]]) -> dict[str, list[int | None]]:
    """``shapes`` plus the graph's declared value shapes (the input gradients of
    :mod:`onnx_dl.fast_gradients`) and the outputs of Reshapes to a constant, fully given shape (the turned
    kernels of the input-gradient convolutions)."""
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    known = dict(shapes)
    for info in graph.value_info:
        dims = info.type.tensor_type.shape.dim
        known.setdefault(info.name, [d.dim_value if d.HasField("dim_value") else None for d in dims])
    for node in graph.node:
        if node.op_type == "Reshape" and node.domain == "" and node.input[1] in constants:
            target = constants[node.input[1]].reshape(-1).tolist()
            if all(d > 0 for d in target):
                known[node.output[0]] = target
    return known


def _padded(channels: int, block: int) -> int:
    """``channels`` rounded up to whole blocks (ReorderInput's padding)."""
    return -(-channels // block) * block


class Blocked(NamedTuple):
    """A convolution the blocked kernels take: weight (channels, input channels / group, *kernel)."""

    channels: int
    inputs: int  # input channels per group
    group: int
    kernel: list[int]

    @property
    def depthwise(self) -> bool:
        """One input and one output channel per group."""
        return self.group == self.channels

    def nchw_input(self, block: int) -> bool:
        """A dense convolution of fewer than ``block`` input channels (a network's first layer): the blocked
        kernel reads its input in NCHW, unreordered."""
        return self.group == 1 and self.inputs < block


def blocked(node: onnx.NodeProto, shapes: dict[str, list[int | None]], block: int,
            chunk: int | None = None) -> Blocked | None:
    """How ``node`` runs in blocks, when it is a 2-D Conv with explicit pads and a known weight shape that is

    - depthwise: weight (C, 1, kh, kw), group C a multiple of 4 (ReorderInput's condition),
    - grouped with whole blocks: group G > 1, input and output channels per group multiples of ``block``, or
    - dense with whole blocks and a kernel larger than 1 x 1 whose reorder pays: the weight (C x I x kh x kw)
      no larger than four times ``chunk`` images of the output's spatial size times I (see ``_dense_pays``), or
    - dense and strided with fewer than ``block`` input channels, whole output blocks and a large enough window
      (a first layer; see ``_first_layer_pays``), its input read in NCHW;

    else None."""
    if node.op_type != "Conv" or node.domain != "":
        return None
    a = g.attributes(node)
    weight = shapes.get(node.input[1])
    group = int(a.get("group", 1))
    if (weight is None or len(weight) != 4 or None in weight or weight[0] % group
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
        return None
    channels, per_group, kernel = int(weight[0]), int(weight[1]), [int(weight[2]), int(weight[3])]
    whole_blocks = (channels // group) % block == 0 and per_group % block == 0
    if group == 1:
        dense = _dense_in_blocks(channels, per_group, kernel, shapes.get(node.output[0]), chunk, block)
        strided = any(stride > 1 for stride in a.get("strides", [1, 1]))
        return Blocked(channels, per_group, 1, kernel) if kernel != [1, 1] and (dense or _first_layer_pays(
            channels, per_group, kernel, strided, block)) else None
    depthwise = group == channels and per_group == 1 and group % 4 == 0
    return Blocked(channels, per_group, group, kernel) if depthwise or whole_blocks else None


def _dense_in_blocks(channels: int, inputs: int, kernel: list[int], output: list[int | None] | None,
                     chunk: int | None, block: int) -> bool:
    """Whether a dense convolution (``channels`` outputs from ``inputs``) runs in blocks: whole blocks on both
    sides and a weight reorder that pays (``_dense_pays``)."""
    return channels % block == 0 and inputs % block == 0 and _dense_pays(channels, kernel, output, chunk)


def _dense_pays(channels: int, kernel: list[int], output: list[int | None] | None, chunk: int | None) -> bool:
    """Whether a dense convolution is faster in blocks, its weight reordered at every step included:
    4 x ``chunk`` x Ho x Wo >= C x kh x kw, i.e. the weight is no larger than four times the chunk's output
    positions times the input channels. Measured (3 x 3, reorders included, ms at two / one thread;
    r = chunk x Ho x Wo / (C x 9)): 16 -> 16 channels at 112 x 112, batch 8 (r 697) 4.1 -> 2.7 / -;
    64 at 8 x 8, batch 8 (r 0.89) 0.25 -> 0.15 / 0.44 -> 0.24; 128 at 16 x 16, batch 4 (r 0.89)
    1.43 -> 1.09 / 2.51 -> 2.01; 128 at 8 x 8, batch 8 (r 0.44) 1.04 -> 0.65 / 1.33 -> 0.97; 64 at 8 x 8,
    batch 4 (r 0.44) 0.14 -> 0.11 / 0.22 -> 0.13; past it 256 at 8 x 8, batch 8 (r 0.22) 2.90 -> 2.78 /
    4.40 -> 4.40, batch 4 (r 0.11) 1.47 -> 1.82 / 2.20 -> 2.62 and 512 at 4 x 4, batch 8 (r 0.03)
    3.0 -> 6.8 / 5.2 -> 10.4 (the reorder of the larger weight dominates)."""
    if chunk is None or output is None or len(output) != 4 or output[2] is None or output[3] is None:
        return False
    return 4 * chunk * output[2] * output[3] >= channels * kernel[0] * kernel[1]


def turned_input_gradient_pays(chunk: int | None) -> fast_gradients.TurnPays:
    """Whether a dense stride-1 convolution's dX is faster on the CPU as the forward convolution of dY with the
    turned kernel (:mod:`onnx_dl.fast_gradients`) than as the engine's ConvGrad, for ``chunk`` images per run.

    The turned convolution has X's C channels as outputs at X's H x W positions. Where C > H x W and it does
    not run in blocks (``blocked``), the engine's NCHW kernel expands each image on one thread and runs one
    GEMM per image, as ConvGrad's dX does, and the turn of the weight comes on top. That GEMM is still the
    faster one where an image has fewer than 64 positions, so the turn pays there once the chunk holds more
    than 64 positions to spread it over. Measured (3 x 3, two / one thread, ms; ConvGrad's dX -> turn and
    convolution; best of three processes): 256 channels at 8 x 8, batch 8 4.3 -> 5.4 / 7.0 -> 7.5 (in the
    training step of resnet18: 4.1 -> 5.2), batch 4 2.2 -> 3.7 / 3.6 -> 4.4; 512 at 4 x 4, batch 4
    3.2 -> 5.4 / 7.3 -> 8.3, but batch 8 6.8 -> 6.5 / 11.3 -> 11.0 (in the step: 7.5 -> 6.6, turned); 512 at
    8 x 8, batch 8 18.5 -> 18.2 / 33.4 -> 30.2. Where C <= H x W the turn pays (128 at 16 x 16, batch 8:
    4.3 -> 3.5 / 7.2 -> 6.8); 1 x 1 kernels always turn (the engine's kernel is one GEMM without expansion,
    and there is nothing to flip)."""
    block = block_size()

    def pays(x: fast_gradients.Shape, weight: fast_gradients.Shape, kernel: list[int]) -> bool:
        if x is None or len(x) != 4 or x[1] is None or x[2] is None or x[3] is None or kernel == [1, 1]:
            return True
        channels, positions = x[1], x[2] * x[3]
        outputs = weight[0] if weight is not None and len(weight) == 4 else None  # the turned convolution's inputs
        in_blocks = outputs is not None and _dense_in_blocks(channels, outputs, kernel, x, chunk, block)
        spread = positions < 64 and chunk is not None and chunk * positions > 64
        return channels <= positions or in_blocks or spread

    return pays


def _first_layer_pays(channels: int, inputs: int, kernel: list[int], strided: bool, block: int) -> bool:
    """Whether a dense convolution of fewer than ``block`` input channels (a first layer, the image's) is faster
    by the blocked kernel that reads NCHW input: whole output blocks, a stride and a window of at least 64
    values (I x kh x kw). Measured (2 threads, batch 8, ms, im2col + GEMM -> blocked, ReorderOutput included):
    3 -> 64 channels 7 x 7 stride 2 at 128 x 128 (window 147) 5.1 -> 4.0, at 224 x 224 14.2 -> 11.4, batch 4
    at 128 x 128 2.7 -> 2.0; 5 x 5 stride 2 (75) 3.0 -> 2.5; 8 -> 16 channels 3 x 3 stride 2 at 64 x 64 (72)
    0.31 -> 0.18. Not paying: 1 channel 7 x 7 stride 2 (49) 2.7 -> 3.0; 3 x 3 stride 2 to 32 channels (27)
    0.8 -> 0.8-1.4; stride 1, where the output to reorder is larger: 3 -> 64 channels 3 x 3 3.3 -> 6.0,
    8 -> 32 channels 3 x 3 1.8 -> 2.1, 4 -> 32 channels 5 x 5 (100) 1.4 -> 1.4-1.6."""
    return strided and inputs < block and channels % block == 0 and inputs * kernel[0] * kernel[1] >= 64


def _reordered_weight(b: GraphBuilder, weight: str, conv: Blocked, block: int) -> tuple[str, list[onnx.NodeProto]]:
    """The weight in the blocked kernels' layout, and the nodes computing it at every step.

    Depthwise: (C, 1, kh, kw) zero-padded to Cp channels -> (Cp / B, kh, kw, B); NCHW input (fewer than B
    input channels I): (C, I, kh, kw) -> (C / B, I, kh, kw, B). Grouped and dense: (C, I, kh, kw) ->
    (C / B, I / B, kh, kw, B_in, B_out)."""
    nodes = []
    if conv.depthwise or conv.nchw_input(block):
        padded = _padded(conv.channels, block)
        if padded != conv.channels:
            pad, padded_weight = b.const([0, 0, 0, 0, padded - conv.channels, 0, 0, 0], "nchwc_pads"), b.fresh("nchwc_weight_padded")
            nodes.append(helper.make_node("Pad", [weight, pad], [padded_weight], name=b.fresh("nchwc_weight_pad_node")))
            weight = padded_weight
        split = [padded // block, block, conv.inputs * conv.kernel[0] * conv.kernel[1]]
        perm, target = [0, 2, 1], [padded, conv.inputs, *conv.kernel]
    else:
        # (C, I x taps) -> (I x taps, C) is a plain 2-D transpose (the engine's vectorised one), then whole
        # output blocks move: (I / B, B_in, taps, C / B, B_out) -> (C / B, I / B, taps, B_in, B_out); the
        # one 6-D transpose this replaces ran 2-3 times slower (512 x 512 x 3 x 3: 11.6 -> 5.1 ms)
        taps = conv.kernel[0] * conv.kernel[1]
        rows, columns = b.fresh("nchwc_weight_rows"), b.fresh("nchwc_weight_columns")
        nodes += [
            helper.make_node("Reshape", [weight, b.const([conv.channels, conv.inputs * taps], "nchwc_rows_shape")], [rows],
                             name=b.fresh("nchwc_rows_node")),
            helper.make_node("Transpose", [rows], [columns], name=b.fresh("nchwc_columns_node"), perm=[1, 0]),
        ]
        weight = columns
        split = [conv.inputs // block, block, taps, conv.channels // block, block]
        perm, target = [3, 0, 2, 1, 4], [conv.channels, conv.inputs, *conv.kernel]
    blocks, turned, reordered = b.fresh("nchwc_weight_blocks"), b.fresh("nchwc_weight_turned"), b.fresh("nchwc_weight")
    nodes += [
        helper.make_node("Reshape", [weight, b.const(split, "nchwc_blocks_shape")], [blocks], name=b.fresh("nchwc_blocks_node")),
        helper.make_node("Transpose", [blocks], [turned], name=b.fresh("nchwc_turn_node"), perm=perm),
        helper.make_node("Reshape", [turned, b.const(target, "nchwc_weight_shape")], [reordered],
                         name=b.fresh("nchwc_weight_node")),
    ]
    return reordered, nodes


def _blocked_conv(b: GraphBuilder, node: onnx.NodeProto, conv: Blocked, block: int) -> list[onnx.NodeProto]:
    """``node`` as ReorderInput -> nchwc.Conv -> ReorderOutput (no ReorderInput where the kernel reads NCHW
    input), its weight (and bias) reordered in the graph."""
    a = g.attributes(node)
    padded = _padded(conv.channels, block)  # only a depthwise convolution's channels may be off the block
    weight, nodes = _reordered_weight(b, node.input[1], conv, block)
    blocked_x = node.input[0]
    if not conv.nchw_input(block):
        blocked_x = b.fresh("nchwc_x")
        nodes.insert(0, helper.make_node("ReorderInput", [node.input[0]], [blocked_x], name=b.fresh("nchwc_in_node"),
                                         domain=DOMAIN))
    inputs = [blocked_x, weight]
    if len(node.input) > 2 and node.input[2]:
        bias = node.input[2]
        if padded != conv.channels:
            bias = b.fresh("nchwc_bias")
            nodes.append(helper.make_node("Pad", [node.input[2], b.const([0, padded - conv.channels], "nchwc_bias_pads")],
                                          [bias], name=b.fresh("nchwc_bias_pad_node")))
        inputs.append(bias)
    blocked_y = b.fresh("nchwc_y")
    nodes.append(helper.make_node("Conv", inputs, [blocked_y], name=b.fresh("nchwc_conv_node"), domain=DOMAIN,
                                  kernel_shape=conv.kernel, pads=list(a.get("pads", [0, 0, 0, 0])),
                                  strides=list(a.get("strides", [1, 1])), dilations=list(a.get("dilations", [1, 1])),
                                  group=padded if conv.depthwise else conv.group))
    nodes.append(helper.make_node("ReorderOutput", [blocked_y], [node.output[0]], name=b.fresh("nchwc_out_node"),
                                  domain=DOMAIN, channels=conv.channels))
    return nodes


class DepthwiseGrad(NamedTuple):
    """What a depthwise ConvGrad's blocked forms need: channels C, the weight's (kh, kw), X's (H, W),
    pads (top, left, bottom, right), strides and dY's (Ho, Wo)."""

    channels: int
    kernel: list[int]
    size: list[int]
    pads: list[int]
    strides: list[int]
    out: list[int]


def depthwise_grad(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> DepthwiseGrad | None:
    """``node``'s shapes when it is a 2-D depthwise ConvGrad (weight (C, 1, kh, kw), group C, C a multiple of
    4, undilated, explicit pads) with static C, H, W; else None."""
    if node.op_type != "ConvGrad" or node.domain != _MS:
        return None
    a = g.attributes(node)
    weight, x = shapes.get(node.input[2]), shapes.get(node.input[1])
    group = int(a.get("group", 1))
    if (weight is None or x is None or len(weight) != 4 or len(x) != 4 or None in weight or None in x[1:]
            or weight[1] != 1 or weight[0] != group or x[1] != group or group % 4
            or any(d != 1 for d in a.get("dilations", [1, 1]))
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
        return None
    kernel, size = [int(weight[2]), int(weight[3])], [int(x[2]), int(x[3])]
    pads, strides = list(a.get("pads", [0, 0, 0, 0])), list(a.get("strides", [1, 1]))
    out = [(size[d] + pads[d] + pads[d + 2] - kernel[d]) // strides[d] + 1 for d in (0, 1)]
    return DepthwiseGrad(group, kernel, size, pads, strides, out) if min(out) >= 1 else None


def _wanted(node: onnx.NodeProto, index: int) -> bool:
    return len(node.output) > index and node.output[index] != ""


def _weight_gradient_pads(grad: DepthwiseGrad) -> list[int] | None:
    """Pads of the blocked dW convolution: the forward top and left ones, the bottom and right ones cut to
    what dY's dilated extent reaches (None where that would be negative)."""
    ends = [grad.kernel[d] + grad.strides[d] * (grad.out[d] - 1) - grad.size[d] - grad.pads[d] for d in (0, 1)]
    return None if min(ends) < 0 else [grad.pads[0], grad.pads[1], *ends]


def _weight_gradient_nodes(b: GraphBuilder, node: onnx.NodeProto, grad: DepthwiseGrad, pads: list[int], chunk: int,
                           block: int) -> list[onnx.NodeProto]:
    """``node``'s dW by the blocked kernels when the chunk holds ``chunk`` images (an If on the batch size,
    which the graph leaves free), else by the engine's ConvGrad.

    dW[c, 0, i, j] = sum over n, h, w of X_padded[n, c, s h + i, s w + j] dY[n, c, h, w]: the depthwise
    convolution of X seen as one image of ``chunk`` x C channels, with dY as its (Ho, Wo) kernels dilated
    by the strides s, summed over the images."""
    d_y, x, _ = node.input
    conv = Blocked(chunk * grad.channels, 1, chunk * grad.channels, grad.out)
    images, blocked_images, kernels = b.fresh("nchwc_dw_images"), b.fresh("nchwc_dw_blocked_images"), b.fresh("nchwc_dw_kernels")
    reordered, reorder_nodes = _reordered_weight(b, kernels, conv, block)
    blocked_taps, taps, per_image, summed, blocked_dw = (b.fresh(h) for h in ("nchwc_dw_blocked_taps", "nchwc_dw_taps",
                                                                             "nchwc_dw_per_image", "nchwc_dw_sum", "nchwc_dw"))
    blocked_branch = [
        helper.make_node("Reshape", [x, b.const([1, conv.channels, *grad.size], "nchwc_dw_images_shape")], [images],
                         name=b.fresh("nchwc_dw_images_node")),
        helper.make_node("ReorderInput", [images], [blocked_images], name=b.fresh("nchwc_dw_in_node"), domain=DOMAIN),
        helper.make_node("Reshape", [d_y, b.const([conv.channels, 1, *conv.kernel], "nchwc_dw_kernels_shape")], [kernels],
                         name=b.fresh("nchwc_dw_kernels_node")),
        *reorder_nodes,
        helper.make_node("Conv", [blocked_images, reordered], [blocked_taps], name=b.fresh("nchwc_dw_conv_node"),
                         domain=DOMAIN, kernel_shape=conv.kernel, pads=pads, dilations=grad.strides,
                         group=_padded(conv.channels, block)),
        helper.make_node("ReorderOutput", [blocked_taps], [taps], name=b.fresh("nchwc_dw_out_node"), domain=DOMAIN,
                         channels=conv.channels),
        helper.make_node("Reshape", [taps, b.const([chunk, grad.channels, -1], "nchwc_dw_per_image_shape")], [per_image],
                         name=b.fresh("nchwc_dw_per_image_node")),
        helper.make_node("ReduceSum", [per_image, b.const([0], "nchwc_dw_axes")], [summed], name=b.fresh("nchwc_dw_sum_node"),
                         keepdims=0),
        helper.make_node("Reshape", [summed, b.const([grad.channels, 1, *grad.kernel], "nchwc_dw_shape")], [blocked_dw],
                         name=b.fresh("nchwc_dw_node")),
    ]
    engine_dw = b.fresh("engine_dw")
    engine_branch = helper.make_node("ConvGrad", node.input, ["", engine_dw], name=b.fresh("engine_dw_node"), domain=_MS)
    engine_branch.attribute.extend(node.attribute)
    shape, count, same = b.fresh("nchwc_dw_x_shape"), b.fresh("nchwc_dw_count"), b.fresh("nchwc_dw_chunk")
    branches = {"then_branch": helper.make_graph(blocked_branch, "blocked_weight_gradient", [],
                                                 [helper.make_tensor_value_info(blocked_dw, TensorProto.FLOAT, None)]),
                "else_branch": helper.make_graph([engine_branch], "engine_weight_gradient", [],
                                                 [helper.make_tensor_value_info(engine_dw, TensorProto.FLOAT, None)])}
    return [helper.make_node("Shape", [x], [shape], name=b.fresh("nchwc_dw_x_shape_node")),
            helper.make_node("Gather", [shape, b.const(np.array(0, np.int64), "nchwc_dw_batch_axis")], [count],
                             name=b.fresh("nchwc_dw_count_node")),
            helper.make_node("Equal", [count, b.const(np.array(chunk, np.int64), "nchwc_dw_chunk_size")], [same],
                             name=b.fresh("nchwc_dw_chunk_node")),
            helper.make_node("If", [same], [node.output[1]], name=b.fresh("nchwc_dw_if_node"), **branches)]


def _strided_input_pads(grad: DepthwiseGrad) -> list[int] | None:
    """Pads of the stride-1 convolution giving dX from the zero-interleaved dY (Ho s rows): k - 1 - p before,
    H + p - Ho s after; None unless the convolution is strided and both are non-negative."""
    if all(s == 1 for s in grad.strides):
        return None
    before = [grad.kernel[d] - 1 - grad.pads[d] for d in (0, 1)]
    after = [grad.size[d] + grad.pads[d] - grad.out[d] * grad.strides[d] for d in (0, 1)]
    return None if min(before + after) < 0 else [*before, *after]


def _strided_input_nodes(b: GraphBuilder, node: onnx.NodeProto, grad: DepthwiseGrad, pads: list[int],
                         block: int) -> list[onnx.NodeProto] | None:
    """dX of strided depthwise ConvGrad ``node`` as the blocked stride-1 convolution of dY with zeros
    between its values (nearest upsampling times a 0/1 mask) by the kernel flipped in space."""
    found = fast_gradients.transposed_flipped(b, node.input[2], grad.kernel, grad.channels, [grad.channels, 1, *grad.kernel])
    if found is None:
        return None
    flipped, nodes = found
    spread = [grad.out[d] * grad.strides[d] for d in (0, 1)]
    mask = np.zeros((1, 1, *spread), np.float32)
    mask[:, :, ::grad.strides[0], ::grad.strides[1]] = 1.0
    upsampled, interleaved = b.fresh("nchwc_dx_upsampled"), b.fresh("nchwc_dx_interleaved")
    nodes += [
        helper.make_node("Resize", [node.input[0], "", b.const(np.array([1, 1, *grad.strides], np.float32), "nchwc_dx_scales")],
                         [upsampled], name=b.fresh("nchwc_dx_upsample_node"), mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Mul", [upsampled, b.const(mask, "nchwc_dx_mask")], [interleaved], name=b.fresh("nchwc_dx_mask_node")),
    ]
    conv = helper.make_node("Conv", [interleaved, flipped], [node.output[0]], kernel_shape=grad.kernel, pads=pads,
                            group=grad.channels)
    return nodes + _blocked_conv(b, conv, Blocked(grad.channels, 1, grad.channels, grad.kernel), block)


def _conv_grad(b: GraphBuilder, node: onnx.NodeProto, shapes: dict[str, list[int | None]], chunk: int | None,
               block: int, counts: dict[str, int]) -> list[onnx.NodeProto] | None:
    """Depthwise ConvGrad ``node`` with its dW (at ``chunk`` images) and strided dX by the blocked kernels,
    what is left (dB, other dX) by the engine's ConvGrad; None where nothing is blocked. Counts each in
    ``counts`` ('nchwc.dX', 'nchwc.dW')."""
    grad = depthwise_grad(node, shapes)
    if grad is None:
        return None
    nodes: list[onnx.NodeProto] = []
    left = list(node.output) + [""] * (3 - len(node.output))
    dx_pads = _strided_input_pads(grad) if _wanted(node, 0) else None
    if dx_pads is not None and (dx := _strided_input_nodes(b, node, grad, dx_pads, block)) is not None:
        nodes += dx
        left[0] = ""
        counts["nchwc.dX"] += 1
    dw_pads = _weight_gradient_pads(grad) if chunk and _wanted(node, 1) and (chunk * grad.channels) % 4 == 0 else None
    if dw_pads is not None and chunk is not None:
        nodes += _weight_gradient_nodes(b, node, grad, dw_pads, chunk, block)
        left[1] = ""
        counts["nchwc.dW"] += 1
    if not nodes:
        return None
    if any(left):
        rest = helper.make_node("ConvGrad", node.input, left, name=b.fresh("nchwc_engine_grad_node"), domain=_MS)
        rest.attribute.extend(node.attribute)
        nodes.insert(0, rest)
    return nodes


def rewrite(training: onnx.ModelProto, shapes: dict[str, list[int | None]], chunk: int | None = None) -> dict[str, int]:
    """Every depthwise and grouped Conv of ``training`` the blocked kernels take, in that layout, and the
    strided input gradients and (for ``chunk``, the images per engine run the graph will mostly see) the
    weight gradients of depthwise ConvGrads (in place); returns how many of each.

    ``shapes`` holds static shapes of forward tensors; the graph's inputs and initializers are read off it."""
    known = _static_shapes(training.graph, {**g.declared_shapes(training), **shapes})
    block = block_size()
    b = SharedConstants(training.graph, prefix="nchwc/")
    nodes: list[onnx.NodeProto] = []
    counts = {"nchwc.Conv": 0, "nchwc.dX": 0, "nchwc.dW": 0}
    for node in training.graph.node:
        if (conv := blocked(node, known, block, chunk)) is not None:
            nodes += _blocked_conv(b, node, conv, block)
            counts["nchwc.Conv"] += 1
        elif (grads := _conv_grad(b, node, known, chunk, block, counts)) is not None:
            nodes += grads
        else:
            nodes.append(node)
    del training.graph.node[:]
    training.graph.node.extend(nodes)
    if any(counts.values()) and not any(o.domain == DOMAIN for o in training.opset_import):
        training.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return counts
