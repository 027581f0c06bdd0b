"""Reading and editing inference graphs: the image input, which initializers are trained weights,
biases or batch-norm statistics, inference and training forms, fixed input shapes and tensor shapes
(the score layer of a classifier: :mod:`onnx_dl.score_head`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .engine import runtime
from .errors import DLModelFileError
from .onnx_builder import IR_VERSION, MAX_OPSET, MIN_OPSET, OPSET, default_opset

# Input positions that hold weights, per operator; other float initializers are constants.
_WEIGHT_INPUTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "BatchNormalization": (1, 2), "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2),
    "PRelu": (1,), "Add": (0, 1), "Sub": (0, 1), "Mul": (0, 1),
}
# Input positions that hold biases: excluded from the weight prior.
_BIAS_INPUTS = {
    "Conv": (2,), "ConvTranspose": (2,), "Gemm": (2,), "BatchNormalization": (2,),
    "InstanceNormalization": (2,), "LayerNormalization": (2,), "Add": (0, 1), "Sub": (0, 1),
}
_ELEMENTWISE = ("Add", "Sub", "Mul")
SHAPE_ONLY = ("Flatten", "Reshape", "Squeeze", "Identity")  # operators that only reshape


@dataclass(frozen=True)
class BatchNormStats:
    """One BatchNormalization node: the initializers of its running statistics and its momentum."""

    node: str
    input: str
    mean: str
    var: str
    momentum: float  # ONNX convention: running = momentum * running + (1 - momentum) * batch
    epsilon: float


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers by name."""
    return {init.name: init for init in model.graph.initializer}


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The one float input of rank 4 (NCHW) that is not an initializer."""
    inits = set(initializers(model))
    candidates = [i for i in model.graph.input if i.name not in inits]
    if len(candidates) != 1:
        raise DLModelFileError(
            f"expected a model with exactly one image input (N, C, H, W), found {len(candidates)} inputs: "
            f"{[i.name for i in candidates]}"
        )
    found = candidates[0]
    tensor = found.type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT or len(tensor.shape.dim) != 4:
        raise DLModelFileError(
            f"input {found.name!r}: expected a float32 tensor of rank 4 (N, C, H, W), got "
            f"{TensorProto.DataType.Name(tensor.elem_type)} of rank {len(tensor.shape.dim)}"
        )
    return found


def input_dims(model: onnx.ModelProto) -> tuple[int | None, int | None, int | None]:
    """(C, H, W) of the image input; None where the dimension is symbolic."""
    dims = image_input(model).type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[1:])  # type: ignore[return-value]


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The node producing each tensor."""
    return {out: node for node in model.graph.node for out in node.output}


def consumers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """(node, input position) of each use of every tensor."""
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for pos, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, pos))
    return uses


