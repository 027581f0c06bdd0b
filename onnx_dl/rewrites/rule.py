"""What a training rewrite is: a rule (operator, check, rewrite) and the context a rewrite works in.

A rule replaces one node the engine cannot differentiate by nodes it can, computing the same
output tensor. ``check`` looks at the node alone (attributes, operator version) and says why the
rule does not apply, or None; it runs when a network is read, so an unsupported variant is refused
there. ``rewrite`` may also need the sizes and constant values of the node's inputs at the training
image size; those come from :class:`Context`, and a rewrite raises :class:`RewriteRefused` when
they do not fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import batch_axis
from .. import graph as g
from ..onnx_builder import GraphBuilder, default_opset

PREFIX = "train_rewrite/"  # every tensor a rewrite adds starts with it


class RewriteRefused(Exception):
    """A rewrite cannot produce the node's output exactly (the message says why)."""


@dataclass(frozen=True)
class Rule:
    """A differentiable replacement of one operator for the training graph."""

    op_type: str
    check: Callable[[onnx.NodeProto, int], str | None]  # (node, opset) -> why it does not apply, or None
    rewrite: Callable[[onnx.NodeProto, Context], None]  # appends nodes computing the node's outputs
    summary: str  # how, in a few words (README table)
    domain: str = ""
    sized: bool = False  # the rewrite reads sizes or values at the training image size (Context.shape/value)


def attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """The value of attribute ``name`` of ``node`` (strings decoded), or ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


class Context:
    """The model being rewritten, a builder for new nodes, and the sizes and constant values of
    tensors at the training image size (from one forward pass, run on demand, at the batch size the
    network is fixed to, else 2)."""

    PROBE_BATCH = 2  # for a network whose batch axis is free

    def __init__(self, model: onnx.ModelProto, targets: list[onnx.NodeProto]) -> None:
        self.model = model
        self.opset = default_opset(model)
        self.builder = GraphBuilder(model.graph, prefix=PREFIX)
        self._targets = targets
        self.probe_batch = batch_axis.fixed_batch(model) or self.PROBE_BATCH
        self._probed: dict[str, np.ndarray] | None = None
        self._constants = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = attribute(node, "value", None)
                if value is not None:
                    self._constants[node.output[0]] = value

    def const(self, value: np.ndarray | float | int, hint: str) -> str:
        """A Constant node (not an initializer: the library takes float initializers in weight
        positions for trained weights) holding ``value``; floats become float32, ints int64."""
        array = np.asarray(value)
        array = array.astype(np.float32) if array.dtype.kind == "f" else array.astype(np.int64)
        return self.builder.op("Constant", [], hint, value=numpy_helper.from_array(array))

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        """Append one node; return its output."""
        return self.builder.op(op_type, inputs, hint, **attrs)

    def output(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> None:
        """Append the node that computes the rewritten node's output ``name``."""
        self.builder.op(op_type, inputs, name=name, **attrs)

    def value(self, name: str) -> np.ndarray:
        """The value of ``name``: an initializer, a Constant, or computed from shapes only."""
        if name in self._constants:
            return numpy_helper.to_array(self._constants[name])
        if self._depends_on_image_values(name):
            raise RewriteRefused(f"{name!r} depends on the image values, not only on its size")
        return self._probe()[name]

    def shape(self, name: str) -> list[int]:
        """The shape of ``name`` at the training image size with batch size ``probe_batch``."""
        if name in self._constants:
            return list(self._constants[name].dims)
        return [int(d) for d in self._probe()[f"{name}/shape"]]

    def _depends_on_image_values(self, name: str) -> bool:
        image = g.image_input(self.model).name
        made_by = g.producers(self.model)
        seen, todo = set(), [name]
        while todo:
            tensor = todo.pop()
            if tensor in seen or not tensor:
                continue
            seen.add(tensor)
            if tensor == image:
                return True
            node = made_by.get(tensor)
            if node is not None and node.op_type not in ("Shape", "Size"):
                todo.extend(node.input)
        return False

    def _probe(self) -> dict[str, np.ndarray]:
        if self._probed is None:
            self._probed = _run_probe(self.model, self._targets, self._constants, self.probe_batch)
        return self._probed


def _run_probe(model: onnx.ModelProto, targets: list[onnx.NodeProto], constants: dict[str, Any],
               batch: int) -> dict[str, np.ndarray]:
    """Shapes of the targets' inputs and outputs, values of their inputs after the first: one forward pass."""
    from ..engine import runtime

    dims = [d.dim_value for d in g.image_input(model).type.tensor_type.shape.dim]
    probe = g.with_input_shape(model, [batch, *dims[1:]])  # a copy
    del probe.graph.output[:]
    wanted: dict[str, None] = {}
    for node in targets:
        for tensor in [*node.input, *node.output]:
            if tensor and f"{tensor}/shape" not in wanted:
                probe.graph.node.append(helper.make_node("Shape", [tensor], [f"{tensor}/shape"]))
                wanted[f"{tensor}/shape"] = None
        wanted.update((t, None) for t in node.input[1:] if t and t not in constants)
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in wanted)  # types: the engine infers them
    _keep_ancestors(probe, set(wanted))
    image = g.image_input(probe).name
    try:
        values = runtime.forward(probe, {image: np.zeros([batch, *dims[1:]], np.float32)}, list(wanted))
    except Exception as exc:  # noqa: BLE001 - any engine failure: the sizes cannot be read
        raise RewriteRefused(f"the sizes around it could not be computed at the image size "
                             f"{dims[1:]}: {str(exc).splitlines()[0]}") from exc
    return dict(zip(wanted, values))


def _keep_ancestors(model: onnx.ModelProto, tensors: set[str]) -> None:
    """Drop the nodes ``tensors`` do not depend on, in place (the probe computes no more than it needs)."""
    needed, kept = set(tensors), []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))
