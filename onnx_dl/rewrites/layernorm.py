"""LayerNormalization with its optional outputs Mean and InvStdDev declared.

The engine (ONNX Runtime training 1.19) builds the gradient of LayerNormalization from those two
outputs and fails when the node declares only Y; declared, the gradient matches PyTorch's
layer_norm. The forward pass is the same operator, so Y is unchanged bit for bit.
"""

from __future__ import annotations

import onnx

from .rule import Context, Rule


def check(node: onnx.NodeProto, opset: int) -> str | None:
    """LayerNormalization is an ONNX operator from opset 17 on (earlier exports decompose it)."""
    return None if opset >= 17 else f"LayerNormalization needs opset >= 17, the model has {opset}"


def rewrite(node: onnx.NodeProto, ctx: Context) -> None:
    """Copy the node with outputs (Y, Mean, InvStdDev), keeping declared ones."""
    outputs = list(node.output) + [""] * (3 - len(node.output))
    for position, hint in ((1, "layer_norm_mean"), (2, "layer_norm_inv_std_dev")):
        if not outputs[position]:
            outputs[position] = ctx.builder.fresh(hint)
    copy = ctx.model.graph.node.add()
    copy.CopyFrom(node)
    del copy.output[:]
    copy.output.extend(outputs)


LAYER_NORMALIZATION = Rule("LayerNormalization", check, rewrite, "the same node with its Mean and InvStdDev outputs")
