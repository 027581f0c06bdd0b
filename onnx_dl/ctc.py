"""Connectionist temporal classification (CTC, Graves et al. 2006): the loss as ONNX nodes the engine can
differentiate, the host-side label tensors it is fed, and best-path decoding.

Class 0 is the blank; class k >= 1 is character k - 1 of the alphabet. A word of L characters is
extended to S = 2L + 1 positions (blank, c_1, blank, c_2, ..., c_L, blank). The engine has no CTC
operator and no gradient for Loop or Scan, so the forward recursion over the fixed number of time steps
T is unrolled in log space::

    alpha_0(s)     = log y_0(l'_s)                          for s in {0, 1}, -inf elsewhere
    alpha_t(s)     = logsumexp(alpha_{t-1}(s), alpha_{t-1}(s-1), alpha_{t-1}(s-2) if l'_s != blank
                               and l'_s != l'_{s-2}) + log y_t(l'_s)
    -log p(l | x)  = -logsumexp(alpha_{T-1}(S-1), alpha_{T-1}(S-2))

with y_t = softmax of the scores at step t. All label-dependent structure (which positions hold which
class, which skips are allowed, where a word starts and ends) is fed as tensors computed on the host
(:func:`label_tensors`), so one static graph serves every batch. Words are padded to ``max_length``
positions; -inf is the finite :data:`NEG` (-1e30), which stays finite under the additions of the
recursion and contributes exactly 0 to every logsumexp and its gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .onnx_builder import GraphBuilder

BLANK = 0
NEG = -1e30  # log(0) as a finite float32: exp(NEG - m) is exactly 0, sums of a few NEGs stay finite


def required_steps(labels: list[int]) -> int:
    """The fewest time steps that can emit ``labels``: one per character plus one blank between each
    pair of equal neighbours (CTC collapses repeats that no blank separates)."""
    return len(labels) + sum(1 for a, b in zip(labels, labels[1:]) if a == b)


@dataclass
class LabelTensors:
    """What the loss graph is fed per batch (S = 2 * max_length + 1 positions).

    ``onehot`` (N, S, K): 1 at (s, class of position s), so its MatMul with the (N, K, T) log-probabilities
    gives log y_t(l'_s) (N, S, T); ``skip`` (N, S): 0 where the transition s-2 -> s is allowed, NEG elsewhere;
    ``start`` (N, S): 0 at the positions a path may start (0, and 1 for a non-empty word);
    ``end`` (N, S): 0 at the positions a path may end (2L and 2L-1 for a non-empty word).
    """

    onehot: np.ndarray
    skip: np.ndarray
    start: np.ndarray
    end: np.ndarray


def label_tensors(words: list[list[int]], num_classes: int, max_length: int) -> LabelTensors:
    """The feeds of :func:`ctc_loss` for ``words`` (class indices 1..K-1, each at most ``max_length`` long)."""
    positions = 2 * max_length + 1
    count = len(words)
    onehot = np.zeros((count, positions, num_classes), np.float32)
    skip = np.full((count, positions), NEG, np.float32)
    start = np.full((count, positions), NEG, np.float32)
    end = np.full((count, positions), NEG, np.float32)
    for n, word in enumerate(words):
        extended = np.full(positions, BLANK, np.int64)
        extended[1:2 * len(word):2] = word
        onehot[n, np.arange(positions), extended] = 1.0
        for s in range(3, 2 * len(word), 2):  # odd positions hold characters
            if extended[s] != extended[s - 2]:
                skip[n, s] = 0.0
        start[n, :min(2, 2 * len(word) + 1)] = 0.0
        end[n, max(0, 2 * len(word) - 1):2 * len(word) + 1] = 0.0
    return LabelTensors(onehot, skip, start, end)


def _logsumexp(b: GraphBuilder, terms: list[str], hint: str) -> str:
    """logsumexp over ``terms`` (equal shapes), element-wise: m + log(sum_i exp(x_i - m)) with m the
    element-wise maximum, finite for any finite inputs (NEG included). (The engine's gradient of
    ReduceLogSumExp is broken at opset 13 and later: it emits the old form of Unsqueeze.)"""
    top = b.op("Max", terms, f"{hint}_max")
    total = None
    for term in terms:
        part = b.op("Exp", [b.op("Sub", [term, top], f"{hint}_centred")], f"{hint}_exp")
        total = part if total is None else b.op("Add", [total, part], f"{hint}_sum")
    return b.op("Add", [top, b.op("Log", [total], f"{hint}_log")], hint)


def _shifter(b: GraphBuilder, positions: int) -> Callable[[str, int, str], str]:
    """A function moving an (N, S) tensor ``by`` positions to the right along axis 1, NEG in front (Pad,
    then the first S kept); its constants are made once.

    (Not a Concat with a NEG block: the engine merges equal NEG blocks and then fails on the duplicate
    gradient name of the merged input.)"""
    pads = {by: b.const(np.array([0, by, 0, 0], np.int64), f"ctc_pads_{by}") for by in (1, 2)}
    neg = b.const(np.float32(NEG), "ctc_neg")
    window = [b.const(np.array([0], np.int64), "ctc_zero"), b.const(np.array([positions], np.int64), "ctc_positions"),
              b.const(np.array([1], np.int64), "ctc_axis1")]

    def shifted(alpha: str, by: int, hint: str) -> str:
        padded = b.op("Pad", [alpha, pads[by], neg], f"{hint}_padded", mode="constant")
        return b.op("Slice", [padded, *window], hint)

    return shifted


def ctc_loss(b: GraphBuilder, logits: str, steps: int, onehot: str, skip: str, start: str, end: str,
             normalizer: str) -> str:
    """CTC negative log-likelihood of class scores ``logits`` (N, K, T), summed over the words and divided
    by ``normalizer`` (the number of words of the whole step: the mean per word, as torch's
    ``ctc_loss(reduction='sum') / N``; no division by the word length).

        L = sum_n -log p(word_n | x_n) / normalizer,  p from the recursion of this module's docstring

    ``onehot``, ``skip``, ``start``, ``end``: the tensors of :func:`label_tensors`; ``steps`` = T, fixed by
    the image width, unrolled into the graph.
    """
    log_probs = b.op("LogSoftmax", [logits], "ctc_log_probs", axis=1)
    emissions = b.op("MatMul", [onehot, log_probs], "ctc_emissions")  # (N, S, T): log y_t(l'_s)
    shifted = _shifter(b, _declared_positions(b, skip))  # static: S = 2 * max_length + 1
    alpha = b.op("Add", [_emission(b, emissions, 0), start], "ctc_alpha_0")
    for t in range(1, steps):
        from_left = shifted(alpha, 1, f"ctc_from_left_{t}")
        skipping = b.op("Add", [shifted(alpha, 2, f"ctc_skip_src_{t}"), skip], f"ctc_from_skip_{t}")
        merged = _logsumexp(b, [alpha, from_left, skipping], f"ctc_merge_{t}")
        alpha = b.op("Add", [merged, _emission(b, emissions, t)], f"ctc_alpha_{t}")
    final = _reduce_logsumexp(b, b.op("Add", [alpha, end], "ctc_final_terms"), "ctc_log_likelihood")
    total = b.op("Neg", [b.op("ReduceSum", [final], "ctc_sum", keepdims=0)], "ctc_nll_sum")
    return b.op("Div", [total, normalizer], "ctc")


def _reduce_logsumexp(b: GraphBuilder, x: str, hint: str) -> str:
    """logsumexp of ``x`` (N, S) over axis 1: m + log(sum_s exp(x_s - m)), m the row maximum (taken with
    ArgMax and GatherElements: the engine has no gradient for ReduceMax)."""
    axis = b.const(np.array([1], np.int64), "ctc_axis1")
    top = b.op("GatherElements", [x, b.op("ArgMax", [x], f"{hint}_argmax", axis=1, keepdims=1)], f"{hint}_max",
               axis=1)
    summed = b.op("ReduceSum", [b.op("Exp", [b.op("Sub", [x, top], f"{hint}_centred")], f"{hint}_exp"), axis],
                  f"{hint}_sum", keepdims=1)
    return b.op("Squeeze", [b.op("Add", [top, b.op("Log", [summed], f"{hint}_log")], f"{hint}_kept"), axis], hint)


def _emission(b: GraphBuilder, emissions: str, t: int) -> str:
    """log y_t(l'_s) of step ``t``: (N, S)."""
    return b.op("Gather", [emissions, b.const(np.array(t, np.int64), f"ctc_t{t}")], f"ctc_emission_{t}", axis=2)


def _declared_positions(b: GraphBuilder, tensor: str) -> int:
    """S of the graph input ``tensor`` (N, S), as declared."""
    found = next(i for i in b.graph.input if i.name == tensor)
    return int(found.type.tensor_type.shape.dim[1].dim_value)


def best_path(probabilities: np.ndarray) -> tuple[list[int], list[int]]:
    """Best-path decoding of per-step class probabilities (K, T): the most likely class per step, repeats
    collapsed, blanks dropped. Returns the decoded classes and, for each, the step it was first emitted
    at (the step of its candidates)."""
    best = np.argmax(probabilities, axis=0)
    classes, steps = [], []
    previous = BLANK
    for t, k in enumerate(best.tolist()):
        if k != BLANK and k != previous:
            classes.append(k)
            steps.append(t)
        previous = k
    return classes, steps


def best_path_confidence(probabilities: np.ndarray) -> float:
    """The probability of the best path itself: prod_t max_k y_t(k) (a lower bound of the decoded word's
    probability, which sums over every path that collapses to it)."""
    return float(np.exp(np.log(np.maximum(probabilities.max(axis=0), 1e-30)).sum()))
