"""Canonical form of exported networks: every parameter in its own initializer.

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) deduplicates initializers whose
values are equal: one tensor stays an initializer, the others become ``Identity`` nodes reading it
(also with ``do_constant_folding=False``). A freshly initialised batch norm has scale 1, bias 0,
running mean 0 and running variance 1, so its running statistics end up as ``Identity(scale)`` and
``Identity(bias)``, shared with every other fresh batch norm of the same width. Read as is, no batch
norm has running statistics in initializers, and weights reached through ``Identity`` are not in a
trainable position: they would silently stay fixed.

Each rule below is one function with its algebra in the docstring; ``canonical_form`` applies
them in order. The result has the values and outputs of the input for every image.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from . import graph as g

# BatchNormalization inputs that hold running statistics (mean, variance).
STAT_INPUTS = (3, 4)


def canonical_form(model: onnx.ModelProto) -> None:
    """Apply every rule of this module to ``model``, in place."""
    own_identity_initializers(model)
    split_running_statistics(model)


def own_identity_initializers(model: onnx.ModelProto) -> None:
    """``y = Identity(W)`` with ``W`` an initializer becomes an initializer ``y`` holding a copy of ``W``.

    Algebra: ``Identity(W) = W``, so every consumer of ``y`` reads the same value before and after.
    What changes is that ``y`` is a parameter of its own: the exporter merged equal tensors that
    are distinct parameters in the source model (PyTorch counts them separately), and each now
    trains (or, as a running statistic, is updated) on its own. The copy keeps the Identity's
    output name, which the TorchScript exporter sets to the parameter's name (``4.running_var``).
    Chains ``Identity(Identity(W))`` resolve in one pass (nodes are in topological order). An
    Identity whose output is a graph output stays (an initializer cannot be one).
    """
    inits = g.initializers(model)
    outputs = {o.name for o in model.graph.output}
    overridable = {i.name for i in model.graph.input}
    kept = []
    for node in model.graph.node:
        source = node.input[0] if node.op_type == "Identity" and node.input else None
        if source in inits and source not in overridable and node.output[0] not in outputs:
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[source]), node.output[0])
            model.graph.initializer.append(copy)
            inits[copy.name] = copy
        else:
            kept.append(node)
    if len(kept) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(kept)


def split_running_statistics(model: onnx.ModelProto) -> None:
    """A running statistic read by any other node or position gets its own copy per BatchNormalization.

    Algebra: replacing the input of one consumer by a copy of the same tensor changes no value.
    A batch norm's running mean and variance are state the training step overwrites (running =
    momentum * running + (1 - momentum) * batch statistic); a tensor that is also another batch
    norm's statistic, or a weight somewhere, must not be overwritten for that other use, so each
    statistic use gets a fresh initializer named after its node. Weights shared directly by
    several nodes are left shared: that is weight tying in the source model (one parameter in
    PyTorch, gradients summed), and the deduplicated copies the exporter writes go through
    Identity, which :func:`own_identity_initializers` has already split.
    """
    inits = g.initializers(model)
    uses = g.consumers(model)
    taken = set(inits) | {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        for pos in STAT_INPUTS:
            name = node.input[pos] if pos < len(node.input) else ""
            if name not in inits or len(uses.get(name, [])) < 2:
                continue
            fresh = _fresh_name(f"{node.name or node.output[0]}/{('running_mean', 'running_var')[pos - 3]}", taken)
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]), fresh))
            uses[name] = [(n, p) for n, p in uses[name] if not (n is node and p == pos)]
            node.input[pos] = fresh


def _fresh_name(hint: str, taken: set[str]) -> str:
    """``hint``, or ``hint_<k>`` for the first k that is free; the name is added to ``taken``."""
    name, count = hint, 0
    while name in taken:
        count += 1
        name = f"{hint}_{count}"
    taken.add(name)
    return name
