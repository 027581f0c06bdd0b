"""Segmentation: per-pixel weighted cross-entropy, ignore ids, weight images, results, helpers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_dl as dl
from conftest import (CHANNELS, SIZE, assert_unchanged, conv_segmentation_network, load_segmentation,
                      segmentation_samples, snapshot, weights)
from onnx_dl.segmentation import calculate_class_weights, gen_weight_images
from reference import sgd, softmax


def _reference(model, samples, class_weights, ignore, alpha):
    """Losses and gradients of the 1x1 conv with weighted per-pixel CE (pixels as rows)."""
    w = weights(model)
    W, b = w["head.weight"][:, :, 0, 0].astype(np.float64), w["head.bias"].astype(np.float64)
    x = np.concatenate([s["image"].reshape(-1, CHANNELS) for s in samples]).astype(np.float64)
    ids = np.concatenate([s["segmentation_image"].reshape(-1) for s in samples]).astype(int)
    pixel_w = np.concatenate([s["weight_image"].reshape(-1) if "weight_image" in s else
                              np.array([class_weights[i] if i not in ignore else 0.0 for i in s["segmentation_image"].reshape(-1)])
                              for s in samples]).astype(np.float64)
    pixel_w[np.isin(ids, ignore)] = 0.0
    y = np.where(np.isin(ids, ignore), 0, ids)
    z = x @ W.T + b
    p = softmax(z)
    ce = float((pixel_w * -np.log(p[np.arange(len(y)), y])).sum() / pixel_w.sum())
    dz = (p - np.eye(W.shape[0])[y]) * pixel_w[:, None] / pixel_w.sum()
    prior = alpha / 2 * float((W**2).sum())
    return {"loss_cross_entropy": ce, "loss_weight_prior": prior, "total_loss": ce + prior}, dz.T @ x + alpha * W, dz.sum(0), W, b


@pytest.mark.parametrize("use_weight_images", [False, True])
def test_loss_and_sgd_trajectory_match_reference(tmp_path, use_weight_images):
    class_weights = [0.5, 2.0, 1.0]
    model = load_segmentation(tmp_path, batch_size=2, batch_size_multiplier=2, class_ids=[0, 1, 2],
                              ignore_class_ids=[255], class_weights=class_weights, weight_prior=0.01,
                              learning_rate=0.05)
    W, b = None, None
    vW = vb = 0.0
    for step in range(4):
        samples = segmentation_samples(4, [0, 1, 2, 255], seed=step)
        if use_weight_images:
            rng = np.random.default_rng(100 + step)
            for s in samples:
                s["weight_image"] = rng.uniform(0, 3, (SIZE, SIZE)).astype(np.float32)
        expected, dW, db, W0, b0 = _reference(model, samples, dict(enumerate(class_weights)), [255], 0.01)
        result = dl.train_dl_model_batch(model, samples)
        for key, value in expected.items():
            assert result[key] == pytest.approx(value, rel=1e-5)
        if W is None:
            W, b = W0, b0
        W, vW = sgd(W, vW, dW, 0.05, 0.9)
        b, vb = sgd(b, vb, db, 0.05, 0.9)
        got = weights(model)
        np.testing.assert_allclose(got["head.weight"][:, :, 0, 0], W, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["head.bias"], b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
def test_loss_and_gradient_stay_exact_for_logits_far_beyond_exp_range(tmp_path, opset):
    """Logits hundreds apart (exp overflows float32 past 88): the loss, spelled out as logsumexp minus the
    label's logit, and its gradient still match the float64 reference, at opsets before and after
    ReduceLogSumExp took its axes as an input (18)."""
    network = conv_segmentation_network()
    network.opset_import[0].version = opset
    onnx.save(network, tmp_path / "seg.onnx")
    model = dl.read_dl_model(tmp_path / "seg.onnx", type="segmentation")
    for name, value in {"image_dimensions": [SIZE, SIZE, CHANNELS], "batch_size": 2, "class_ids": [0, 1, 2],
                        "learning_rate": 0.01, "momentum": 0.0}.items():
        dl.set_dl_model_param(model, name, value)
    samples = segmentation_samples(2, [0, 1, 2], seed=5)
    for s in samples:
        s["image"] = s["image"] * np.float32(400.0)
    expected, dW, db, W, b = _reference(model, samples, {0: 1.0, 1: 1.0, 2: 1.0}, [], 0.0)
    z = np.concatenate([s["image"].reshape(-1, CHANNELS) for s in samples]) @ W.T + b
    assert np.ptp(z, axis=1).max() > 200
    result = dl.train_dl_model_batch(model, samples)
    assert np.isfinite(result["loss_cross_entropy"])
    assert result["loss_cross_entropy"] == pytest.approx(expected["loss_cross_entropy"], rel=1e-5)
    got = weights(model)
    np.testing.assert_allclose(got["head.weight"][:, :, 0, 0], W - 0.01 * dW, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["head.bias"], b - 0.01 * db, rtol=1e-5, atol=1e-6)


def test_all_ignored_step_gives_zero_loss_and_no_update(tmp_path):
    model = load_segmentation(tmp_path, batch_size=2, class_ids=[0, 1, 2], ignore_class_ids=[9], weight_prior=0.1)
    dl.train_dl_model_batch(model, segmentation_samples(2, [0, 1, 2], seed=1))
    before = snapshot(model)
    result = dl.train_dl_model_batch(model, segmentation_samples(2, [9], seed=2))
    assert result["loss_cross_entropy"] == 0.0 and np.isfinite(result["total_loss"])
    assert_unchanged(before, model)


def _bad(change):
    samples = segmentation_samples(2, [0, 1, 2], seed=3)
    samples[1] = {**samples[1], **change}
    return samples


@pytest.mark.parametrize("change, message", [
    ({"segmentation_image": np.zeros((SIZE, SIZE + 1), np.uint8)}, r"sample 1, key 'segmentation_image': expected shape \(4, 4\)"),
    ({"segmentation_image": np.full((SIZE, SIZE), 7, np.uint8)}, r"sample 1, key 'segmentation_image': expected class ids in \[0, 1, 2\] or ignored ids \[255\], got \[7\]"),
    ({"segmentation_image": np.full((SIZE, SIZE), -1, np.int32)}, r"got \[-1\]"),
    ({"segmentation_image": np.full((SIZE, SIZE), 0.5, np.float32)}, "integer class ids"),
    ({"segmentation_image": "mask.png"}, r"sample 1, key 'segmentation_image': expected a numeric NumPy array"),
    ({"weight_image": np.full((SIZE, SIZE), -1.0, np.float32)}, r"sample 1, key 'weight_image': expected finite weights >= 0"),
    ({"weight_image": np.full((SIZE, SIZE), np.nan, np.float32)}, r"sample 1, key 'weight_image': expected finite weights >= 0"),
    ({"weight_image": np.ones((2, 2), np.float32)}, r"sample 1, key 'weight_image': expected shape \(4, 4\)"),
    ({"image": np.zeros((SIZE + 4, SIZE, CHANNELS), np.float32)}, r"sample 1, key 'image': expected shape \(4, 4, 2\)"),
])
def test_bad_masks_and_weights_are_refused(tmp_path, change, message):
    model = load_segmentation(tmp_path, batch_size=2, class_ids=[0, 1, 2], ignore_class_ids=[255])
    dl.train_dl_model_batch(model, segmentation_samples(2, [0, 1, 2]))
    before = snapshot(model)
    with pytest.raises(dl.DLSampleError, match=message):
        dl.train_dl_model_batch(model, _bad(change))
    assert_unchanged(before, model)


def test_ignore_ids_must_not_be_class_ids(tmp_path):
    model = load_segmentation(tmp_path)
    with pytest.raises(dl.DLParamError, match="not class_ids"):
        dl.set_dl_model_param(model, "ignore_class_ids", [1])


def test_results_written_model_and_class_change(tmp_path):
    model = load_segmentation(tmp_path, batch_size=2, class_ids=[3, 5, 9])
    samples = segmentation_samples(2, [3, 5, 9])
    for _ in range(3):
        dl.train_dl_model_batch(model, samples)
    results = dl.apply_dl_model(model, samples)
    assert set(results[0]) == {"segmentation_image", "segmentation_confidence"}
    assert results[0]["segmentation_image"].shape == (SIZE, SIZE)
    assert set(np.unique(results[0]["segmentation_image"])) <= {3, 5, 9}
    assert np.all((results[0]["segmentation_confidence"] > 1 / 3 - 1e-6) & (results[0]["segmentation_confidence"] <= 1))
    path = tmp_path / "seg.onnx"
    dl.write_dl_model(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"image": np.stack([s["image"].transpose(2, 0, 1) for s in samples])})[0]
    for n, result in enumerate(results):
        assert np.array_equal(np.array([3, 5, 9])[probabilities[n].argmax(0)], result["segmentation_image"])
        np.testing.assert_allclose(probabilities[n].max(0), result["segmentation_confidence"], rtol=1e-6)
    again = dl.read_dl_model(path)
    assert dl.get_dl_model_param(again, "type") == "segmentation"
    dl.set_dl_model_param(again, "class_ids", [0, 1, 2, 3, 4])
    assert weights(again)["head.weight"].shape == (5, CHANNELS, 1, 1)
    dl.set_dl_model_param(again, "batch_size", 2)
    assert np.isfinite(dl.train_dl_model_batch(again, segmentation_samples(2, [0, 4]))["total_loss"])


def test_class_weight_helpers():
    labels = [np.array([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 255], [0, 0, 0, 0]])]
    weights_ = calculate_class_weights(labels, [0, 1, 2], max_weight=50.0, ignore_class_ids=[255])
    freq = np.array([13, 2, 0]) / 15
    expected = 1 / (freq + 1e-4)
    expected = np.minimum(expected / expected[0], 50.0)
    np.testing.assert_allclose(weights_, expected, rtol=1e-12)
    samples = [{"segmentation_image": labels[0]}]
    gen_weight_images(samples, [0, 1, 2], weights_, ignore_class_ids=[255])
    assert samples[0]["weight_image"][1, 2] == pytest.approx(weights_[1])
    assert samples[0]["weight_image"][2, 3] == 0.0 and samples[0]["weight_image"][0, 0] == pytest.approx(1.0)
    with pytest.raises(dl.DLSampleError, match="neither"):
        calculate_class_weights([np.array([[7]])], [0, 1])
