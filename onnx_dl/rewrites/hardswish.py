"""HardSigmoid and HardSwish as Mul, Add and Clip, whose gradients the engine has.

    HardSigmoid(x) = max(0, min(1, alpha * x + beta)) = Clip(x * alpha + beta, 0, 1)
    HardSwish(x)   = x * HardSigmoid(x) with alpha = 1/6, beta = 1/2

The forward pass rounds as the operators do (one product, one sum, then the clamp). Gradients
(almost everywhere): d HardSigmoid/dx = alpha inside (0, 1), else 0; d HardSwish/dx =
x/3 + 1/2 for -3 < x < 3, 0 below, 1 above (torch's hardswish backward).
"""

from __future__ import annotations

import onnx

from .rule import Context, Rule, attribute

HARD_SWISH_ALPHA, HARD_SWISH_BETA = 1.0 / 6.0, 0.5


def _hard_sigmoid(x: str, alpha: float, beta: float, ctx: Context, name: str | None = None) -> str:
    scaled = ctx.op("Mul", [x, ctx.const(alpha, "alpha")], "hard_sigmoid_scaled")
    shifted = ctx.op("Add", [scaled, ctx.const(beta, "beta")], "hard_sigmoid_shifted")
    bounds = [shifted, ctx.const(0.0, "zero"), ctx.const(1.0, "one")]
    if name is not None:
        ctx.output("Clip", bounds, name)
        return name
    return ctx.op("Clip", bounds, "hard_sigmoid")


def _no_check(node: onnx.NodeProto, opset: int) -> str | None:
    return None


def rewrite_hard_sigmoid(node: onnx.NodeProto, ctx: Context) -> None:
    """HardSigmoid(x; alpha, beta) -> Clip(Add(Mul(x, alpha), beta), 0, 1)."""
    _hard_sigmoid(node.input[0], attribute(node, "alpha", 0.2), attribute(node, "beta", 0.5), ctx, node.output[0])


def rewrite_hard_swish(node: onnx.NodeProto, ctx: Context) -> None:
    """HardSwish(x) -> Mul(x, Clip(Add(Mul(x, 1/6), 1/2), 0, 1))."""
    gate = _hard_sigmoid(node.input[0], HARD_SWISH_ALPHA, HARD_SWISH_BETA, ctx)
    ctx.output("Mul", [node.input[0], gate], node.output[0])


HARD_SIGMOID = Rule("HardSigmoid", _no_check, rewrite_hard_sigmoid, "Clip(x * alpha + beta, 0, 1)")
HARD_SWISH = Rule("HardSwish", _no_check, rewrite_hard_swish, "x * Clip(x / 6 + 1/2, 0, 1)")
