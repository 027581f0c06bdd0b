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

import ast

import onnx
from onnx import numpy_helper

from . import graph as g

# BatchNormalization inputs that hold running statistics (mean, variance).
STAT_INPUTS = (3, 4)


def canonical_form(model: onnx.ModelProto) -> None:
    """Apply every rule of this module to ``model``, in place."""
    own_identity_initializers(model)
    own_merged_parameters(model)
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


# torch's dynamo exporter writes, on every node, the module path it ran in (metadata
# 'pkg.torch.onnx.name_scopes': "['', 'features', 'features.1', 'features.1.1', 'mul_45']").
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def _module_path(node: onnx.NodeProto) -> str | None:
    """The PyTorch module a dynamo-exported node ran in ('features.1.1'), or None without that record."""
    for prop in node.metadata_props:
        if prop.key == _SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-2] if isinstance(scopes, list) and len(scopes) >= 2 else None
    return None


def own_merged_parameters(model: onnx.ModelProto) -> None:
    """An initializer ``owner.leaf`` read by nodes of other modules ``M`` gets a copy ``M.leaf`` for them.

    The dynamo exporter merges parameters of equal value (for instance every ``layer_scale`` of a
    ConvNeXt stage, all 1e-6 when fresh) into one initializer that several modules read directly,
    without ``Identity``. Its nodes record the module they ran in, so a reader outside the module
    that owns the parameter (the initializer's name less its last part) read a merged copy: it gets
    its own initializer, named as PyTorch names that parameter. Algebra: the copy holds the same
    values, so every output is unchanged; the copies train separately, as PyTorch's parameters do.
    Readers inside the owner (a module called twice, a tied weight) keep sharing it. A parameter that
    PyTorch itself ties across two modules cannot be told from a merged one and is split.
    """
    inits = g.initializers(model)
    taken = set(inits) | {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    readers: dict[str, dict[str, list[tuple[onnx.NodeProto, int]]]] = {}
    for node in model.graph.node:
        path = _module_path(node)
        for pos, name in enumerate(node.input):
            if name in inits and path is not None:
                readers.setdefault(name, {}).setdefault(path, []).append((node, pos))
    for name, by_path in readers.items():
        owner = name.rpartition(".")[0]
        if len(by_path) < 2 or not owner:
            continue
        leaf = name.rpartition(".")[2]
        foreign = [p for p in by_path if p != owner and not p.startswith(owner + ".")]
        if len(foreign) == len(by_path):  # the owner reads it nowhere: the first reader keeps the original
            foreign = foreign[1:]
        for path in foreign:
            copy_name = _fresh_name(f"{path}.{leaf}", taken)
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]), copy_name))
            for node, pos in by_path[path]:
                node.input[pos] = copy_name


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
