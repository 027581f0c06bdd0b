"""Networks from other tools (PyTorch, tf2onnx, model zoos): the rewrites that make them trainable
here and the checks that refuse what the engine cannot train.

``prepare(network)`` is applied to every network a model handle takes. It

- runs the ONNX checker;
- warns when the exporter folded batch norms into convolutions (:mod:`onnx_dl.folded_batchnorm`);
- puts the graph in canonical form (:mod:`onnx_dl.canonical`): every parameter the exporter
  shared through ``Identity`` or with a batch norm's running statistics gets its own initializer;
- turns an NHWC image input followed by ``Transpose(perm=[0, 3, 1, 2])`` (the tf2onnx pattern)
  into an NCHW input: the library feeds NCHW everywhere, and written models take NCHW;
- frees a batch axis the exporter only baked in (:mod:`onnx_dl.batch_axis`);
- writes Dropout and BatchNormalization in inference form (no ``training_mode``, no extra
  outputs), whatever mode the exporter wrote; the training graph switches them on itself;
- refuses graphs with a node on the way from a trained weight to the scores whose operator has
  no gradient on the engine's CPU build, and graphs without any float weight.
"""

from __future__ import annotations

import copy

import onnx
from onnx import TensorProto

from . import batch_axis, canonical, folded_batchnorm
from . import graph as g
from . import rewrites, score_head
from .errors import DLModelFileError

NHWC_TO_NCHW = [0, 3, 1, 2]
# Operators whose gradients ONNX Runtime training 1.19.2 builds and runs on the CPU (measured:
# a weight -> op -> loss graph per operator, artifacts generated and one step run). Missing for
# instance: Resize and ConvTranspose (no CPU kernel of their gradients), HardSigmoid, HardSwish,
# Elu, Selu, Softplus, PRelu, GlobalMaxPool, ReduceMax, InstanceNormalization, Einsum, Sum, Mean;
# the training graph rewrites some of them, and Gelu (onnx_dl.rewrites).
GRADIENT_OPS = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Conv", "Cos", "Div",
    "Dropout", "Erf", "Exp", "Expand", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity",
    "LeakyRelu", "Log", "LogSoftmax", "MatMul", "Max", "MaxPool", "Min", "Mul", "Neg", "Pad", "Pow",
    "Reciprocal", "ReduceL2", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Sigmoid", "Sin", "Slice",
    "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile", "Transpose", "Unsqueeze",
})
CONTRIB_GRADIENT_OPS = frozenset({("com.microsoft", "Gelu")})  # ONNX Runtime's own operators, measured too
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def prepare(network: onnx.ModelProto) -> onnx.ModelProto:
    """A checked copy of ``network`` in the form the library trains (see the module docstring)."""
    try:
        onnx.checker.check_model(network)
    except onnx.checker.ValidationError as exc:
        raise DLModelFileError(f"the ONNX checker refuses the network: {str(exc).splitlines()[0]}") from exc
    folded_batchnorm.warn_if_folded(network)
    model = copy.deepcopy(network)
    canonical.canonical_form(model)
    _nchw_input(model)
    _inference_mode(model)
    batch_axis.free_batch(model)
    check_trainable(model)
    return model


def _nchw_input(model: onnx.ModelProto) -> None:
    """Replace an NHWC input that is only transposed to NCHW by an NCHW input of the same name."""
    inits = g.initializers(model)
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        return
    image = inputs[0]
    uses = g.consumers(model).get(image.name, [])
    perms = [next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
             for node, _ in uses if node.op_type == "Transpose"]
    if not uses or len(perms) != len(uses) or any(p != NHWC_TO_NCHW for p in perms):
        return
    transposed = {node.output[0] for node, _ in uses}
    for node in model.graph.node:
        for pos, name in enumerate(node.input):
            if name in transposed:
                node.input[pos] = image.name
    for out in model.graph.output:
        if out.name in transposed:
            raise DLModelFileError(f"input {image.name!r}: its NCHW transpose is a graph output")
    kept = [node for node, _ in uses]
    remaining = [n for n in model.graph.node if all(n is not k for k in kept)]
    del model.graph.node[:]
    model.graph.node.extend(remaining)
    dims = [copy.deepcopy(d) for d in image.type.tensor_type.shape.dim]
    for target, source in zip(image.type.tensor_type.shape.dim, [dims[i] for i in NHWC_TO_NCHW]):
        target.CopyFrom(source)
    del model.graph.value_info[:]


