"""Reading and editing inference graphs: the image input, the logits, which initializers are
trained weights, biases or batch-norm statistics, fixed input shapes and head replacement."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .engine import runtime
from .errors import DLModelFileError
from .onnx_builder import IR_VERSION, MAX_OPSET, MIN_OPSET, OPSET, GraphBuilder, default_opset

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
_SHAPE_ONLY = ("Flatten", "Reshape", "Squeeze", "Identity")


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


def logits_output(model: onnx.ModelProto) -> tuple[str, str | None]:
    """(logits, probabilities) of the first graph output.

    When the output is produced by a Softmax over the class axis, the logits are its input and the
    output itself holds the probabilities; otherwise the output is the logits and there is no
    probability tensor yet.
    """
    out = model.graph.output[0].name
    node = producers(model).get(out)
    if node is not None and node.op_type == "Softmax":
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if default_opset(model) >= 13 else 1)
        if axis in (1, -1):
            return node.input[0], out
    return out, None


def with_probabilities(network: onnx.ModelProto, name: str, shape: list[int | str]) -> onnx.ModelProto:
    """A copy of ``network`` whose one output is the softmax over axis 1 of its logits, named ``name`` with
    ``shape`` unless the graph declares one (a network already ending in a Softmax is copied as is)."""
    logits, probabilities = logits_output(network)
    model = copy.deepcopy(network)
    if probabilities is not None:
        return model
    b = GraphBuilder(model.graph)
    declared = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    del model.graph.output[:]
    b.op("Softmax", [logits], name=name, axis=1)
    b.output(name, declared or shape)
    return model


def score_classes(network: onnx.ModelProto, dims: list[int], rank: int) -> int:
    """K of the class scores (N, K) or (N, K, H, W) (``rank`` 2 or 4) the network maps images of ``dims`` to."""
    logits, _ = logits_output(network)
    shape = tensor_shapes(with_input_shape(network, dims)).get(logits)
    if not shape or len(shape) != rank or shape[1] is None:
        expected = "(N, K)" if rank == 2 else "(N, K, H, W)"
        raise DLModelFileError(f"output {logits!r}: expected class scores of shape {expected}, got {shape}")
    return shape[1]


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


# Between the classification layer and the logits: nodes that act on each class channel alone.
_CLASSWISE = ("Relu", "LeakyRelu", "Clip", "Dropout", "GlobalAveragePool", "GlobalMaxPool")
_SPATIAL_REDUCE = ("ReduceMean", "ReduceMax")
_HEAD_LAYERS = ("Gemm", "MatMul", "Conv")


def _int_constant(model: onnx.ModelProto, name: str) -> list[int] | None:
    """The values of an int64 initializer or Constant node output ``name``; None if it is neither."""
    init = initializers(model).get(name)
    if init is not None:
        return [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    node = producers(model).get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return [int(v) for v in numpy_helper.to_array(node.attribute[0].t).reshape(-1)]
    return None


def _keeps_classes(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """Whether ``node`` maps each class channel (axis 1) on its own: shape-only, elementwise, or a
    pooling/reduction over spatial axes only."""
    if node.op_type in _SHAPE_ONLY or node.op_type in _CLASSWISE:
        return True
    if node.op_type not in _SPATIAL_REDUCE:
        return False
    attribute = next((a for a in node.attribute if a.name == "axes"), None)
    axes = list(attribute.ints) if attribute is not None else (
        _int_constant(model, node.input[1]) if len(node.input) > 1 and node.input[1] else None)
    return bool(axes) and all(a >= 2 or -2 <= a < 0 for a in axes or [])


def _head_path(model: onnx.ModelProto, logits: str) -> tuple[onnx.NodeProto, list[onnx.NodeProto]]:
    """The Gemm, MatMul(+Add) or Conv that produces the logits, and the class-wise nodes after it
    (a squeezenet-like head: Conv 1x1 -> ReLU -> global pool -> Flatten)."""
    made_by = producers(model)
    node = made_by.get(logits)
    path: list[onnx.NodeProto] = []
    while node is not None and _keeps_classes(model, node):
        path.append(node)
        node = made_by.get(node.input[0])
    if node is not None and node.op_type == "Add" and any(name in initializers(model) for name in node.input):
        operands = [made_by.get(name) for name in node.input]  # a layer's bias added after it
        node = next((n for n in operands if n is not None and n.op_type in _HEAD_LAYERS), node)
    if node is None or node.op_type not in _HEAD_LAYERS:
        found = "nothing" if node is None else f"{node.op_type} {node.name!r}"
        raise DLModelFileError(
            f"cannot replace the classification layer: expected a Gemm, MatMul(+Add) or Conv producing "
            f"{logits!r} (through shape-only, class-wise activation, global pooling or spatial reduction "
            f"nodes), found {found}"
        )
    return node, path


def _head_targets(model: onnx.ModelProto, node: onnx.NodeProto) -> list[tuple[str, int]]:
    """(initializer, class axis) of the weights and biases of the classification layer ``node``."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return [(node.input[1], 0 if trans_b else 1)] + ([(node.input[2], 0)] if len(node.input) > 2 else [])
    if node.op_type == "Conv":
        return [(node.input[1], 0)] + ([(node.input[2], 0)] if len(node.input) > 2 else [])
    inits = initializers(model)  # MatMul: weights (D, K); a following Add holds the bias
    after = [n for n in model.graph.node if n.op_type == "Add" and node.output[0] in n.input]
    return [(node.input[1], 1)] + [(name, 0) for n in after for name in n.input if name in inits]


