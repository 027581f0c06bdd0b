"""Loss blocks: each appends the nodes of one formula to a graph and returns the loss tensor.

Losses the engine differentiates use only operators with gradient builders in ONNX Runtime 1.19
(no Softplus, Sum or ReduceSumSquare); the weight prior is not differentiated by the engine
(:func:`onnx_dl.training_graph.add_prior_gradients`). Every loss returns a float32 scalar (shape []).
"""

from __future__ import annotations

import numpy as np

from .onnx_builder import OPSET, GraphBuilder


def cross_entropy(b: GraphBuilder, logits: str, labels: str, class_weights: str, normalizer: str) -> str:
    """Weighted multinomial logistic loss of class scores ``logits`` (N, K).

        L = sum_n w[y_n] * (-log softmax(z_n)[y_n]) / normalizer

    ``labels`` (N,) int64 class indices, ``class_weights`` (K,) float, ``normalizer`` a scalar:
    sum_n w[y_n] over all samples of the step (computed on the host), so the losses of the chunks
    of one step add up to the weighted mean over the whole step.
    """
    weighted_sum = b.op("SoftmaxCrossEntropyLoss", [logits, labels, class_weights], "ce_sum", outputs=2,
                        reduction="sum")[0]  # the 2nd output (log-probabilities) must exist for the gradient
    return b.op("Div", [weighted_sum, normalizer], "ce")


def sum_of_squares(b: GraphBuilder, tensors: list[str]) -> str:
    """sum_k sum(t_k^2) over ``tensors``, one ReduceSumSquare per tensor (no gradient) then a chain of Adds."""
    total = b.const(0.0, "zero")
    for name in tensors:
        total = b.op("Add", [total, b.op("ReduceSumSquare", [name], "sq_sum", keepdims=0)], "sq_total")
    return total


def weight_prior(b: GraphBuilder, weights: list[str], alpha: str) -> str:
    """L2 weight prior: L = alpha / 2 * sum_k w_k^2 over ``weights`` (biases excluded by the caller)."""
    half = b.op("Mul", [alpha, b.const(0.5, "half")], "half_alpha")
    return b.op("Mul", [sum_of_squares(b, weights), half], "prior")


def pixel_cross_entropy(b: GraphBuilder, logits: str, labels: str, pixel_weights: str, normalizer: str,
                        opset: int = OPSET) -> str:
    """Weighted per-pixel multinomial logistic loss of ``logits`` (N, K, H, W).

        L = sum_{n,i,j} w[n,i,j] * (-log softmax(z[n,:,i,j])[y[n,i,j]]) / normalizer
        -log softmax(z)[y] = logsumexp_k(z_k) - z_y

    ``labels`` (N, H, W) int64 class indices, ``pixel_weights`` (N, H, W) float (0 for ignored
    pixels), ``normalizer`` the sum of all pixel weights of the step (computed on the host). The
    sum runs per image first and then over the batch, which keeps float32 rounding small. ``opset``:
    the graph's (ReduceLogSumExp takes its axes as an attribute before opset 18).

    Spelled out as ReduceLogSumExp over the classes minus the label's logit (GatherElements): the
    engine's SoftmaxCrossEntropyLoss on (N, K, H, W) runs single-threaded (bundled segmentation,
    256 x 256, batch 4, two threads: the loss and its gradient about 15 -> 6 ms per step).
    """
    axis = b.const(np.array([1], np.int64), "class_axis")
    # keepdims=1: the engine's gradient of ReduceLogSumExp with keepdims=0 writes an opset-12 Unsqueeze
    if opset >= 18:
        lse = b.op("ReduceLogSumExp", [logits, axis], "pixel_lse", keepdims=1)
    else:
        lse = b.op("ReduceLogSumExp", [logits], "pixel_lse", keepdims=1, axes=[1])
    label_logit = b.op("GatherElements", [logits, b.op("Unsqueeze", [labels, axis], "pixel_labels")], "label_logit", axis=1)
    per_pixel = b.op("Squeeze", [b.op("Sub", [lse, label_logit], "pixel_nll"), axis], "pixel_ce")
    weighted = b.op("Mul", [per_pixel, pixel_weights], "pixel_ce_weighted")
    per_image = b.op("ReduceSum", [weighted, b.const(np.array([1, 2], np.int64), "hw_axes")], "image_ce", keepdims=0)
    return b.op("Div", [b.op("ReduceSum", [per_image], "batch_ce", keepdims=0), normalizer], "ce")


def _sum_per_image(b: GraphBuilder, tensor: str, hint: str) -> str:
    """sum over everything of an (N, C, H, W) tensor: per image over (C, H, W) first, then over the batch
    (one long float32 sum would lose the many small terms)."""
    per_image = b.op("ReduceSum", [tensor, b.const(np.array([1, 2, 3], np.int64), "chw_axes")], f"{hint}_image",
                     keepdims=0)
    return b.op("ReduceSum", [per_image], f"{hint}_batch", keepdims=0)


def _log_sigmoid(b: GraphBuilder, x: str, magnitude: str, hint: str) -> str:
    """log sigmoid(x) = -relu(-x) - log(1 + exp(-|x|)), finite for every finite x."""
    tail = b.op("Log", [b.op("Add", [b.const(1.0, "one"), b.op("Exp", [b.op("Neg", [magnitude])])])], f"{hint}_tail")
    return b.op("Sub", [b.op("Neg", [b.op("Relu", [b.op("Neg", [x])])]), tail], hint)


