"""Batch norm: batch statistics in training, running statistics with the node's momentum, used by apply."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import onnx_dl as dl
from onnx import helper

from conftest import assert_unchanged, bn_network, image_samples, load, snapshot, weights
from reference import batchnorm_eval, batchnorm_train, softmax, weighted_cross_entropy


def _images(samples):
    return np.stack([s["image"].transpose(2, 0, 1) for s in samples]).astype(np.float64)


@pytest.mark.parametrize("training_mode", [False, True])
def test_running_statistics_follow_reference(tmp_path, training_mode):
    """Loss from batch statistics; running mean/var = 0.9 * old + 0.1 * batch (unbiased), per chunk."""
    net = bn_network(training_mode=training_mode)
    model = load(tmp_path, net, batch_size=4, batch_size_multiplier=2, learning_rate=0.01)
    start = weights(model)
    mean, var = start["bn.mean"].astype(np.float64), start["bn.var"].astype(np.float64)
    samples = image_samples(8, [0, 1, 2], seed=4, scale=3.0)
    x = _images(samples)
    normed, _, _ = batchnorm_train(x[:4], start["bn.scale"], start["bn.bias"], 1e-5)
    logits = normed.mean(axis=(2, 3)) @ start["fc.weight"].T.astype(np.float64) + start["fc.bias"]
    first_chunk_ce, _ = weighted_cross_entropy(logits, np.array([0, 1, 2, 0]), np.ones(3), normalizer=8.0)
    result = dl.train_dl_model_batch(model, samples)
    normed2, _, _ = batchnorm_train(x[4:], start["bn.scale"], start["bn.bias"], 1e-5)
    logits2 = normed2.mean(axis=(2, 3)) @ start["fc.weight"].T.astype(np.float64) + start["fc.bias"]
    second_chunk_ce, _ = weighted_cross_entropy(logits2, np.array([1, 2, 0, 1]), np.ones(3), normalizer=8.0)
    assert result["loss_cross_entropy"] == pytest.approx(first_chunk_ce + second_chunk_ce, rel=1e-5)
    for chunk in (x[:4], x[4:]):
        _, batch_mean, batch_var = batchnorm_train(chunk, start["bn.scale"], start["bn.bias"], 1e-5)
        mean = 0.9 * mean + 0.1 * batch_mean
        var = 0.9 * var + 0.1 * batch_var
    after = weights(model)
    np.testing.assert_allclose(after["bn.mean"], mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(after["bn.var"], var, rtol=1e-5, atol=1e-7)


def test_apply_and_written_file_use_running_statistics(tmp_path):
    model = load(tmp_path, bn_network(), batch_size=4, learning_rate=0.05)
    for seed in range(3):
        dl.train_dl_model_batch(model, image_samples(4, [0, 1, 2], seed=seed, scale=2.0))
    w = weights(model)
    test = image_samples(5, [0, 1, 2], seed=99, scale=2.0)
    x = _images(test)
    normed = batchnorm_eval(x, w["bn.scale"], w["bn.bias"], w["bn.mean"], w["bn.var"], 1e-5)
    expected = softmax(normed.mean(axis=(2, 3)) @ w["fc.weight"].T + w["fc.bias"])
    results = dl.apply_dl_model(model, test)
    for row, result in zip(expected, results):
        got = dict(zip(result["classification_class_ids"], result["classification_confidences"]))
        np.testing.assert_allclose([got[i] for i in range(3)], row, rtol=1e-5)
    path = tmp_path / "bn.onnx"
    dl.write_dl_model(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    plain = session.run(None, {"image": x.astype(np.float32)})[0]
    np.testing.assert_allclose(plain, expected, rtol=1e-5)


def test_batch_of_one_value_per_channel_is_refused(tmp_path):
    """A BN layer seeing one value per channel cannot normalise: clear error, nothing changed."""
    net = bn_network()
    net.graph.node.insert(0, helper.make_node("GlobalAveragePool", ["image"], ["image_pooled"]))
    net.graph.node[1].input[0] = "image_pooled"
    model = load(tmp_path, net, batch_size=1)
    before = snapshot(model)
    with pytest.raises(dl.DLParamError, match="one value per channel"):
        dl.train_dl_model_batch(model, image_samples(1, [0]))
    assert_unchanged(before, model)
