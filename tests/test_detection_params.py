"""determine_dl_model_detection_param (issue 17): anchor parameters proposed from a dataset's boxes."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_dl as dl
from onnx_dl import anchors
from onnx_dl import dataset as D
from onnx_dl.boxes import iou_matrix
from onnx_dl.detection_params import anchor_coverage, aspect_ratio_clusters, determine_dl_model_detection_param, propose


def _boxes(rng, count, size_range, ratio, image=128):
    """Boxes of side sqrt(h w) in ``size_range`` and height / width ``ratio``, inside the image."""
    scale = rng.uniform(*size_range, count)
    heights, widths = scale * np.sqrt(ratio), scale / np.sqrt(ratio)
    rows, cols = rng.uniform(0, image - heights), rng.uniform(0, image - widths)
    return np.stack([rows, cols, rows + heights, cols + widths], axis=1)


def test_three_shape_families_give_their_ratios_levels_and_full_coverage():
    rng = np.random.default_rng(0)
    per_image = [np.concatenate([_boxes(rng, 2, (16, 60), r) for r in (0.5, 1.0, 2.0)]) for _ in range(30)]
    found = propose(per_image, 128, 128)
    assert found["anchor_aspect_ratios"] == pytest.approx([0.5, 1.0, 2.0], abs=0.03)
    assert (found["min_level"], found["max_level"]) == (2, 3)  # log2(16 / 4) = 2 .. log2(60 / 4) = 3.9
    assert found["anchor_coverage"] >= 0.98
    params = {"image_height": 128, "image_width": 128, "min_level": found["min_level"],
              "max_level": found["max_level"], "anchor_num_subscales": found["anchor_num_subscales"],
              "anchor_aspect_ratios": found["anchor_aspect_ratios"]}
    grid = anchors.all_anchors(params)  # coverage recomputed independently: best IoU per box over all anchors
    best = np.concatenate([iou_matrix(boxes, grid).max(axis=1) for boxes in per_image])
    assert found["anchor_coverage"] == pytest.approx(np.mean(best >= 0.5))
    assert found["mean_best_iou"] == pytest.approx(best.mean())


def test_the_proposal_covers_tall_boxes_the_defaults_miss():
    rng = np.random.default_rng(1)
    per_image = [_boxes(rng, 4, (20, 40), 8.0) for _ in range(30)]
    default = anchor_coverage(per_image, 128, 128, 2, 4, 3, [1.0, 2.0, 0.5])[0]
    found = propose(per_image, 128, 128)
    assert found["anchor_aspect_ratios"][0] == pytest.approx(8.0, rel=0.05)
    assert found["anchor_coverage"] >= 0.98 > default


def test_max_level_follows_the_image_sides_and_impossible_sizes_raise():
    rng = np.random.default_rng(2)
    per_image = [np.array([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 90.0, 90.0]])]  # levels 2 and 4
    assert propose(per_image, 96, 96)["max_level"] == 4  # floor(log2(90 / 4)) = 4, 96 divisible by 16
    assert propose(per_image, 96, 100)["max_level"] == 2  # 100 = 4 * 25: stride 8 does not divide it
    small = [_boxes(rng, 3, (40, 60), 1.0, image=100)]  # every box wants level >= 3
    with pytest.raises(dl.DLParamError, match="not divisible by 2\\*\\*3"):
        propose(small, 100, 100)
    with pytest.raises(dl.DLError, match="positive size"):
        propose([np.zeros((0, 4))], 64, 64)
    with pytest.raises(dl.DLParamError, match="unknown gen_param keys \\['ratios'\\]"):
        propose(per_image, 96, 96, {"ratios": 2})
    with pytest.raises(dl.DLParamError, match="coverage in \\(0, 1\\]"):
        propose(per_image, 96, 96, {"coverage": 0.0})


def test_clusters_merge_repeated_ratios():
    assert aspect_ratio_clusters(np.array([1.0] * 10), 3) == [1.0]
    assert aspect_ratio_clusters(np.array([0.5] * 5 + [2.0] * 5), 3) == [0.5, 2.0]


def test_a_dataset_s_proposal_builds_a_detector_that_trains(tmp_path):
    path = D.write_synthetic_dataset("detection", tmp_path / "data", 24, 96, seed=3)
    dataset = D.read_dl_dataset(path)
    D.split_dl_dataset(dataset, 75, 25, 0)
    found = determine_dl_model_detection_param(dataset, 64, 64, {"max_num_images": 10})
    assert found["anchor_coverage"] >= 0.9
    names = ("min_level", "max_level", "anchor_num_subscales", "anchor_aspect_ratios")
    model = dl.create_dl_model_detection("classifier_compact", 3, {
        "image_width": 64, "image_height": 64, "batch_size": 2, **{n: found[n] for n in names}})
    assert all(dl.get_dl_model_param(model, n) == found[n] for n in names)
    from onnx_dl.preprocess import preprocess_dl_samples
    samples = preprocess_dl_samples(D.gen_dl_samples(dataset, D.split_indices(dataset, "train")[:2]), model.params)
    assert np.isfinite(dl.train_dl_model_batch(model, samples)["total_loss"])
    with pytest.raises(dl.DLError, match="expected a detection dataset"):
        determine_dl_model_detection_param(D.read_dl_dataset(D.write_synthetic_dataset(
            "classification", tmp_path / "c", 8, 32, 0)), 32, 32)


def _tilted(count: int, phi: float, elongation: float, seed: int = 0) -> list[np.ndarray]:
    """Per image one oriented box (row, col, length1, length2, phi) of about 20 x 20 / elongation pixels."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(count):
        length1 = rng.uniform(9, 11)
        boxes.append(np.array([[rng.uniform(16, 48), rng.uniform(16, 48), length1, length1 / elongation, phi]]))
    return boxes


