"""HALCON's ``get_dl_model_param(model, 'summary')``: one line per layer of the inference graph with its
output shape per image and its parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from . import batch_axis
from . import graph as g
from .errors import DLModelFileError


def layer_summary(network: onnx.ModelProto, inference: onnx.ModelProto, image_shape: tuple[int, int, int],
                  frozen: set[str]) -> list[str]:
    """The summary of ``inference`` (the graph ``apply_dl_model`` runs; its trained weights are
    ``network``'s) at images of ``image_shape`` (C, H, W), ``frozen`` weights marked (:func:`_format`)."""
    inits = g.initializers(network)
    weights = {w: int(np.prod(inits[w].dims)) for w in g.weight_names(network)}
    fixed = batch_axis.fixed_batch(network)  # a network fixed to B0 images runs at B0 only
    one = g.tensor_shapes(g.with_input_shape(inference, [fixed or 1, *image_shape]))
    try:  # a tensor is batched when its first axis follows the batch: 1 at batch 1, 2 at batch 2
        two = {} if fixed else g.tensor_shapes(g.with_input_shape(inference, [2, *image_shape]))
    except DLModelFileError:
        two = {}

    def batched(tensor: str) -> bool:
        first = (one.get(tensor) or [None])[0]
        return first == fixed if fixed else first == 1 and (two.get(tensor) or [None])[0] == 2

    return _format(inference.graph.node, one, batched, weights, frozen)


def _format(nodes: Any, shapes: dict[str, list[int | None]], batched: Callable[[str], bool],
                  weights: dict[str, int], frozen: set[str]) -> list[str]:
    """One line per node of ``nodes`` (the inference graph's ONNX nodes) in graph order, then a total
    line. Columns (aligned, separated by spaces)::

        <name> <op> <output shape> <#params>[ (frozen <n>)]
        total: <nodes> nodes, <#params> params (<trainable> trainable, <frozen> frozen)

    - name: the node's name, or its first output's name when it has none;
    - output shape: ``shapes`` of its outputs (inferred at the model's image size), the first axis
      left out where ``batched`` says it is the batch (so: per image); dims joined by 'x', '?' for a
      dimension shape inference cannot tell, 'scalar' for rank 0, several outputs joined by ',';
    - #params: the elements of the trained weights (``weights``: name -> element count) the node
      reads, each weight counted at the first node reading it, so the column adds up to the total;
      ``(frozen <n>)`` says how many of them ``frozen`` keeps fixed.
    """

    def shape_text(name: str) -> str:
        if name not in shapes:
            return "?"
        dims = shapes[name][1:] if batched(name) else shapes[name]
        return "x".join("?" if d is None else str(d) for d in dims) if dims else "scalar"

    rows, counted = [], set()
    for node in nodes:
        reads = [i for i in node.input if i in weights and i not in counted]
        counted.update(reads)
        total = sum(weights[i] for i in reads)
        fixed = sum(weights[i] for i in reads if i in frozen)
        rows.append((node.name or node.output[0], node.op_type, ",".join(shape_text(o) for o in node.output if o) or "-",
                     str(total) + (f" (frozen {fixed})" if fixed else "")))
    widths = [max([len(row[k]) for row in rows] + [1]) for k in range(3)]
    lines = [f"{n:<{widths[0]}}  {op:<{widths[1]}}  {s:<{widths[2]}}  {p}" for n, op, s, p in rows]
    all_params = sum(weights.values())
    all_frozen = sum(weights[name] for name in weights if name in frozen)
    lines.append(f"total: {len(rows)} nodes, {all_params} params ({all_params - all_frozen} trainable, "
                 f"{all_frozen} frozen)")
    return lines