# Operators that only lay a tensor out anew: a weight read through them is still that weight
# (TorchScript exports nn.Linear on a (N, H, W, C) tensor as MatMul(x, Transpose(weight))).
_LAYOUT_ONLY = ("Transpose", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand")
# Operators whose every float operand of more than one element is a learned tensor (ViT's class token,
# Concat(Expand(class_token), patches)).
_ANY_POSITION = ("Concat",)


def _initializer_behind(name: str, made_by: dict[str, onnx.NodeProto],
                        inits: dict[str, onnx.TensorProto]) -> onnx.TensorProto | None:
    """The initializer that tensor ``name`` is, or is a re-layout of (through ``_LAYOUT_ONLY`` nodes)."""
    while name not in inits:
        node = made_by.get(name)
        if node is None or node.op_type not in _LAYOUT_ONLY or not node.input:
            return None
        name = node.input[0]
    return inits[name]


def _initializers_at(model: onnx.ModelProto, positions: dict[str, tuple[int, ...]]) -> list[onnx.TensorProto]:
    """The initializers read (directly or through a re-layout) at ``positions`` of each operator."""
    inits, made_by = initializers(model), producers(model)
    found: dict[str, onnx.TensorProto] = {}
    for node in model.graph.node:
        anywhere = node.op_type in _ANY_POSITION and positions is _WEIGHT_INPUTS
        for pos in range(len(node.input)) if anywhere else positions.get(node.op_type, ()):
            if pos < len(node.input) and node.input[pos]:
                init = _initializer_behind(node.input[pos], made_by, inits)
                scalar = init is not None and int(np.prod(init.dims)) <= 1
                if init is not None and not ((anywhere or node.op_type in _ELEMENTWISE) and scalar):
                    found.setdefault(init.name, init)
    return list(found.values())


def weight_names(model: onnx.ModelProto) -> list[str]:
    """Float initializers that are trained: in a weight position of a known operator, directly or
    through nodes that only lay them out anew (Transpose, Reshape, ...).

    Elementwise operands count only when they have more than one element, so scale constants
    (for instance an input normalisation) stay fixed.
    """
    return [init.name for init in _initializers_at(model, _WEIGHT_INPUTS) if init.data_type == TensorProto.FLOAT]


def bias_names(model: onnx.ModelProto) -> set[str]:
    """Initializers used as biases (added): the weight prior leaves them out."""
    biases = _initializers_at(model, _BIAS_INPUTS)
    # an elementwise scalar is no bias, but the weight prior never sees it either (it is no weight)
    return {init.name for init in biases}


def batchnorm_stats(model: onnx.ModelProto) -> list[BatchNormStats]:
    """Every BatchNormalization node with running statistics held in initializers."""
    inits = initializers(model)
    found = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization" or node.input[3] not in inits or node.input[4] not in inits:
            continue
        attrs = {a.name: a for a in node.attribute}
        found.append(BatchNormStats(
            node=node.name or node.output[0], input=node.input[0], mean=node.input[3], var=node.input[4],
            momentum=attrs["momentum"].f if "momentum" in attrs else 0.9,
            epsilon=attrs["epsilon"].f if "epsilon" in attrs else 1e-5,
        ))
    return found


def inference_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose BatchNormalization nodes are in inference form (one output, no training_mode).

    The training graph generator turns them into training-mode nodes itself; a node already in
    training form would make its generated eval graph invalid.
    """
    model = copy.deepcopy(model)
    uses = consumers(model)
    graph_outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        extra = [o for o in node.output[1:] if o]
        if any(o in uses or o in graph_outputs for o in extra):
            raise DLModelFileError(f"BatchNormalization {node.name!r} has its running statistics used by other nodes")
        del node.output[1:]
        kept = [a for a in node.attribute if a.name != "training_mode"]
        del node.attribute[:]
        node.attribute.extend(kept)
    return model


def dropout_training(model: onnx.ModelProto) -> None:
    """Switch every Dropout on (``training_mode`` true), in place, each with a fixed ``seed`` so that
    identical runs draw identical masks. Inference graphs keep Dropout off."""
    for index, node in enumerate(n for n in model.graph.node if n.op_type == "Dropout"):
        flag = f"{node.output[0]}/training_mode"
        model.graph.initializer.append(numpy_helper.from_array(np.array(True), flag))
        if len(node.input) < 2:
            node.input.append("")  # ratio: the default 0.5
        del node.input[2:]
        node.input.append(flag)
        if len(node.output) < 2:
            node.output.append(f"{node.output[0]}/mask")  # its gradient reads the mask
        kept = [a for a in node.attribute if a.name != "seed"]
        del node.attribute[:]
        node.attribute.extend([*kept, onnx.helper.make_attribute("seed", index)])


def with_input_shape(model: onnx.ModelProto, dims: list[int | str]) -> onnx.ModelProto:
    """A copy whose image input has the dimensions ``dims`` (ints fixed, strings symbolic)."""
    model = copy.deepcopy(model)
    target = image_input(model).name
    for inp in model.graph.input:
        if inp.name == target:
            for dim, value in zip(inp.type.tensor_type.shape.dim, dims):
                dim.Clear()
                if isinstance(value, str):
                    dim.dim_param = value
                else:
                    dim.dim_value = value
    del model.graph.value_info[:]
    return model


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference in strict mode, with errors turned into DLModelFileError."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises several types here
        raise DLModelFileError(f"shape inference failed: {exc}") from exc


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    """``node``'s attributes by name, as Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _names_read(node: onnx.NodeProto) -> set[str]:
    """The tensors ``node`` reads, those its subgraphs (If, Loop, Scan) read from outside included."""
    names = {i for i in node.input if i}
    for attribute in node.attribute:
        for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
            for inner in sub.node:
                names |= _names_read(inner)
    return names


def upstream(model: onnx.ModelProto, tensors: set[str] | list[str]) -> set[str]:
    """``tensors`` and every name they are computed from (nodes' inputs, subgraphs' outer names included)."""
    needed = set(tensors)
    for node in reversed(model.graph.node):  # topological order: one pass back
        if any(o in needed for o in node.output):
            needed |= _names_read(node)
    return needed


def remove_unused_nodes(model: onnx.ModelProto) -> None:
    """Drop the nodes (and then initializers) that no graph output depends on, in place."""
    needed = upstream(model, [o.name for o in model.graph.output])
    live = [node for node in model.graph.node if any(o in needed for o in node.output)]
    del model.graph.node[:]
    model.graph.node.extend(live)
    unused = [i for i in model.graph.initializer if i.name not in needed]
    for init in unused:
        model.graph.initializer.remove(init)


def declared_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Shapes of the graph's inputs (a training graph's trained weights among them) and initializers."""
    shapes: dict[str, list[int | None]] = {i.name: list(i.dims) for i in model.graph.initializer}
    for info in model.graph.input:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Inferred shape of every tensor (None for unknown dimensions).

    ONNX shape inference loses shapes computed at run time from other shapes, as exporters write
    them without constant folding (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` for
    ``x.view(x.size(0), ...)``). When every graph input has a fixed shape, the dimensions
    inference leaves unknown are measured by one forward pass of zeros (:func:`_measured_shapes`).
    """
    inferred = infer_shapes(model)
    shapes, types = {}, {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        types[info.name] = info.type.tensor_type.elem_type
    unknown = [o for n in model.graph.node for o in n.output
               if o and types.get(o) and (o not in shapes or None in shapes[o])]
    if unknown:
        shapes.update(_measured_shapes(model, {name: types[name] for name in unknown}))
    return shapes


def _measured_shapes(model: onnx.ModelProto, tensors: dict[str, int]) -> dict[str, list[int | None]]:
    """Shapes of ``tensors`` (name: element type) from one forward pass of zeros; empty when an input's
    shape is not fixed or the engine cannot run the graph."""
    inits = set(initializers(model))
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims) or inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            return {}
        feeds[inp.name] = np.zeros([d.dim_value for d in dims], np.float32)
    probe = copy.deepcopy(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, kind, None) for name, kind in tensors.items())
    try:
        values = runtime.forward(probe, feeds, list(tensors))
    except Exception:  # the engine refuses the graph: inference's answer is all there is
        return {}
    return {name: list(value.shape) for name, value in zip(tensors, values)}


def supported_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model at an opset and IR version ONNX Runtime 1.19 trains: converted when needed."""
    version = default_opset(model)
    if not MIN_OPSET <= version <= MAX_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, OPSET)
        except Exception as exc:
            raise DLModelFileError(
                f"the model uses opset {version}; the engine trains opsets {MIN_OPSET}..{MAX_OPSET} and the "
                f"ONNX version converter could not convert it to {OPSET}: {exc}"
            ) from exc
    if model.ir_version > 10:
        model = copy.deepcopy(model)
        model.ir_version = max(IR_VERSION, min(model.ir_version, 10))
    return model


def set_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    """Overwrite initializers in place with ``values`` (same names)."""
    for init in model.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(np.asarray(values[init.name], dtype=np.float32), init.name))
