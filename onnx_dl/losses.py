"""Loss blocks: each appends the nodes of one formula to a graph and returns the loss tensor.

Only operators with gradient builders in ONNX Runtime 1.19 are used (no Softplus, Sum or
ReduceSumSquare). Every loss returns a float32 scalar (shape []).
"""

from __future__ import annotations

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