def sigmoid_focal(b: GraphBuilder, logits: str, targets: str, weights: str, normalizer: str,
                  gamma: float = 2.0) -> str:
    """Sigmoid focal loss (Lin et al., RetinaNet) of ``logits`` (N, C, H, W) against 0/1 ``targets``.

        p = sigmoid(x)
        FL = w * [ y * (1 - p)^gamma * (-log p) + (1 - y) * p^gamma * (-log(1 - p)) ]
        L = sum FL / normalizer

    ``weights`` (same shape) carries everything else per element: the anchor weight (0 for ignored
    anchors) times alpha_c for y = 1 and 1 - alpha_c for y = 0, folded in on the host so that a
    new alpha needs no new graph. ``normalizer`` is a scalar (a detector feeds the running average of
    positive anchors per step, see :mod:`onnx_dl.tasks.detection`).
    log p = -relu(-x) - log(1 + exp(-|x|)) and log(1 - p) = -relu(x) - log(1 + exp(-|x|)) stay
    finite for any finite x. (At exactly x = 0 the engine's gradients of relu and |x| are 0, so the
    derivative there reads 0 instead of the limit; a float32 logit of exactly 0.0 does not occur in
    practice.)
    """
    magnitude = b.op("Abs", [logits], "focal_abs")
    log_p = _log_sigmoid(b, logits, magnitude, "focal_log_p")
    log_not_p = _log_sigmoid(b, b.op("Neg", [logits], "focal_neg_x"), magnitude, "focal_log_not_p")
    p = b.op("Sigmoid", [logits], "focal_p")
    exponent = b.const(float(gamma), "focal_gamma")
    one = b.const(1.0, "one")
    positive = b.op("Mul", [b.op("Pow", [b.op("Sub", [one, p]), exponent]), log_p], "focal_positive")
    negative = b.op("Mul", [b.op("Pow", [p, exponent]), log_not_p], "focal_negative")
    mixed = b.op("Add", [b.op("Mul", [targets, positive]), b.op("Mul", [b.op("Sub", [one, targets]), negative])],
                 "focal_mixed")
    weighted = b.op("Mul", [b.op("Neg", [mixed]), weights], "focal_weighted")
    return b.op("Div", [_sum_per_image(b, weighted, "focal_sum"), normalizer], "focal")


def binary_cross_entropy(b: GraphBuilder, logits: str, targets: str, positive_weights: str, normalizer: str) -> str:
    """Per-class sigmoid binary cross-entropy of ``logits`` (N, K) against 0/1 ``targets`` (N, K).

        l[n,k] = w[k] * y[n,k] * (-log sigmoid(x[n,k])) + (1 - y[n,k]) * (-log(1 - sigmoid(x[n,k])))
        L = sum_{n,k} l[n,k] / normalizer

    ``positive_weights`` (K,) weighs the present labels of each class (``class_weights``, 1.0 each by
    default), as ``pos_weight`` of torch's ``binary_cross_entropy_with_logits``; ``normalizer`` is N * K
    over all samples of the step, so the chunks' losses add up to the mean over the whole step. Written
    from the logits: -log sigmoid(x) = relu(-x) + log(1 + exp(-|x|)) and -log(1 - sigmoid(x)) =
    relu(x) + log(1 + exp(-|x|)), finite for every finite x.
    """
    magnitude = b.op("Abs", [logits], "bce_abs")
    neg_log_p = b.op("Neg", [_log_sigmoid(b, logits, magnitude, "bce_log_p")], "bce_neg_log_p")
    neg_log_not_p = b.op("Neg", [_log_sigmoid(b, b.op("Neg", [logits], "bce_neg_x"), magnitude, "bce_log_not_p")],
                         "bce_neg_log_not_p")
    one = b.const(1.0, "one")
    present = b.op("Mul", [b.op("Mul", [targets, neg_log_p], "bce_present"), positive_weights], "bce_present_w")
    absent = b.op("Mul", [b.op("Sub", [one, targets], "bce_not_y"), neg_log_not_p], "bce_absent")
    per_image = b.op("ReduceSum", [b.op("Add", [present, absent], "bce_terms"), b.const(np.array([1], np.int64),
                                                                                        "class_axis")],
                     "bce_image", keepdims=0)
    return b.op("Div", [b.op("ReduceSum", [per_image], "bce_batch", keepdims=0), normalizer], "bce")


def huber(b: GraphBuilder, predictions: str, targets: str, weights: str, normalizer: str, beta: float = 0.11) -> str:
    """Huber (smooth-L1) loss of ``predictions`` (N, C, H, W) against ``targets``, divided by beta:

        d = prediction - target, a = |d|
        h(d) = 0.5 * a^2 / beta     if a < beta
             = a - 0.5 * beta       otherwise
        L = sum w * h(d) / normalizer

    computed without branches as m = min(a, beta) = beta - relu(beta - a),
    h = 0.5 * m^2 / beta + (a - m). ``weights`` is 1 for the coordinates of positive anchors and 0
    elsewhere; ``normalizer`` is a scalar (as for :func:`sigmoid_focal`).
    """
    magnitude = b.op("Abs", [b.op("Sub", [predictions, targets])], "huber_abs")
    transition = b.const(float(beta), "huber_beta")
    clipped = b.op("Sub", [transition, b.op("Relu", [b.op("Sub", [transition, magnitude])])], "huber_m")
    quadratic = b.op("Mul", [b.op("Mul", [clipped, clipped]), b.const(0.5 / beta, "huber_half_over_beta")],
                     "huber_quadratic")
    value = b.op("Add", [quadratic, b.op("Sub", [magnitude, clipped])], "huber_value")
    weighted = b.op("Mul", [value, weights], "huber_weighted")
    return b.op("Div", [_sum_per_image(b, weighted, "huber_sum"), normalizer], "huber")
