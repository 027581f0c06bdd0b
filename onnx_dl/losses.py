"""Loss blocks: each appends the nodes of one formula to a graph and returns the loss tensor.

Only operators with gradient builders in ONNX Runtime 1.19 are used (no Softplus, Sum or
ReduceSumSquare). Every loss returns a float32 scalar (shape []).
"""

from __future__ import annotations

import numpy as np

from .onnx_builder import GraphBuilder


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
    """sum_k sum(t_k^2) over ``tensors``, one ReduceSum per tensor then a chain of Adds."""
    total = b.const(0.0, "zero")
    for name in tensors:
        square = b.op("Mul", [name, name], "sq")
        total = b.op("Add", [total, b.op("ReduceSum", [square], "sq_sum", keepdims=0)], "sq_total")
    return total


def weight_prior(b: GraphBuilder, weights: list[str], alpha: str) -> str:
    """L2 weight prior: L = alpha / 2 * sum_k w_k^2 over ``weights`` (biases excluded by the caller)."""
    half = b.op("Mul", [alpha, b.const(0.5, "half")], "half_alpha")
    return b.op("Mul", [sum_of_squares(b, weights), half], "prior")


def pixel_cross_entropy(b: GraphBuilder, logits: str, labels: str, pixel_weights: str, normalizer: str) -> str:
    """Weighted per-pixel multinomial logistic loss of ``logits`` (N, K, H, W).

        L = sum_{n,i,j} w[n,i,j] * (-log softmax(z[n,:,i,j])[y[n,i,j]]) / normalizer

    ``labels`` (N, H, W) int64 class indices, ``pixel_weights`` (N, H, W) float (0 for ignored
    pixels), ``normalizer`` the sum of all pixel weights of the step (computed on the host). The
    sum runs per image first and then over the batch, which keeps float32 rounding small.
    """
    per_pixel = b.op("SoftmaxCrossEntropyLoss", [logits, labels], "pixel_ce", outputs=2, reduction="none")[0]
    weighted = b.op("Mul", [per_pixel, pixel_weights], "pixel_ce_weighted")
    per_image = b.op("ReduceSum", [weighted, b.const(np.array([1, 2], np.int64), "hw_axes")], "image_ce", keepdims=0)
    return b.op("Div", [b.op("ReduceSum", [per_image], "batch_ce", keepdims=0), normalizer], "ce")
