"""Differentiable rewrites of operators the engine cannot differentiate, for the training graph only.

ONNX Runtime training 1.19 (CPU) has no gradient for HardSwish, HardSigmoid, Resize or
ConvTranspose, builds LayerNormalization's only when the node declares its optional outputs, and
gives Gelu(approximate='tanh') the gradient of the exact Gelu.
Each rule here (one module per operator, the algebra in its docstring) replaces such a node by
nodes that compute the same output and have gradients. The rewrite applies to the training graph
alone: the model handle, ``apply_dl_model`` and the written file keep the original operators.

- :func:`refusal` says why no rule applies to a node (None: one does); ``foreign.check_trainable``
  asks it when a network is read.
- :func:`for_training` rewrites the given nodes of a forward graph whose image size is fixed.
"""

from __future__ import annotations

import onnx

from ..errors import DLModelFileError
from ..onnx_builder import default_opset
from .conv_transpose import CONV_TRANSPOSE
from .gelu import GELU
from .hardswish import HARD_SIGMOID, HARD_SWISH
from .layernorm import LAYER_NORMALIZATION
from .resize import RESIZE
from .rule import Context, RewriteRefused, Rule

RULES: dict[tuple[str, str], Rule] = {
    (rule.domain, rule.op_type): rule
    for rule in (HARD_SWISH, HARD_SIGMOID, LAYER_NORMALIZATION, GELU, RESIZE, CONV_TRANSPOSE)
}

__all__ = ["RULES", "Rule", "check_node", "for_training", "refusal", "rule_for"]


def rule_for(node: onnx.NodeProto) -> Rule | None:
    """The rule for the node's operator, if there is one."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    return RULES.get((domain, node.op_type))


def refusal(node: onnx.NodeProto, model: onnx.ModelProto) -> str | None:
    """Why no rewrite trains ``node`` of ``model`` (None: a rule applies, as far as its attributes tell)."""
    return check_node(node, default_opset(model))


def check_node(node: onnx.NodeProto, opset: int) -> str | None:
    """Why no rewrite trains ``node`` at ``opset`` (None: a rule applies, as far as its attributes tell)."""
    rule = rule_for(node)
    if rule is None:
        return f"no training rewrite exists for {node.op_type}"
    return rule.check(node, opset)


def for_training(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` (image C, H, W fixed) whose nodes with a rule among ``nodes`` (given by
    their first output) are rewritten; ``model`` itself is unchanged.

    Raises DLModelFileError naming the node when its rule does not apply at this image size.
    """
    targets = [n for n in model.graph.node if n.output and n.output[0] in nodes and rule_for(n) is not None]
    if not targets:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    targets = [n for n in result.graph.node if n.output and n.output[0] in nodes and rule_for(n) is not None]
    ctx = Context(result, targets)
    replaced: dict[str, list[onnx.NodeProto]] = {}
    for node in targets:
        rule = rule_for(node)
        assert rule is not None
        start = len(result.graph.node)
        why = rule.check(node, ctx.opset)
        try:
            if why is not None:
                raise RewriteRefused(why)
            rule.rewrite(node, ctx)
        except RewriteRefused as exc:
            raise DLModelFileError(
                f"node {node.name or node.output[0]!r} ({node.op_type}) needs a gradient for training, which the "
                f"engine does not have, and its training rewrite does not apply: {exc}") from exc
        replaced[node.output[0]] = [onnx.NodeProto.FromString(n.SerializeToString()) for n in result.graph.node[start:]]
        del result.graph.node[start:]
    spliced: list[onnx.NodeProto] = []
    for node in result.graph.node:
        spliced.extend(replaced.get(node.output[0], [node]) if node.output else [node])
    del result.graph.node[:]
    result.graph.node.extend(spliced)
    del result.graph.value_info[:]
    return result
