"""The batch axis of exported networks: freed where the exporter only baked the export batch in.

An exporter that traces with a fixed input (the dynamo exporter without ``dynamic_shapes``, the
TorchScript exporter without ``dynamic_axes``) declares the image input with batch size B0 and may
write shape constants equal to B0, e.g. ``Reshape(x, [1, 512])`` before the classifier. The library
trains and applies at ``batch_size``, so

- :func:`free_batch` rewrites what provably only repeats the batch size (one rule per function,
  its proof in the docstring) and, when every output then follows the batch of the input, makes
  the input's batch axis symbolic;
- otherwise the input keeps its fixed batch, and :func:`fixed_batch` / :func:`fixed_batch_reason`
  tell the model parameters which size is possible and which node fixes it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from . import graph as g
from .engine import runtime
from .errors import DLModelFileError

SYMBOL = "N"  # the image input's symbolic batch dimension
_PROBE = "onnx_dl_batch"  # a symbol no exporter writes: inferred dims equal to it are the batch
_PER_ROW = ("Gemm", "MatMul")
_PASS_THROUGH = ("Dropout", "Identity")


def fixed_batch(network: onnx.ModelProto) -> int | None:
    """The batch size the image input is fixed to, or None when its batch axis is symbolic."""
    dim = g.image_input(network).type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def free_batch(model: onnx.ModelProto) -> None:
    """Free the batch axis of ``model`` in place where that is proven (see the module docstring).

    After :func:`reshape_rows`, the batch is free when shape inference with a symbolic batch gives
    no output a fixed first dimension and a forward pass at batch B0 + 1 runs and returns B0 + 1
    rows. Then the input's batch becomes the symbol ``N``; otherwise the model keeps its fixed input.
    """
    try:
        size = fixed_batch(model)
    except DLModelFileError:  # no single image input: refused with its own message later
        return
    if size is None:
        return
    candidate = onnx.ModelProto.FromString(model.SerializeToString())
    _set_batch(candidate, _PROBE)
    reshape_rows(candidate, size)
    if _lost_batch(candidate)[0] or not _runs_at(candidate, size + 1):
        return
    _set_batch(candidate, SYMBOL)
    model.CopyFrom(candidate)


def reshape_rows(model: onnx.ModelProto, size: int) -> None:
    """``Reshape(x, [B0, K])`` read only by per-row operators becomes ``Reshape(x, [0, K])``, in place.

    Proof: x has shape (N, d1, ..., dk) with N the batch (inferred with a symbolic batch) and
    d1 * ... * dk = K (inferred; a target ``[B0, -1]`` takes K from there). Row-major order keeps
    each sample's K values contiguous, so ``[N, K]`` = ``[0, K]`` (0: copy x's dim 0, with
    ``allowzero`` 0) holds sample i in row i for every
    N, as the exporter's ``[B0, K]`` did at N = B0 (``torch.flatten(x, 1)``). The consumers (Gemm /
    MatMul taking it as their left operand, through Dropout / Identity) treat rows independently,
    so their result for each sample does not depend on N. A target of another rank, or a result
    read by anything else (which might mix samples, as a reshape to ``[1, N * C, H, W]`` for a
    per-sample normalisation does), is left as is. The node's ``allowzero`` (the dynamo exporter
    sets it) is dropped: the old target held no 0, so it meant nothing there.
    """
    inits = g.initializers(model)
    constants = _constants(model)
    shapes = _symbolic_shapes(model)
    uses = g.consumers(model)
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        target = constants.get(node.input[1])
        data = shapes.get(node.input[0])
        if target is None or target.shape != (2,) or target[0] != size or not data or data[0] != _PROBE:
            continue
        per_sample = data[1:]
        if (any(not isinstance(d, int) for d in per_sample) or target[1] not in (-1, int(np.prod(per_sample)))
                or (target == 0).any()):
            continue
        if not _per_row_only(node.output[0], uses):
            continue
        rows = numpy_helper.from_array(np.array([0, int(np.prod(per_sample))], np.int64), f"{node.input[1]}/rows")
        if rows.name not in inits:
            model.graph.initializer.append(rows)
            inits[rows.name] = rows
        node.input[1] = rows.name
        kept = [a for a in node.attribute if a.name != "allowzero"]
        del node.attribute[:]
        node.attribute.extend(kept)


def fixed_batch_reason(network: onnx.ModelProto) -> str:
    """Which node ties the network to its fixed batch size, for an error message."""
    size = fixed_batch(network)
    probe = onnx.ModelProto.FromString(network.SerializeToString())
    _set_batch(probe, _PROBE)
    node = _lost_batch(probe)[1]
    where = (f"node {node.name or node.output[0]!r} ({node.op_type}) writes a fixed batch size, not the input's"
             if node is not None else "a forward pass at another batch size fails")
    return (f"the network was exported for batches of exactly {size} image(s) ({where}); export it with a "
            f"dynamic batch axis (torch.onnx.export(..., dynamic_shapes=...) or dynamic_axes=..., or "
            f"onnx_dl.export_torch), or keep batch_size {size} and raise batch_size_multiplier")


def _per_row_only(tensor: str, uses: dict[str, list[tuple[onnx.NodeProto, int]]]) -> bool:
    """Whether every reader of ``tensor`` is a Gemm / MatMul taking it as rows (through Dropout / Identity)."""
    readers = uses.get(tensor, [])
    for node, pos in readers:
        if node.op_type in _PASS_THROUGH and pos == 0:
            if not _per_row_only(node.output[0], uses):
                return False
        elif node.op_type not in _PER_ROW or pos != 0 or _attr(node, "transA", 0):
            return False
    return bool(readers)


def _lost_batch(model: onnx.ModelProto) -> tuple[bool, onnx.NodeProto | None]:
    """(whether shape inference with a symbolic batch gives some graph output a fixed first dimension,
    the first node that reads the batch and writes a fixed first dimension, if one is found).

    An output whose first dimension inference cannot tell (a shape computed at run time) is not
    counted: the forward pass at another batch size decides for it (:func:`free_batch`).
    """
    shapes = _symbolic_shapes(model)

    def fixed(name: str) -> bool:
        return isinstance((shapes.get(name) or [None])[0], int)

    if not any(fixed(o.name) for o in model.graph.output):
        return False, None
    for node in model.graph.node:
        reads = any((shapes.get(i) or [None])[0] == _PROBE for i in node.input)
        if reads and node.op_type not in ("Shape", "Size") and any(fixed(o) for o in node.output if o):
            return True, node
    return True, None


def _runs_at(model: onnx.ModelProto, batch: int) -> bool:
    """Whether a forward pass of zero images at ``batch`` runs and returns ``batch`` rows everywhere."""
    dims = g.image_input(model).type.tensor_type.shape.dim
    if any(not d.HasField("dim_value") for d in dims[1:]):
        return True  # a symbolic image size: shape inference is all there is to go on
    try:
        image = np.zeros([batch, *(d.dim_value for d in dims[1:])], np.float32)
        outputs = runtime.forward(model, {g.image_input(model).name: image})
    except Exception:  # the engine refuses: the batch is not free
        return False
    return all(out.ndim >= 1 and out.shape[0] == batch for out in outputs)


def _set_batch(model: onnx.ModelProto, symbol: str) -> None:
    """Give the image input and every output the symbolic batch ``symbol``; drop stale value_info."""
    name = g.image_input(model).name
    for info in [*(i for i in model.graph.input if i.name == name), *model.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = symbol
    del model.graph.value_info[:]


def _symbolic_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Inferred shapes with symbolic dims kept as their names (empty when inference fails)."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    for out in probe.graph.output:  # let inference decide the outputs' shapes
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:  # onnx raises several types here; no shapes means nothing is proven
        return {}
    shapes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param or None
                             for d in info.type.tensor_type.shape.dim]
    return shapes


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values of the initializers and Constant nodes of integer type."""
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT64}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            value = numpy_helper.to_array(node.attribute[0].t)
            if value.dtype == np.int64:
                values[node.output[0]] = value
    return values


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)
