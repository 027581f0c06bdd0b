"""Gelu (ONNX opset 20): kept where the engine's gradient is right, written out where it is not.

ONNX Runtime training 1.19 differentiates ``Gelu`` with the gradient of the exact form
``x * Phi(x)`` whatever its ``approximate`` attribute says (measured: with ``approximate='tanh'``
the gradient differs from PyTorch's by up to 4 %, silently). So:

    approximate='none': the node itself (its engine gradient equals torch's gelu backward);
    approximate='tanh': 0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))  from Mul, Add, Tanh.
"""

from __future__ import annotations

import math

import onnx

from .rule import Context, Rule, attribute


def check(node: onnx.NodeProto, opset: int) -> str | None:
    """Both approximations are handled."""
    approximate = attribute(node, "approximate", "none")
    return None if approximate in ("none", "tanh") else f"approximate {approximate!r} is not a Gelu approximation"


def rewrite(node: onnx.NodeProto, ctx: Context) -> None:
    """The node unchanged ('none') or the tanh formula ('tanh')."""
    if attribute(node, "approximate", "none") == "none":
        ctx.model.graph.node.add().CopyFrom(node)
        return
    x = node.input[0]
    cube = ctx.op("Mul", [ctx.op("Mul", [x, x], "gelu_square"), x], "gelu_cube")
    inner = ctx.op("Add", [x, ctx.op("Mul", [cube, ctx.const(0.044715, "gelu_c")], "gelu_cubic_term")], "gelu_inner")
    scaled = ctx.op("Mul", [inner, ctx.const(math.sqrt(2.0 / math.pi), "gelu_sqrt_2_pi")], "gelu_scaled")
    gate = ctx.op("Add", [ctx.op("Tanh", [scaled], "gelu_tanh"), ctx.const(1.0, "one")], "gelu_gate")
    half = ctx.op("Mul", [x, ctx.const(0.5, "half")], "gelu_half")
    ctx.output("Mul", [half, gate], node.output[0])


GELU = Rule("Gelu", check, rewrite, "kept for approximate='none'; 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))) "
                                    "for 'tanh' (the engine's gradient ignores approximate)")
