"""Frozen layers: which weights stay fixed, and the training form of a network that keeps them fixed.

Two model parameters choose them: ``freeze_backbone`` (every weight except the layer that
produces the scores; for a detector: except its feature pyramid and heads) and ``frozen_layers`` (initializer names, or name prefixes ending in
``*``). A frozen weight becomes a constant of the training graph, so the engine computes no
gradient for it, the solver never touches it and the weight prior leaves it out: it stays bit
for bit as it was. A batch-norm layer whose scale and bias are both frozen runs with its running
statistics (as in inference) and keeps them fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from . import graph as g
from .errors import DLParamError


def frozen_weights(network: onnx.ModelProto, params: dict[str, Any],
                   head_weights: Callable[[onnx.ModelProto], set[str]]) -> set[str]:
    """The trained weights of ``network`` that the parameters freeze; ``head_weights`` (the model type's)
    names what ``freeze_backbone`` keeps trainable."""
    weights = g.weight_names(network)
    frozen: set[str] = set()
    if params.get("freeze_backbone"):
        head = head_weights(network)
        frozen.update(w for w in weights if w not in head)
    for pattern in params.get("frozen_layers") or []:
        matches = [w for w in weights if w == pattern or (pattern.endswith("*") and w.startswith(pattern[:-1]))]
        if not matches:
            raise DLParamError(f"parameter 'frozen_layers': {pattern!r} matches no trained weight; weights are "
                               f"initializer names such as {weights[:3]}")
        frozen.update(matches)
    return frozen


def training_form(network: onnx.ModelProto, frozen: set[str]) -> onnx.ModelProto:
    """A copy of ``network`` whose frozen weights are constants and whose frozen batch norms are a
    fixed affine map ``x * s + t`` with ``s = scale / sqrt(var + eps)``, ``t = bias - mean * s``."""
    if not frozen:
        return network
    model = onnx.ModelProto()
    model.CopyFrom(network)
    inits = g.initializers(model)
    ranks: dict[str, int] = {}
    for bn in g.batchnorm_stats(model):
        node = next(n for n in model.graph.node if (n.name or n.output[0]) == bn.node)
        if node.input[1] in frozen and node.input[2] in frozen:
            ranks = ranks or {name: len(shape) for name, shape in g.tensor_shapes(model).items()}
            _affine_batchnorm(model, node, bn, inits, ranks.get(node.input[0], 4))
            frozen = frozen | {node.input[3], node.input[4]}
    constants = [onnx.helper.make_node("Constant", [], [name], name=f"frozen/{name}", value=inits[name])
                 for name in sorted(frozen) if name in inits and _still_used(model, name)]
    kept = [i for i in model.graph.initializer if i.name not in frozen]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = constants + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _still_used(model: onnx.ModelProto, name: str) -> bool:
    return any(name in node.input for node in model.graph.node)


def _affine_batchnorm(model: onnx.ModelProto, node: onnx.NodeProto, bn: g.BatchNormStats,
                      inits: dict[str, onnx.TensorProto], rank: int) -> None:
    """Turn ``node`` (input of ``rank``) into Mul + Add by constants of shape (C, 1, ...) in place.

    Constants are Constant nodes, not initializers, so they are never taken for trained weights.
    """
    scale, bias, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in node.input[1:5])
    s = scale / np.sqrt(var + bn.epsilon)
    t = bias - mean * s
    shape = [len(s)] + [1] * max(rank - 2, 0)
    prefix = f"frozen_bn/{bn.node}"
    nodes = [
        onnx.helper.make_node("Constant", [], [f"{prefix}/scale"], name=f"{prefix}/scale",
                              value=numpy_helper.from_array(s.reshape(shape).astype(np.float32))),
        onnx.helper.make_node("Constant", [], [f"{prefix}/shift"], name=f"{prefix}/shift",
                              value=numpy_helper.from_array(t.reshape(shape).astype(np.float32))),
        onnx.helper.make_node("Mul", [node.input[0], f"{prefix}/scale"], [f"{prefix}/scaled"], name=f"{prefix}/mul"),
        onnx.helper.make_node("Add", [f"{prefix}/scaled", f"{prefix}/shift"], [node.output[0]], name=f"{prefix}/add"),
    ]
    index = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    for offset, new in enumerate(nodes):
        model.graph.node.insert(index + offset, new)
