"""Independent NumPy references, written from the formulas (float64), for the tests."""

from __future__ import annotations

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def weighted_cross_entropy(z: np.ndarray, y: np.ndarray, class_weights: np.ndarray,
                           normalizer: float | None = None) -> tuple[float, np.ndarray]:
    """L = sum_n w[y_n] (-log softmax(z_n)[y_n]) / sum_n w[y_n]; returns (L, dL/dz)."""
    w = class_weights[y]
    norm = w.sum() if normalizer is None else normalizer
    p = softmax(z)
    loss = float((w * -np.log(p[np.arange(len(y)), y])).sum() / norm)
    onehot = np.eye(z.shape[1])[y]
    return loss, (p - onehot) * w[:, None] / norm


def softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + exp(z)), stable for large |z|."""
    return np.logaddexp(0.0, z)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), stable for large |z|."""
    return np.exp(-np.logaddexp(0.0, -z))


def binary_cross_entropy(z: np.ndarray, y: np.ndarray, positive_weights: np.ndarray,
                         normalizer: float | None = None) -> tuple[float, np.ndarray]:
    """L = sum_{n,k} [w_k y (-log sigmoid(z)) + (1 - y) (-log(1 - sigmoid(z)))] / (N K); returns (L, dL/dz)."""
    norm = z.size if normalizer is None else normalizer
    w = positive_weights[None, :]
    loss = float((w * y * softplus(-z) + (1 - y) * softplus(z)).sum() / norm)
    p = sigmoid(z)
    return loss, (w * y * (p - 1) + (1 - y) * p) / norm


def weight_prior(alpha: float, weights: list[np.ndarray]) -> float:
    """alpha / 2 * sum of squares of ``weights``."""
    return alpha / 2.0 * sum(float((w.astype(np.float64) ** 2).sum()) for w in weights)


def linear_gradients(W: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, class_weights: np.ndarray,
                     alpha: float) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Losses and gradients of z = x W^T + b with weighted CE and the prior on W (not b)."""
    x = x.reshape(len(x), -1).astype(np.float64)
    z = x @ W.T + b
    ce, dz = weighted_cross_entropy(z, y, class_weights)
    prior = weight_prior(alpha, [W])
    losses = {"total_loss": ce + prior, "loss_cross_entropy": ce, "loss_weight_prior": prior}
    return losses, dz.T @ x + alpha * W, dz.sum(axis=0)


def sgd(w: np.ndarray, v: np.ndarray, g: np.ndarray, lr: float, momentum: float) -> tuple[np.ndarray, np.ndarray]:
    """HALCON SGD: v = momentum * v - lr * g ; w = w + v."""
    v = momentum * v - lr * g
    return w + v, v


def adam(w: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, t: int, lr: float, beta1: float,
         beta2: float, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kingma & Ba with bias correction, eps added to sqrt of the corrected second moment."""
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def batchnorm_train(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training-mode BN over (N, H, W): (output, batch mean, unbiased batch variance)."""
    x = x.astype(np.float64)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    n = x.size / x.shape[1]
    out = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
    return out * gamma[None, :, None, None] + beta[None, :, None, None], mean, var * n / (n - 1)


def batchnorm_eval(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                   eps: float) -> np.ndarray:
    """Inference-mode BN with running statistics."""
    out = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
    return out * gamma[None, :, None, None] + beta[None, :, None, None]
