"""Detection done-when: a detector on the bundled classifier learns generated shapes in 500 steps."""

from __future__ import annotations

import numpy as np
import pytest
from test_detection import _export_matches_apply

import onnx_dl as dl
from onnx_dl.evaluation import mean_average_precision
from onnx_dl.synthetic import detection_samples

STEPS, BATCH = 500, 4


@pytest.mark.slow
def test_detector_500_steps_reach_map50_of_070_on_held_out_images(tmp_path):
    """128 x 128 images with 1 to 4 shapes of 3 classes; default architecture (levels 2..4, 3 subscales x
    3 aspect ratios, capacity 'medium'); Adam. Evaluated at min_confidence 0.05, as mAP is."""
    model = dl.create_dl_model_detection("classifier_compact", 3, {
        "image_width": 128, "image_height": 128, "batch_size": BATCH, "solver_type": "adam", "learning_rate": 1e-3,
        "min_confidence": 0.05})
    train = detection_samples(STEPS * BATCH, 128, seed=1)
    test = detection_samples(200, 128, seed=1001)
    losses = [dl.train_dl_model_batch(model, train[step * BATCH:(step + 1) * BATCH])["total_loss"]
              for step in range(STEPS)]
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:3])
    measures = mean_average_precision(dl.apply_dl_model(model, test), test, [0, 1, 2], iou_thresholds=(0.5,))
    assert measures["mean_ap"] >= 0.7, measures
    assert _export_matches_apply(model, test[:8], tmp_path / "detector_boxes.onnx") > 0