def _inference_mode(model: onnx.ModelProto) -> None:
    """Dropout without ``training_mode`` and BatchNormalization with one output, in place."""
    stats_outputs = set()
    for node in model.graph.node:
        if node.op_type == "Dropout":
            del node.input[2:]  # training_mode: absent means inference
            del node.output[1:]  # the mask
        elif node.op_type == "BatchNormalization":
            stats_outputs.update(o for o in node.output[1:] if o)
    if stats_outputs:
        kept = [o for o in model.graph.output if o.name not in stats_outputs]
        del model.graph.output[:]
        model.graph.output.extend(kept)
    model.CopyFrom(g.inference_form(model))


def check_trainable(model: onnx.ModelProto) -> None:
    """Raise unless every node between a trained weight and an output (the scores of the first
    output: its logits when it ends in a Softmax) has a gradient here or a training rewrite."""
    if not g.weight_names(model):
        raise DLModelFileError("the network has no float weights in a trainable position (Conv, Gemm, MatMul, "
                               "BatchNormalization, ...): nothing to train")
    sized: set[str] = set()
    for node in gradient_nodes(model):
        if _differentiable(node):
            continue
        why = rewrites.refusal(node, model)
        if why is not None:
            raise DLModelFileError(
                f"node {node.name or node.output[0]!r} ({node.domain + '.' if node.domain else ''}{node.op_type}) "
                f"lies between trained weights and the scores, and the engine (ONNX Runtime training 1.19, CPU) "
                f"has no gradient for {node.op_type} ({why}); trainable operators: {', '.join(sorted(GRADIENT_OPS))}, "
                f"and by rewrite {', '.join(sorted(op for _, op in rewrites.RULES))}"
            )
        rule = rewrites.rule_for(node)
        if rule is not None and rule.sized:
            sized.add(node.output[0])
    dims = g.input_dims(model)
    if sized and None not in dims:  # the rewrites that read sizes, at the exported size: a refusal comes now
        rewrites.for_training(g.with_input_shape(model, [batch_axis.fixed_batch(model) or "N", *dims]), sized)


def _differentiable(node: onnx.NodeProto) -> bool:
    domain = "" if node.domain == "ai.onnx" else node.domain
    return (domain == "" and node.op_type in GRADIENT_OPS) or (domain, node.op_type) in CONTRIB_GRADIENT_OPS


def gradient_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes between a trained weight and an output (the scores of the first output: its
    logits when it ends in a Softmax): the engine differentiates each of them."""
    weights = set(g.weight_names(model))
    if not weights:
        return []
    float_tensors = _float_tensors(model)
    depends = set(weights)
    for node in model.graph.node:  # nodes are in topological order (checked)
        if any(name in depends for name in node.input):
            depends.update(o for o in node.output if o in float_tensors)
    roots = [score_head.logits_output(model)[0]] + [o.name for o in model.graph.output[1:]]
    needed = set().union(*(_ancestors(model, root) for root in roots))
    return [node for node in model.graph.node
            if any(name in depends for name in node.input) and any(o in needed and o in depends for o in node.output)]


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the tensors that shape inference types as floating point (all, if it cannot tell)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError:  # the checker accepted it, inference cannot type it: assume float
        return {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.initializer}
    infos = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    typed = {i.name: i.type.tensor_type.elem_type for i in infos}
    typed.update({i.name: i.data_type for i in model.graph.initializer})
    return {name for name, kind in typed.items() if kind in _FLOATS or kind == TensorProto.UNDEFINED} | {
        o for n in model.graph.node for o in n.output if o not in typed}


def _ancestors(model: onnx.ModelProto, tensor: str) -> set[str]:
    """Every tensor ``tensor`` is computed from, itself included."""
    made_by = g.producers(model)
    found, todo = set(), [tensor]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        node = made_by.get(name)
        if node is not None:
            todo.extend(i for i in node.input if i)
    return found
