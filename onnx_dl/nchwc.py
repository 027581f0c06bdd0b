"""Depthwise and grouped convolutions of a training graph in the engine's blocked channel layout (NCHWc).

ONNX Runtime's CPU Conv runs a depthwise convolution (one input channel per group) or a grouped one
in NCHW as one small GEMM per group and image. Its blocked kernels (domain ``com.microsoft.nchwc``, channels in
blocks of B = 8 or 16 as the CPU's vector width decides) compute them directly, but the engine's
own layout transformer hands them only constant weights, which a trained weight never is. So every
depthwise ``Conv``, and every grouped one whose groups hold whole blocks, of the training graph (the
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
1.16 -> 0.55 ms. Dense convolutions were measured too and are left alone (slower in NCHWc once their larger weights
are reordered each step: 1 x 1 convolutions 1.4-3x slower).

Only for the CPU: the blocked kernels have no CUDA implementation.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import graph as g
from .engine.runtime import ort
from .onnx_builder import GraphBuilder, SharedConstants

DOMAIN = "com.microsoft.nchwc"


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


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _static_shapes(graph: onnx.GraphProto, shapes: dict[str, list[int | None]]) -> dict[str, list[int | None]]:
    """``shapes`` plus the outputs of Reshapes to a constant, fully given shape (the turned kernels of
    the input-gradient convolutions)."""
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    known = dict(shapes)
    for node in graph.node:
        if node.op_type == "Reshape" and node.domain == "" and node.input[1] in constants:
            target = constants[node.input[1]].reshape(-1).tolist()
            if all(d > 0 for d in target):
                known[node.output[0]] = target
    return known


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


def blocked(node: onnx.NodeProto, shapes: dict[str, list[int | None]], block: int) -> Blocked | None:
    """How ``node`` runs in blocks, when it is a 2-D Conv with explicit pads and a known weight shape that is

    - depthwise: weight (C, 1, kh, kw), group C a multiple of 4 (ReorderInput's condition), or
    - grouped with whole blocks: group G > 1, input and output channels per group multiples of ``block``;

    else None (dense convolutions stay: measured slower in blocks, see the module's docstring)."""
    if node.op_type != "Conv" or node.domain != "":
        return None
    a = _attributes(node)
    weight = shapes.get(node.input[1])
    group = int(a.get("group", 1))
    if (weight is None or len(weight) != 4 or None in weight or group < 2 or weight[0] % group
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
        return None
    channels, per_group, kernel = int(weight[0]), int(weight[1]), [int(weight[2]), int(weight[3])]
    depthwise = group == channels and per_group == 1 and group % 4 == 0
    whole_blocks = (channels // group) % block == 0 and per_group % block == 0
    return Blocked(channels, per_group, group, kernel) if depthwise or whole_blocks else None


def _reordered_weight(b: GraphBuilder, weight: str, conv: Blocked, block: int) -> tuple[str, list[onnx.NodeProto]]:
    """The weight in the blocked kernels' layout, and the nodes computing it at every step.

    Depthwise: (C, 1, kh, kw) zero-padded to Cp channels -> (Cp / B, kh, kw, B). Grouped:
    (C, I, kh, kw) -> (C / B, I / B, kh, kw, B_in, B_out)."""
    nodes = []
    if conv.depthwise:
        padded = -(-conv.channels // block) * block
        if padded != conv.channels:
            pad, padded_weight = b.const([0, 0, 0, 0, padded - conv.channels, 0, 0, 0], "nchwc_pads"), b.fresh("nchwc_weight_padded")
            nodes.append(helper.make_node("Pad", [weight, pad], [padded_weight], name=b.fresh("nchwc_weight_pad_node")))
            weight = padded_weight
        split, perm, target = [padded // block, block, conv.kernel[0] * conv.kernel[1]], [0, 2, 1], [padded, 1, *conv.kernel]
    else:
        split = [conv.channels // block, block, conv.inputs // block, block, *conv.kernel]
        perm, target = [0, 2, 4, 5, 3, 1], [conv.channels, conv.inputs, *conv.kernel]
    blocks, turned, reordered = b.fresh("nchwc_weight_blocks"), b.fresh("nchwc_weight_turned"), b.fresh("nchwc_weight")
    nodes += [
        helper.make_node("Reshape", [weight, b.const(split, "nchwc_blocks_shape")], [blocks], name=b.fresh("nchwc_blocks_node")),
        helper.make_node("Transpose", [blocks], [turned], name=b.fresh("nchwc_turn_node"), perm=perm),
        helper.make_node("Reshape", [turned, b.const(target, "nchwc_weight_shape")], [reordered],
                         name=b.fresh("nchwc_weight_node")),
    ]
    return reordered, nodes


def _blocked_conv(b: GraphBuilder, node: onnx.NodeProto, conv: Blocked, block: int) -> list[onnx.NodeProto]:
    """``node`` as ReorderInput -> nchwc.Conv -> ReorderOutput, its weight (and bias) reordered in the graph."""
    a = _attributes(node)
    padded = -(-conv.channels // block) * block  # only a depthwise convolution's channels may be off the block
    blocked_x = b.fresh("nchwc_x")
    weight, nodes = _reordered_weight(b, node.input[1], conv, block)
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


def rewrite(training: onnx.ModelProto, shapes: dict[str, list[int | None]]) -> int:
    """Every depthwise and grouped Conv of ``training`` the blocked kernels take, in that layout (in
    place); returns how many.

    ``shapes`` holds static shapes of forward tensors; the graph's inputs and initializers are read off it."""
    known = _static_shapes(training.graph, {**g.declared_shapes(training), **shapes})
    block = block_size()
    found = [(node, blocked(node, known, block)) for node in training.graph.node]
    if not any(conv for _, conv in found):
        return 0
    b = SharedConstants(training.graph, prefix="nchwc/")
    nodes: list[onnx.NodeProto] = []
    for node, conv in found:
        nodes += [node] if conv is None else _blocked_conv(b, node, conv, block)
    del training.graph.node[:]
    training.graph.node.extend(nodes)
    if not any(o.domain == DOMAIN for o in training.opset_import):
        training.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return sum(1 for _, conv in found if conv)
