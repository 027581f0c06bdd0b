"""A small helper that appends named nodes and initializers to an ONNX graph.

Everything the library writes into a graph (networks, losses, update rules) goes through it, so
naming, opsets and IR versions are decided in one place.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # what the library writes; ORT 1.19 runs opset <= 21
IR_VERSION = 9  # ORT 1.19 loads IR <= 10; onnx >= 1.18 would default to 11
MIN_OPSET, MAX_OPSET = 13, 21


class GraphBuilder:
    """Appends nodes to ``graph``; every output name is prefixed and unique."""

    def __init__(self, graph: onnx.GraphProto, prefix: str = "") -> None:
        self.graph = graph
        self.prefix = prefix
        self._count = 0
        self._names = {n for node in graph.node for n in node.output} | {i.name for i in graph.initializer}
        self._names |= {i.name for i in graph.input}

    def fresh(self, hint: str) -> str:
        """A tensor name not yet used in the graph."""
        name = f"{self.prefix}{hint}"
        while name in self._names:
            self._count += 1
            name = f"{self.prefix}{hint}_{self._count}"
        self._names.add(name)
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, *, outputs: int = 1,
           name: str | None = None, domain: str = "", **attrs: Any) -> Any:
        """Append one node; return its output name (or a list of names if ``outputs`` > 1)."""
        if name is not None:
            self._names.add(name)
            out_names = [name] + [self.fresh(f"{name}_out{i}") for i in range(1, outputs)]
        else:
            base = hint or op_type.lower()
            out_names = [self.fresh(base if i == 0 else f"{base}_out{i}") for i in range(outputs)]
        self.graph.node.append(
            helper.make_node(op_type, inputs, out_names, name=self.fresh(f"{out_names[0]}_node"), domain=domain, **attrs)
        )
        return out_names[0] if outputs == 1 else out_names

    def const(self, value: np.ndarray | float | int, hint: str = "const", name: str | None = None) -> str:
        """Add an initializer; Python floats become float32 scalars, ints int64 scalars."""
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        elif array.dtype.kind in "iu" and array.dtype != np.int64:
            array = array.astype(np.int64)
        tensor_name = name if name is not None else self.fresh(hint)
        self._names.add(tensor_name)
        self.graph.initializer.append(numpy_helper.from_array(array, tensor_name))
        return tensor_name

    def input(self, name: str, shape: list[Any], elem_type: int = TensorProto.FLOAT) -> str:
        """Declare a graph input."""
        self._names.add(name)
        self.graph.input.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, shape: list[Any], elem_type: int = TensorProto.FLOAT) -> str:
        """Declare a graph output."""
        self.graph.output.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name


class SharedConstants(GraphBuilder):
    """GraphBuilder whose constants are added once per value and hint (rewrites add many equal ones)."""

    def __init__(self, graph: onnx.GraphProto, prefix: str = "") -> None:
        super().__init__(graph, prefix)
        self._constants: dict[tuple[str, str], str] = {}

    def const(self, value: np.ndarray | float | int | list[int], hint: str = "const", name: str | None = None) -> str:
        """An initializer holding ``value``, shared by every use of the same value and hint."""
        key = (hint, repr(np.asarray(value).tolist()))
        if name is not None or key not in self._constants:
            self._constants[key] = super().const(np.asarray(value), hint, name)
        return self._constants[key]


def new_model(graph: onnx.GraphProto, opset: int = OPSET, extra_opsets: dict[str, int] | None = None) -> onnx.ModelProto:
    """Wrap ``graph`` in a model with the library's IR version and opset."""
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="onnx_dl")
    model.ir_version = IR_VERSION
    return model


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ONNX domain the model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1
