"""The training graph: an inference graph with fixed image shape, the loss of its model type, the
weight prior and the total loss as outputs.

Every hyper-parameter the user may change between steps is a graph input (class weights, the
weight prior, normalisers), so changing it never regenerates training artifacts; the one exception
is a weight prior of 0, whose graph leaves the prior out (:func:`without_weight_prior`).

The engine differentiates the graph's first output only: the sum of the model type's losses
(:data:`DIFFERENTIATED`). The weight prior's value is computed beside it, and its gradient
alpha * w is added to each weight's gradient once the engine has built the gradient graph
(:func:`add_prior_gradients`): one product and one sum per weight, where the engine's own gradient
of alpha / 2 * sum(w^2) took an Expand, two products and a three-term sum (resnet18's 11 M
weights, weight_prior 1e-4: 266 -> 252 ms per step at two threads). A weight no loss reads (an
exported auxiliary head whose output nothing uses) is not trained, as PyTorch leaves a parameter
without gradient alone; such dead branches leave the training graph (the engine's gradient
builder fails on them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import TensorProto

from . import batch_axis, ctc, foreign, losses, rewrites
from . import graph as g
from . import score_head
from .errors import DLRuntimeError
from .onnx_builder import GraphBuilder, default_opset

TOTAL = "total_loss"
PRIOR = "loss_weight_prior"
DIFFERENTIATED = "loss_differentiated"  # the first output: what the engine's gradient graph starts from
WEIGHT_PRIOR_INPUT = "weight_prior"


@dataclass
class TrainingGraph:
    """A forward graph with losses, ready for artifact generation."""

    model: onnx.ModelProto
    inputs: list[str]  # fed every chunk, in the engine's order
    losses: list[str]  # scalar outputs: total first, then the parts
    trainable: list[str]
    batchnorms: list[g.BatchNormStats]
    bn_elements: dict[str, int] = field(default_factory=dict)  # per-sample values per channel at each BN input
    prior_weights: list[str] = field(default_factory=list)  # whose prior gradient add_prior_gradients adds


def _loss_graph(forward: onnx.ModelProto, image_dims: tuple[int, int, int]) -> tuple[onnx.ModelProto, GraphBuilder]:
    """The forward graph at the image size, with operators the engine cannot differentiate rewritten
    (:mod:`onnx_dl.rewrites`), Dropout on and no outputs yet."""
    model = g.with_input_shape(g.inference_form(forward), [batch_axis.fixed_batch(forward) or "N", *image_dims])
    if any(rewrites.rule_for(node) is not None for node in model.graph.node):
        model = rewrites.for_training(model, {n.output[0] for n in foreign.gradient_nodes(model) if n.output})
    g.dropout_training(model)
    del model.graph.output[:]
    return model, GraphBuilder(model.graph, prefix="loss/")


def _finish(model: onnx.ModelProto, b: GraphBuilder, parts: dict[str, str], trainable: list[str],
            inputs: list[str], forward: onnx.ModelProto, image_dims: tuple[int, int, int]) -> TrainingGraph:
    """Add the weight prior and the total loss, declare the outputs and describe the result."""
    data = None
    for tensor in parts.values():
        data = tensor if data is None else b.op("Add", [data, tensor], "total")
    reached = g.upstream(model, [data])
    trainable = [w for w in trainable if w in reached]  # one no loss reads (a dead auxiliary head) has no gradient
    biases = g.bias_names(forward)  # roles as in the network: a rewrite may read a weight through other nodes
    prior_weights = [w for w in trainable if w not in biases]
    b.input(WEIGHT_PRIOR_INPUT, [])
    prior = losses.weight_prior(b, prior_weights, WEIGHT_PRIOR_INPUT)
    named = {DIFFERENTIATED: data, TOTAL: b.op("Add", [data, prior], "total"), **parts, PRIOR: prior}
    for out_name, tensor in named.items():
        model.graph.node.append(onnx.helper.make_node("Identity", [tensor], [out_name], name=f"{out_name}_identity"))
        b.output(out_name, [])
    g.remove_unused_nodes(model)  # the engine's gradient builder fails on a branch no output reads
    stats = g.batchnorm_stats(model)
    shapes = g.tensor_shapes(g.with_input_shape(forward, [1, *image_dims]))  # per-sample shapes
    elements = {}
    for bn in stats:
        dims = shapes.get(bn.input, [])
        elements[bn.node] = int(_product(dims[2:])) if dims and None not in dims else 0
    return TrainingGraph(model=model, inputs=[*inputs, WEIGHT_PRIOR_INPUT], losses=list(named)[1:],
                         trainable=trainable, batchnorms=stats, bn_elements=elements,
                         prior_weights=prior_weights)


def add_prior_gradients(training: onnx.ModelProto, tg: TrainingGraph) -> None:
    """Add the weight prior's gradient alpha * w to the gradient of each of ``tg.prior_weights`` in the engine's
    training graph ``training`` (in place), where its gradient buffer takes it (InPlaceAccumulatorV2)."""
    wanted = {f"{w}_grad": w for w in tg.prior_weights}
    b = GraphBuilder(training.graph, prefix="prior_gradient/")
    nodes, found = [], set()
    for node in training.graph.node:
        gradient = node.input[1] if node.op_type == "InPlaceAccumulatorV2" and len(node.input) > 1 else None
        if gradient in wanted:
            decay = b.fresh("decay")
            total = b.fresh("gradient")
            nodes += [onnx.helper.make_node("Mul", [wanted[gradient], WEIGHT_PRIOR_INPUT], [decay], name=b.fresh("decay_node")),
                      onnx.helper.make_node("Add", [gradient, decay], [total], name=b.fresh("gradient_node"))]
            node.input[1] = total
            found.add(gradient)
        nodes.append(node)
    missing = sorted(wanted[name] for name in set(wanted) - found)
    if missing:
        raise DLRuntimeError(f"the engine's training graph has no gradient buffer for {missing}: "
                             "the weight prior's gradient could not be added")
    del training.graph.node[:]
    training.graph.node.extend(nodes)


def without_weight_prior(tg: TrainingGraph) -> TrainingGraph:
    """``tg`` for a weight prior of 0: its loss part is ``weight_prior * 0`` (the input stays, so the feeds
    do not change) and the sum of squares of the weights is gone, so the engine builds and runs no prior
    gradient (about seven passes over every weight per step: resnet18's 11 M weights). With alpha = 0
    both graphs give the same losses and gradients, bit for bit (they only add zeros)."""
    model = onnx.ModelProto()
    model.CopyFrom(tg.model)
    graph = model.graph
    prior = next(n.input[0] for n in graph.node if n.op_type == "Identity" and n.output[0] == PRIOR)
    b = GraphBuilder(graph, prefix="no_prior/")
    zero = b.const(0.0, "zero")
    nodes = [onnx.helper.make_node("Mul", [WEIGHT_PRIOR_INPUT, zero], [prior], name=b.fresh("prior_node"))
             if prior in n.output else n for n in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    g.remove_unused_nodes(model)
    return TrainingGraph(model=model, inputs=list(tg.inputs), losses=list(tg.losses), trainable=list(tg.trainable),
                         batchnorms=list(tg.batchnorms), bn_elements=dict(tg.bn_elements), prior_weights=[])


def _product(values: list[int]) -> int:
    result = 1
    for v in values:
        result *= v
    return result


def _one_loss(forward: onnx.ModelProto, image_dims: tuple[int, int, int], inputs: list[tuple[str, list[Any], int]],
              trainable: list[str] | None, name: str, loss: Callable[[GraphBuilder], str]) -> TrainingGraph:
    """The training graph of a network with one loss (+ the weight prior): ``inputs`` (name, shape, element
    type) fed every chunk after the image, and ``loss(b)`` appending the loss's nodes."""
    model, b = _loss_graph(forward, image_dims)
    image = g.image_input(model).name
    for input_name, shape, element in inputs:
        b.input(input_name, shape, element)
    weights = trainable if trainable is not None else g.weight_names(forward)
    return _finish(model, b, {name: loss(b)}, weights, [image, *(n for n, _, _ in inputs)], forward, image_dims)


def classification(forward: onnx.ModelProto, image_dims: tuple[int, int, int], num_classes: int,
                   trainable: list[str] | None = None) -> TrainingGraph:
    """Training graph of a classifier: weighted cross-entropy on the logits + weight prior.

    Inputs per chunk: the image (N, C, H, W), ``labels`` (N,) class indices, ``class_weights`` (K,),
    ``ce_normalizer`` (sum of the weights of all samples of the step), ``weight_prior``.
    """
    logits, _ = score_head.logits_output(forward)
    inputs = [("labels", ["N"], TensorProto.INT64), ("class_weights", [num_classes], TensorProto.FLOAT),
              ("ce_normalizer", [], TensorProto.FLOAT)]
    return _one_loss(forward, image_dims, inputs, trainable, "loss_cross_entropy",
                     lambda b: losses.cross_entropy(b, logits, "labels", "class_weights", "ce_normalizer"))


def segmentation(forward: onnx.ModelProto, image_dims: tuple[int, int, int], num_classes: int,
                 trainable: list[str] | None = None) -> TrainingGraph:
    """Training graph of a segmentation network: weighted per-pixel cross-entropy + weight prior.

    Inputs per chunk: the image (N, C, H, W), ``labels`` (N, H, W) class indices,
    ``pixel_weights`` (N, H, W), ``ce_normalizer`` (sum of the pixel weights of the step),
    ``weight_prior``.
    """
    logits, _ = score_head.logits_output(forward)
    height, width = image_dims[1], image_dims[2]
    inputs = [("labels", ["N", height, width], TensorProto.INT64),
              ("pixel_weights", ["N", height, width], TensorProto.FLOAT), ("ce_normalizer", [], TensorProto.FLOAT)]
    return _one_loss(forward, image_dims, inputs, trainable, "loss_cross_entropy",
                     lambda b: losses.pixel_cross_entropy(b, logits, "labels", "pixel_weights", "ce_normalizer",
                                                          default_opset(forward)))


def multi_label_classification(forward: onnx.ModelProto, image_dims: tuple[int, int, int], num_classes: int,
                               logits: str, trainable: list[str] | None = None) -> TrainingGraph:
    """Training graph of a multi-label classifier: per-class sigmoid binary cross-entropy on ``logits``
    (:func:`onnx_dl.losses.binary_cross_entropy`) + weight prior.

    Inputs per chunk: the image (N, C, H, W), ``targets`` (N, K) 0/1, ``class_weights`` (K,) (weights of
    present labels), ``bce_normalizer`` (N * K over the step), ``weight_prior``.
    """
    inputs = [("targets", ["N", num_classes], TensorProto.FLOAT), ("class_weights", [num_classes], TensorProto.FLOAT),
              ("bce_normalizer", [], TensorProto.FLOAT)]
    return _one_loss(forward, image_dims, inputs, trainable, "loss_binary_cross_entropy",
                     lambda b: losses.binary_cross_entropy(b, logits, "targets", "class_weights", "bce_normalizer"))


CTC_INPUTS = ("ctc_skip", "ctc_start", "ctc_end", "ctc_onehot", "ctc_normalizer")


def ocr_recognition(forward: onnx.ModelProto, image_dims: tuple[int, int, int], num_classes: int, steps: int,
                    logits: str, steps_first: bool, trainable: list[str] | None = None) -> TrainingGraph:
    """Training graph of a word recogniser: the CTC loss on the per-step class scores ``logits``
    ((N, K, T), or (N, T, K) when ``steps_first``; :func:`onnx_dl.ctc.ctc_loss`) + weight prior.

    Inputs per chunk: the image (N, C, H, W); ``ctc_skip``, ``ctc_start``, ``ctc_end`` (N, S) and
    ``ctc_onehot`` (N, S, K) from :func:`onnx_dl.ctc.label_tensors` (S = 2T + 1); ``ctc_normalizer``
    (the number of words of the step); ``weight_prior``.
    """
    positions = 2 * steps + 1
    inputs = [(CTC_INPUTS[0], ["N", positions], TensorProto.FLOAT), (CTC_INPUTS[1], ["N", positions], TensorProto.FLOAT),
              (CTC_INPUTS[2], ["N", positions], TensorProto.FLOAT),
              (CTC_INPUTS[3], ["N", positions, num_classes], TensorProto.FLOAT), (CTC_INPUTS[4], [], TensorProto.FLOAT)]

    def loss(b: GraphBuilder) -> str:
        scores = b.op("Transpose", [logits], "ctc_scores_nkt", perm=[0, 2, 1]) if steps_first else logits
        skip, start, end, onehot, normalizer = CTC_INPUTS
        return ctc.ctc_loss(b, scores, steps, onehot, skip, start, end, normalizer)

    return _one_loss(forward, image_dims, inputs, trainable, "loss_ctc", loss)


POSITIVE_NORMALIZER = "positive_normalizer"
HEAD_WEIGHTS = ("class_heads_weight", "bbox_heads_weight")


def detection(forward: onnx.ModelProto, image_dims: tuple[int, int, int], levels: list[int], class_logits: list[str],
              box_deltas: list[str], trainable: list[str] | None = None) -> TrainingGraph:
    """Training graph of a detector: per level a focal loss on the class logits and a Huber loss on the
    box deltas, + weight prior.

        loss_focal_level_<L> = class_heads_weight * sigmoid_focal(logits_L, y_L, w_L) / P
        loss_huber_level_<L> = bbox_heads_weight * huber(deltas_L, t_L, v_L) / P

    Inputs per chunk: the image (N, C, H, W); per level ``class_target_level_<L>`` and
    ``class_weight_level_<L>`` (N, A*K, H_L, W_L: 0/1 targets; anchor weight times alpha or
    1 - alpha), ``box_target_level_<L>`` and ``box_weight_level_<L>`` (N, A*4, H_L, W_L: encoded
    deltas; 1 at positive anchors); ``positive_normalizer`` P = the number of positive anchors of
    the whole step over all its chunks (at least 1), so the chunks' losses and gradients add up to
    those of the whole batch (RetinaNet normalises by the positives of its batch: the same with one
    chunk); ``class_heads_weight``, ``bbox_heads_weight``; ``weight_prior``.
    """
    model, b = _loss_graph(forward, image_dims)
    image = g.image_input(model).name
    shapes = g.tensor_shapes(g.with_input_shape(forward, [1, *image_dims]))
    inputs = [image]
    per_level: list[tuple[int, str, str, list[str]]] = []
    for level, logits, deltas in zip(levels, class_logits, box_deltas):
        names = [f"class_target_level_{level}", f"class_weight_level_{level}", f"box_target_level_{level}",
                 f"box_weight_level_{level}"]
        for name, source in zip(names, (logits, logits, deltas, deltas)):
            b.input(name, ["N", *shapes[source][1:]])
        inputs += names
        per_level.append((level, logits, deltas, names))
    for name in (POSITIVE_NORMALIZER, *HEAD_WEIGHTS):
        b.input(name, [])
    parts = {}
    for level, logits, deltas, (class_target, class_weight, box_target, box_weight) in per_level:
        focal = losses.sigmoid_focal(b, logits, class_target, class_weight, POSITIVE_NORMALIZER)
        huber = losses.huber(b, deltas, box_target, box_weight, POSITIVE_NORMALIZER)
        parts[f"loss_focal_level_{level}"] = b.op("Mul", [focal, HEAD_WEIGHTS[0]], f"focal_level_{level}")
        parts[f"loss_huber_level_{level}"] = b.op("Mul", [huber, HEAD_WEIGHTS[1]], f"huber_level_{level}")
    weights = trainable if trainable is not None else g.weight_names(forward)
    return _finish(model, b, parts, weights, [*inputs, POSITIVE_NORMALIZER, *HEAD_WEIGHTS], forward, image_dims)