def test_oriented_boxes_get_angles_and_the_coverage_is_recomputed_from_the_grid():
    """Thin boxes at 45 degrees: one or two evenly spaced angles (0, 90) miss them, four (every 45) hold them;
    the reported coverage is that of the proposed oriented anchor grid."""
    boxes = _tilted(20, np.pi / 4, 4.0)
    found = propose(boxes, 64, 64, {"ignore_direction": True})
    assert found["ignore_direction"] is True and len(found["anchor_angles"]) >= 4
    assert any(abs(a - np.pi / 4) < 1e-6 for a in found["anchor_angles"])
    assert found["anchor_aspect_ratios"] == [4.0]
    assert found["anchor_coverage"] >= 0.98
    again = anchor_coverage(boxes, 64, 64, found["min_level"], found["max_level"], found["anchor_num_subscales"],
                            found["anchor_aspect_ratios"], found["anchor_angles"])
    assert again == (found["anchor_coverage"], found["mean_best_iou"])
    axis = propose(_tilted(20, 0.0, 4.0), 64, 64, {"ignore_direction": True})
    assert axis["anchor_angles"] == [0.0]  # boxes along the columns: one angle suffices
    assert propose(boxes, 64, 64, {"ignore_direction": "false"})["ignore_direction"] is False  # HALCON's strings
    with pytest.raises(dl.DLParamError, match="'ignore_direction': expected True, False, 'true' or 'false', got 'no'"):
        propose(boxes, 64, 64, {"ignore_direction": "no"})
    full_turn = propose(boxes, 64, 64, {"ignore_direction": False})  # anchors within 90 degrees only
    assert len(full_turn["anchor_angles"]) >= 4 and full_turn["anchor_coverage"] >= 0.98
    assert anchor_coverage(boxes, 64, 64, full_turn["min_level"], full_turn["max_level"],
                           full_turn["anchor_num_subscales"], [4.0], [np.pi / 4 + np.pi], False)[0] == 0.0