def score_layer_weights(model: onnx.ModelProto) -> set[str]:
    """The initializers of the layer producing the first output's logits."""
    return set(head_weights(model, logits_output(model)[0]))


def head_weights(model: onnx.ModelProto, logits: str) -> list[str]:
    """The initializers of the layer producing ``logits`` (what ``freeze_backbone`` keeps trainable)."""
    return [name for name, _ in _head_targets(model, _head_path(model, logits)[0])]


def _add_bias(model: onnx.ModelProto, node: onnx.NodeProto, num_classes: int) -> None:
    """Give the classification layer ``node`` a zero bias when it has none (the dynamo exporter drops
    an all-zero bias, and a new layer without one could not learn class priors)."""
    has_bias = bool(node.op_type in ("Gemm", "Conv") and len(node.input) > 2 and node.input[2]) or (
        node.op_type == "MatMul" and len(_head_targets(model, node)) > 1)
    if has_bias:
        return
    b = GraphBuilder(model.graph, prefix="head/")
    bias = b.const(np.zeros(num_classes, np.float32), f"{node.input[1]}_bias")
    if node.op_type in ("Gemm", "Conv"):  # Gemm's C (K,) broadcasts over (N, K)
        del node.input[2:]
        node.input.append(bias)
        return
    out = node.output[0]
    node.output[0] = b.fresh("matmul")
    index = list(model.graph.node).index(node)
    model.graph.node.insert(index + 1, onnx.helper.make_node("Add", [node.output[0], bias], [out],
                                                              name=b.fresh("bias_add_node")))


def _resize_reshapes(model: onnx.ModelProto, path: list[onnx.NodeProto], old: int, new: int) -> None:
    """Reshapes after the classification layer whose constant target holds the class count (the dynamo
    exporter writes ``Reshape(x, [-1, K])``) get a target with the new count."""
    b = GraphBuilder(model.graph, prefix="head/")
    for node in path:
        if node.op_type != "Reshape":
            continue
        target = _int_constant(model, node.input[1])
        if target is not None and len(target) >= 2 and target[1] == old:
            node.input[1] = b.const(np.array([target[0], new, *target[2:]], np.int64), "reshape_target")


def replace_head(model: onnx.ModelProto, logits: str, num_classes: int, seed: int = 0) -> onnx.ModelProto:
    """A copy whose last layer predicts ``num_classes`` classes, freshly initialised.

    Initialisation: weights ~ Normal(0, 0.01), biases 0 (the usual choice for a new classifier
    on pretrained features; a layer without a bias gets one). Only the output dimension changes;
    everything before stays as is, class-wise nodes after the layer (activation, global pooling,
    flattening) are kept.
    """
    model = copy.deepcopy(model)
    layer, path = _head_path(model, logits)
    inits = initializers(model)
    rng = np.random.default_rng(seed)
    old_classes = None
    for name, axis in _head_targets(model, layer):
        if name not in inits:
            raise DLModelFileError(f"cannot replace the classification layer: {name!r} is not an initializer")
        old = numpy_helper.to_array(inits[name])
        shape = list(old.shape)
        class_axis = axis if old.ndim > 1 else 0
        old_classes = shape[class_axis] if old_classes is None else old_classes
        shape[class_axis] = num_classes
        is_bias = old.ndim == 1
        fresh = np.zeros(shape, np.float32) if is_bias else rng.normal(0.0, 0.01, shape).astype(np.float32)
        inits[name].CopyFrom(numpy_helper.from_array(fresh, name))
    _add_bias(model, layer, num_classes)
    if old_classes is not None:
        _resize_reshapes(model, path, old_classes, num_classes)
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[1].HasField("dim_value"):
            dims[1].dim_value = num_classes
    del model.graph.value_info[:]
    shape = tensor_shapes(model).get(logits)
    if shape and len(shape) >= 2 and shape[1] is not None and shape[1] != num_classes:
        raise DLModelFileError(f"cannot replace the classification layer {layer.name!r}: after it the scores "
                               f"{logits!r} have shape {shape}, not {num_classes} classes on axis 1")
    return model


def set_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    """Overwrite initializers in place with ``values`` (same names)."""
    for init in model.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(np.asarray(values[init.name], dtype=np.float32), init.name))
