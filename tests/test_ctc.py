"""The CTC loss block (onnx_dl.ctc, issue 16): its value and gradient through the engine against a NumPy
reference written from the alpha-beta recursions and against torch.nn.functional.ctc_loss; the host-side
label tensors; best-path decoding."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_dl import ctc
from onnx_dl.engine.session import TrainingSession
from onnx_dl.onnx_builder import GraphBuilder, new_model
from onnx_dl.training_graph import TrainingGraph

RTOL = 1e-5


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=0, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=0, keepdims=True))


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return -np.inf if top == -np.inf else top + np.log(sum(np.exp(v - top) for v in values))


def reference(z: np.ndarray, word: list[int]) -> tuple[float, np.ndarray]:
    """-log p(word | z) of one sample's scores z (K, T) and its gradient, in float64, from Graves et al.:
    alpha (forward) and beta (backward) over the extended label l' = (blank, w_1, blank, ..., w_L, blank);
    d(-log p)/dz_k,t = y_t(k) - sum_{s: l'_s = k} alpha_t(s) beta_t(s) / (p y_t(k)) (alpha, beta including y_t)."""
    log_y = _log_softmax(z.astype(np.float64))
    classes, steps = z.shape
    extended = [0]
    for ch in word:
        extended += [ch, 0]
    size = len(extended)

    def allowed_skip(s: int) -> bool:
        return s >= 2 and extended[s] != 0 and extended[s] != extended[s - 2]

    alpha = np.full((steps, size), -np.inf)
    alpha[0, 0] = log_y[0, 0]
    if size > 1:
        alpha[0, 1] = log_y[extended[1], 0]
    for t in range(1, steps):
        for s in range(size):
            sources = [alpha[t - 1, s]] + ([alpha[t - 1, s - 1]] if s >= 1 else []) + (
                [alpha[t - 1, s - 2]] if allowed_skip(s) else [])
            alpha[t, s] = _logsumexp(sources) + log_y[extended[s], t]
    beta = np.full((steps, size), -np.inf)
    beta[-1, -1] = log_y[0, -1]
    if size > 1:
        beta[-1, -2] = log_y[extended[-2], -1]
    for t in range(steps - 2, -1, -1):
        for s in range(size):
            targets = [beta[t + 1, s]] + ([beta[t + 1, s + 1]] if s + 1 < size else []) + (
                [beta[t + 1, s + 2]] if s + 2 < size and allowed_skip(s + 2) else [])
            beta[t, s] = _logsumexp(targets) + log_y[extended[s], t]
    log_p = _logsumexp([alpha[-1, -1]] + ([alpha[-1, -2]] if size > 1 else []))
    posterior = np.zeros((classes, steps))
    for t in range(steps):
        for k in set(extended):
            terms = [alpha[t, s] + beta[t, s] - log_y[k, t] for s in range(size) if extended[s] == k]
            posterior[k, t] = np.exp(_logsumexp(terms) - log_p)
    return -log_p, np.exp(log_y) - posterior


def engine_ctc(z: np.ndarray, words: list[list[int]], max_length: int) -> tuple[float, np.ndarray]:
    """The loss of :func:`onnx_dl.ctc.ctc_loss` on scores ``z`` (N, K, T) (a trained parameter) and its gradient."""
    count, classes, steps = z.shape
    positions = 2 * max_length + 1
    graph = onnx.GraphProto(name="ctc_probe")
    b = GraphBuilder(graph)
    b.input("image", ["N", 1])  # scores = z * mean(image), image all ones: a batch axis for the feeds
    graph.initializer.append(numpy_helper.from_array(z, "z"))
    scores = b.op("Mul", ["z", b.op("ReduceMean", ["image"], keepdims=1)], "scores")
    for name in ("skip", "start", "end"):
        b.input(name, ["N", positions])
    b.input("onehot", ["N", positions, classes])
    b.input("normalizer", [])
    loss = ctc.ctc_loss(b, scores, steps, "onehot", "skip", "start", "end", "normalizer")
    graph.node.append(helper.make_node("Identity", [loss], ["total_loss"]))
    b.output("total_loss", [])
    tg = TrainingGraph(model=new_model(graph), inputs=["image", "skip", "start", "end", "onehot", "normalizer"],
                       losses=["total_loss"], trainable=["z"], batchnorms=[])
    session = TrainingSession(tg, "cpu", 1, True)
    tensors = ctc.label_tensors(words, classes, max_length)
    session.reset_grad()
    out = session.run([np.ones((count, 1), np.float32), tensors.skip, tensors.start, tensors.end, tensors.onehot,
                       np.array(float(count), np.float32)])
    return float(out["total_loss"]), session.gradient("z").copy()


# repeats (2, 2), (3, 3, 3), an empty word, one character, a word needing exactly T = 9 steps (5 + 4 repeats)
WORDS = [[1, 2, 2, 3], [3, 3, 3], [], [4], [1, 1, 1, 1, 1], [2, 4, 1, 3]]


def _scores(seed: int, scale: float, steps: int = 9, classes: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, (len(WORDS), classes, steps)).astype(np.float32)


@pytest.mark.parametrize("scale", [1.0, 4.0, 30.0])
def test_loss_and_gradient_match_the_numpy_reference(scale):
    """Mean over the words of -log p, and its gradient, also for peaked (scale 30) scores."""
    z = _scores(1, scale)
    loss, gradient = engine_ctc(z, WORDS, max_length=5)
    parts = [reference(z[n], w) for n, w in enumerate(WORDS)]
    expected = sum(p[0] for p in parts) / len(WORDS)
    assert np.isfinite(loss) and np.isfinite(gradient).all()
    assert loss == pytest.approx(expected, rel=RTOL)
    np.testing.assert_allclose(gradient, np.stack([p[1] for p in parts]) / len(WORDS), rtol=RTOL, atol=1e-7)


def test_loss_and_gradient_match_torch_with_padding_beyond_the_longest_word():
    """torch.nn.functional.ctc_loss(reduction='sum') / N, blank 0, with labels padded to 8 > the longest word."""
    torch = pytest.importorskip("torch")
    z = _scores(2, 3.0, steps=12, classes=6)
    loss, gradient = engine_ctc(z, WORDS, max_length=8)
    scores = torch.tensor(z.astype(np.float64), requires_grad=True)
    log_probs = torch.log_softmax(scores, dim=1).permute(2, 0, 1)  # (T, N, K)
    targets = torch.tensor([c for w in WORDS for c in w], dtype=torch.long)
    peer = torch.nn.functional.ctc_loss(log_probs, targets, torch.full((len(WORDS),), z.shape[2]),
                                        torch.tensor([len(w) for w in WORDS]), blank=0, reduction="sum") / len(WORDS)
    peer.backward()
    assert loss == pytest.approx(float(peer), rel=RTOL)
    np.testing.assert_allclose(gradient, scores.grad.numpy(), rtol=RTOL, atol=1e-7)


def test_label_tensors_of_a_word_with_a_repeat_and_of_an_empty_word():
    tensors = ctc.label_tensors([[2, 2, 1], []], num_classes=3, max_length=3)
    assert tensors.onehot.shape == (2, 7, 3)
    np.testing.assert_array_equal(tensors.onehot[0].argmax(axis=1), [0, 2, 0, 2, 0, 1, 0])
    np.testing.assert_array_equal(tensors.onehot[1].argmax(axis=1), [0] * 7)
    allowed = lambda row: [int(s) for s in np.nonzero(row == 0)[0]]  # noqa: E731
    assert allowed(tensors.skip[0]) == [5]  # 2 -> 2 needs the blank between them; 2 -> 1 may skip it
    assert allowed(tensors.start[0]) == [0, 1] and allowed(tensors.end[0]) == [5, 6]
    assert allowed(tensors.skip[1]) == [] and allowed(tensors.start[1]) == [0] and allowed(tensors.end[1]) == [0]
    assert tensors.skip.min() == ctc.NEG


@pytest.mark.parametrize("word, steps", [([], 0), ([1], 1), ([1, 2, 3], 3), ([1, 1], 3), ([1, 1, 1, 2, 2], 8)])
def test_required_steps_count_a_blank_between_equal_neighbours(word, steps):
    assert ctc.required_steps(word) == steps


def test_best_path_collapses_repeats_and_drops_blanks():
    best = [1, 1, 0, 1, 2, 2, 0, 0, 3]  # -> 1, 1, 2, 3 (first emitted at steps 0, 3, 4, 8)
    probabilities = np.full((4, len(best)), 0.1)
    probabilities[best, np.arange(len(best))] = 0.7
    assert ctc.best_path(probabilities) == ([1, 1, 2, 3], [0, 3, 4, 8])
    assert ctc.best_path_confidence(probabilities) == pytest.approx(0.7 ** len(best))
    assert ctc.best_path(np.eye(3)[[0, 0, 0]].T) == ([], [])
