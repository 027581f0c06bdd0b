"""End-to-end: the bundled networks learn generated datasets within the issues' step budgets."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import onnx_dl as dl
from onnx_dl.evaluation import segmentation_measures
from onnx_dl.synthetic import segmentation_samples


@pytest.mark.slow
def test_segmentation_300_steps_reach_mean_iou_080(tmp_path):
    model = dl.read_dl_model("segmentation_compact")
    dl.set_dl_model_param(model, "image_dimensions", [64, 64, 3])
    dl.set_dl_model_param(model, "batch_size", 16)
    dl.set_dl_model_param(model, "solver_type", "adam")
    dl.set_dl_model_param(model, "learning_rate", 0.003)
    train = segmentation_samples(16 * 300, 64, seed=1)
    test = segmentation_samples(100, 64, seed=101)
    losses = [dl.train_dl_model_batch(model, train[i * 16:(i + 1) * 16])["total_loss"] for i in range(300)]
    assert np.mean(losses[-10:]) < 0.15 * np.mean(losses[:3])
    results = dl.apply_dl_model(model, test)
    assert segmentation_measures(results, test, [0, 1, 2, 3])["mean_iou"] >= 0.80
    path = tmp_path / "segmentation.onnx"
    dl.write_dl_model(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"image": np.stack([s["image"].transpose(2, 0, 1) for s in test[:8]])})[0]
    for n in range(8):
        assert np.array_equal(probabilities[n].argmax(0), results[n]["segmentation_image"])
