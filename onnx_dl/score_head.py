"""The score layer of a classifier or segmentation network: finding its logits, ending the network in
class probabilities, the class count it predicts, its weights, and replacing it for a new class count."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import DLModelFileError
from .graph import SHAPE_ONLY, initializers, producers, tensor_shapes, with_input_shape
from .onnx_builder import GraphBuilder, default_opset

# Between the classification layer and the logits: nodes that act on each class channel alone.
_CLASSWISE = ("Relu", "LeakyRelu", "Clip", "Dropout", "GlobalAveragePool", "GlobalMaxPool")
_SPATIAL_REDUCE = ("ReduceMean", "ReduceMax")
_HEAD_LAYERS = ("Gemm", "MatMul", "Conv")


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


def with_sigmoid(network: onnx.ModelProto, name: str, shape: list[int | str]) -> onnx.ModelProto:
    """A copy of ``network`` whose one output is the element-wise sigmoid of its logits, named ``name``
    with ``shape`` (a Softmax the network ended in is dropped: independent per-class confidences; a
    network already ending in a Sigmoid is copied as is)."""
    model = copy.deepcopy(network)
    if sigmoid_input(network) is not None:
        return model
    logits, probabilities = logits_output(network)
    if probabilities is not None:
        kept = [n for n in model.graph.node if probabilities not in n.output]
        del model.graph.node[:]
        model.graph.node.extend(kept)
    del model.graph.output[:]
    GraphBuilder(model.graph).op("Sigmoid", [logits], name=name)
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    return model


def sigmoid_input(network: onnx.ModelProto) -> str | None:
    """The input of the Sigmoid producing the first graph output (a multi-label network's logits), or None."""
    node = producers(network).get(network.graph.output[0].name)
    return node.input[0] if node is not None and node.op_type == "Sigmoid" else None


def score_classes(network: onnx.ModelProto, dims: list[int], rank: int, logits: str | None = None) -> int:
    """K of the class scores (N, K) or (N, K, H, W) (``rank`` 2 or 4) the network maps images of ``dims`` to
    (``logits``: the score tensor, by default :func:`logits_output`'s)."""
    logits = logits or logits_output(network)[0]
    shape = tensor_shapes(with_input_shape(network, dims)).get(logits)
    if not shape or len(shape) != rank or shape[1] is None:
        expected = "(N, K)" if rank == 2 else "(N, K, H, W)"
        raise DLModelFileError(f"output {logits!r}: expected class scores of shape {expected}, got {shape}")
    return shape[1]


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
    if node.op_type in SHAPE_ONLY or node.op_type in _CLASSWISE:
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


def remap_head(model: onnx.ModelProto, logits: str, source: list[int | None], seed: int = 0) -> onnx.ModelProto:
    """A copy whose last layer predicts ``len(source)`` classes: class j keeps the weights and bias of the old
    class ``source[j]``, a None is freshly initialised (:func:`replace_head`'s rule). Reordering, dropping
    or adding classes then keeps what was learned for every class that stays."""
    remapped = replace_head(model, logits, len(source), seed)
    layer, _ = _head_path(model, logits)
    old, new = initializers(model), initializers(remapped)
    for name, axis in _head_targets(model, layer):
        before = numpy_helper.to_array(old[name])
        class_axis = axis if before.ndim > 1 else 0
        after = numpy_helper.to_array(new[name]).copy()
        for j, i in enumerate(source):
            if i is not None:
                np.moveaxis(after, class_axis, 0)[j] = np.moveaxis(before, class_axis, 0)[i]
        new[name].CopyFrom(numpy_helper.from_array(after, name))
    return remapped
