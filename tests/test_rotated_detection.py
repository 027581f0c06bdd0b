"""Detection with oriented boxes (instance_type 'rectangle2'): anchors, target assignment against a loop
reference with an independent IoU, the losses against NumPy, results (decode, rotated NMS, axis-parallel
classes), preprocessing and augmentation of the five box parameters, evaluation (rotated AP, soap), bad
input, files, export, DOTA datasets, the command line and learning."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from conftest import assert_unchanged, snapshot, weights
from test_detection import RTOL, TINY, TINY_CHANNELS, TINY_PARAMS, check_one_step, tiny_network
from test_rotated_boxes import exact_iou

import onnx_dl as dl
from onnx_dl import anchors, measures, preprocess, rotated_boxes
from onnx_dl.box_types import Rectangle2
from onnx_dl.dataset import gen_dl_samples, read_dl_dataset, read_dl_dataset_dota
from onnx_dl.errors import DLDatasetError
from onnx_dl.model import from_network
from onnx_dl.synthetic import oriented_detection_samples, oriented_shape_mask
from onnx_dl.tasks import detection

KEYS = rotated_boxes.BOX_KEYS
QUARTER = math.pi / 2


def rotated_tiny_model(ignore_direction: bool = False, size: int = TINY, **params: Any) -> dl.DLModel:
    """test_detection's tiny detector (levels 1 and 2, 4 anchors per cell, classes 3 and 7, ``size`` x ``size``
    images) with a 5-channel box head and one anchor angle (0.3 rad)."""
    settings = {**TINY_PARAMS, "batch_size": 4, "instance_type": "rectangle2", "anchor_angles": [0.3],
                "ignore_direction": ignore_direction, "image_width": size, "image_height": size}
    model = from_network(tiny_network(box_size=5, size=size), "detection", settings)
    for name, value in params.items():
        dl.set_dl_model_param(model, name, value)
    return model


def tiny_oriented_samples(count: int, seed: int = 0, max_boxes: int = 3) -> list[dict[str, Any]]:
    """Random images with 0 to ``max_boxes`` random oriented boxes of classes 3 and 7 on 8 x 8 images."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        boxes = int(rng.integers(0, max_boxes + 1))
        sample = {"image": rng.normal(0, 1, (TINY, TINY, TINY_CHANNELS)).astype(np.float32),
                  "bbox_row": rng.uniform(0, TINY - 1, boxes), "bbox_col": rng.uniform(0, TINY - 1, boxes),
                  "bbox_length1": rng.uniform(0.8, 3.0, boxes), "bbox_length2": rng.uniform(0.5, 2.0, boxes),
                  "bbox_phi": rng.uniform(-math.pi, math.pi, boxes), "bbox_label_id": rng.choice([3, 7], boxes)}
        samples.append(sample)
    return samples


def oriented(sample: dict[str, Any]) -> np.ndarray:
    """The (G, 5) oriented boxes of a sample or result."""
    return np.stack([np.asarray(sample[k], np.float64) for k in KEYS], axis=1)


# -- anchors ------------------------------------------------------------------------------------
def test_oriented_anchors_by_hand():
    """a = (subscale * R + ratio) * T + angle; r = length1 / length2 at the area of the axis-parallel anchor."""
    found = anchors.oriented_level_anchors(16, 16, 3, 2, [1.0, 4.0], [0.0, 0.5, -1.0])
    assert found.shape == (2 * 2 * 3, 2, 2, 5)
    size = 4 * 8 * 2 ** (1 / 2)  # subscale 1
    a = (1 * 2 + 1) * 3 + 1  # subscale 1, ratio 4.0, angle 0.5
    np.testing.assert_allclose(found[a, 1, 0], [11.5, 3.5, size * 2 / 2, size / 2 / 2, 0.5], rtol=1e-12)
    areas = 4 * found[..., 2] * found[..., 3]
    np.testing.assert_allclose(areas[a], size**2)
    params = {**TINY_PARAMS, "instance_type": "rectangle2", "anchor_angles": [0.3, 1.0]}
    assert detection.num_anchors(params) == 8 and detection.box_size(params) == 5
    assert anchors.all_anchors(params).shape == ((4 * 4 + 2 * 2) * 8, 5)


# -- targets ------------------------------------------------------------------------------------
def loop_targets(anchor_boxes: np.ndarray, boxes: np.ndarray, classes: np.ndarray, num_classes: int,
                 ignore_direction: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The assignment rule of anchors.assign written as loops over an independent exact IoU (test_rotated_boxes)."""
    count = len(anchor_boxes)
    iou = np.array([[exact_iou(box, anchor) for anchor in anchor_boxes] for box in boxes]).reshape(len(boxes), count)
    cls_target, weight = np.zeros((count, num_classes)), np.ones(count)
    box_target, positive = np.zeros((count, 5)), np.zeros(count, bool)
    if not len(boxes):
        return cls_target, weight, box_target, positive
    matched = {}
    for m in range(count):
        best = int(np.argmax(iou[:, m]))
        if iou[best, m] >= 0.5:
            matched[m] = best
        elif iou[best, m] >= 0.4:
            weight[m] = 0.0
    forced: dict[int, int] = {}
    for g in range(len(boxes)):
        top = iou[g].max()
        for m in np.nonzero(iou[g] >= top - 1e-9)[0] if top > 0 else []:
            if int(m) not in forced or iou[g, m] > iou[forced[int(m)], m] + 1e-9:
                forced[int(m)] = g
    matched.update(forced)
    for m, g in matched.items():
        positive[m], weight[m] = True, 1.0
        cls_target[m, classes[g]] = 1.0
        box_target[m] = rotated_boxes.encode(anchor_boxes[m], boxes[g], ignore_direction)
    return cls_target, weight, box_target, positive


@pytest.mark.parametrize("ignore_direction", [False, True])
def test_targets_match_a_loop_reference(ignore_direction):
    params = {**TINY_PARAMS, "instance_type": "rectangle2", "anchor_angles": [0.3, -1.2],
              "ignore_direction": ignore_direction}
    grid = anchors.all_anchors(params)
    samples = tiny_oriented_samples(5, seed=4)
    boxes = [oriented(s) for s in samples]
    classes = [np.searchsorted([3, 7], s["bbox_label_id"]) for s in samples]
    levels, positives = anchors.detection_targets(boxes, classes, params)
    shapes = [(8, 4, 4), (8, 2, 2)]
    total = 0
    for n in range(len(samples)):
        cls_target, weight, box_target, positive = loop_targets(grid, boxes[n], classes[n], 2, ignore_direction)
        total += int(positive.sum())
        start = 0
        for level, (count, rows, cols) in zip(levels, shapes):
            stop = start + count * rows * cols
            take = slice(start, stop)
            flat_cls = level["cls_target"][n].reshape(count, 2, rows, cols).transpose(0, 2, 3, 1).reshape(-1, 2)
            flat_weight = level["cls_weight"][n].reshape(count, 2, rows, cols)[:, 0].reshape(-1)
            flat_box = level["box_target"][n].reshape(count, 5, rows, cols).transpose(0, 2, 3, 1).reshape(-1, 5)
            flat_box_weight = level["box_weight"][n].reshape(count, 5, rows, cols)[:, 0].reshape(-1)
            np.testing.assert_array_equal(flat_cls, cls_target[take])
            np.testing.assert_array_equal(flat_weight, weight[take])
            np.testing.assert_array_equal(flat_box_weight, positive[take])
            np.testing.assert_allclose(flat_box, box_target[take], rtol=1e-6, atol=1e-6)
            start = stop
    assert positives == total > 0


def test_a_box_on_an_anchor_has_zero_deltas_and_the_matched_angle():
    params = {**TINY_PARAMS, "instance_type": "rectangle2", "anchor_angles": [0.0, QUARTER], "class_ids": [0]}
    grid = anchors.all_anchors(params)
    box = grid[37:38].copy()
    cls_target, weight, deltas, positive = anchors.assign(grid, box, np.array([0]), 1, Rectangle2())
    assert positive[37] and cls_target[37, 0] == 1 and np.all(deltas[37] == 0)
    turned = box.copy()
    turned[0, 4] += 0.1  # a little turn: the same anchor, dphi = 0.1
    _, _, deltas, positive = anchors.assign(grid, turned, np.array([0]), 1, Rectangle2())
    assert positive[37] and deltas[37, 4] == pytest.approx(0.1, abs=1e-6)


# -- losses -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ignore_direction", [False, True])
def test_focal_and_huber_of_oriented_boxes_match_reference(ignore_direction):
    """One plain SGD step: values and gradients of the focal and the 5-channel Huber loss (test_detection's
    NumPy reference on the targets above)."""
    model = rotated_tiny_model(ignore_direction, learning_rate=1.0, momentum=0.0, weight_prior=0.01,
                               class_heads_weight=0.7, bbox_heads_weight=1.3)
    expected = check_one_step(model, tiny_oriented_samples(4, seed=1))
    assert expected["loss_huber_level_1"] > 0


def test_chunks_add_up_for_oriented_boxes():
    chunked = rotated_tiny_model(batch_size=2, batch_size_multiplier=2, solver_type="adam", learning_rate=0.01)
    whole = rotated_tiny_model(solver_type="adam", learning_rate=0.01)
    for seed in (3, 30):
        samples = tiny_oriented_samples(4, seed=seed)
        a, b = dl.train_dl_model_batch(chunked, samples), dl.train_dl_model_batch(whole, samples)
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=RTOL, abs=1e-7), key
    for name, value in weights(whole).items():
        np.testing.assert_allclose(weights(chunked)[name], value, rtol=RTOL, atol=1e-7)


# -- results ------------------------------------------------------------------------------------
def _outputs_for(params: dict[str, Any], hot: dict[int, float]) -> list[np.ndarray]:
    """Head outputs (batch 1) with zero deltas and the score of class index 0 at the given flat anchors."""
    grid, size = anchors.all_anchors(params), detection.box_size(params)
    count, classes = detection.num_anchors(params), len(params["class_ids"])
    scores, deltas, start = [], [], 0
    for level in detection.levels(params):
        rows, cols = params["image_height"] // 2**level, params["image_width"] // 2**level
        score = np.zeros((1, count * classes, rows, cols), np.float32)
        for m, value in hot.items():
            if start <= m < start + count * rows * cols:
                a, r, c = np.unravel_index(m - start, (count, rows, cols))
                score[0, a * classes, r, c] = value
        scores.append(score)
        deltas.append(np.zeros((1, count * size, rows, cols), np.float32))
        start += count * rows * cols
    assert start == len(grid)
    return scores + deltas


def test_results_decode_apply_rotated_nms_and_make_listed_classes_axis_parallel():
    params = {**TINY_PARAMS, "instance_type": "rectangle2", "anchor_angles": [0.0, 0.6], "min_confidence": 0.5,
              "max_overlap": 0.5, "max_overlap_class_agnostic": 1.0, "max_num_detections": 10,
              "class_names": ["a", "b"], "class_ids_no_orientation": []}
    grid = anchors.all_anchors(params)
    overlap = exact_iou(grid[0], grid[1])  # anchors 0 and 1: one cell, angles 0 and 0.6
    hot = {0: 0.9, 1: 0.8, 40: 0.7}
    found = detection.results(_outputs_for(params, hot), params, list(detection.RESULT_KEYS))[0]
    assert list(found) == [*KEYS, "bbox_class_id", "bbox_class_name", "bbox_confidence"]
    expected = [0, 40] if overlap > 0.5 else [0, 1, 40]
    np.testing.assert_allclose(oriented(found), grid[expected], atol=1e-6)
    np.testing.assert_allclose(found["bbox_confidence"], [hot[m] for m in expected], rtol=1e-6)
    assert found["bbox_class_name"] == ["a"] * len(expected)
    params["class_ids_no_orientation"] = [3]  # class index 0 is id 3
    flat = oriented(detection.results(_outputs_for(params, {1: 0.9}), params, list(detection.RESULT_KEYS))[0])
    np.testing.assert_allclose(flat, rotated_boxes.enclosing_axis_parallel(grid[1:2]), atol=1e-6)
    assert flat[0, 4] == 0.0


# -- preprocessing and augmentation -----------------------------------------------------------------
def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _shape_sample(size: int = 40) -> tuple[dict[str, Any], tuple[float, ...]]:
    box = (15.3, 22.6, 11.0, 4.5, 0.7)
    mask = oriented_shape_mask("triangle", size, box)
    image = np.where(mask, 200.0, 0.0).astype(np.float32)[:, :, None]
    sample = {"image": image, **{k: np.array([v]) for k, v in zip(KEYS, box)}, "bbox_label_id": np.array([3])}
    return sample, box


@pytest.mark.parametrize("change", ["mirror_r", "mirror_c", "mirror_rc", "rotate_1", "rotate_2", "rotate_3"])
def test_mirror_and_rotation_move_the_box_with_the_shape(change):
    """The triangle (apex at +length1: it carries the direction) drawn into the moved box equals the moved
    image but for the rim; its phi follows (pi - phi, -phi, phi + k pi/2)."""
    sample, box = _shape_sample()
    kind, value = change.split("_")
    if kind == "mirror":
        moved = preprocess.mirror(sample, "r" in value, "c" in value)
        sign_r, sign_c = (-1 if "r" in value else 1), (-1 if "c" in value else 1)
        phi = math.atan2(sign_r * math.sin(box[4]), sign_c * math.cos(box[4]))
    else:
        moved = preprocess.rotate(sample, int(value))
        phi = box[4] + int(value) * QUARTER
    got = oriented(moved)[0]
    assert got[4] == pytest.approx(rotated_boxes.normalize_angle(phi, False), abs=1e-9)
    np.testing.assert_allclose(got[2:4], box[2:4], rtol=1e-9)
    redrawn = oriented_shape_mask("triangle", 40, tuple(got))
    assert _mask_iou(redrawn, moved["image"][:, :, 0] > 100) > 0.97


def augment_all(sample: dict[str, Any], gen_param: dict[str, Any]) -> dict[str, Any]:
    return preprocess.augment_dl_samples([sample], {**gen_param, "augmentation_percentage": 100}, seed=0)[0]


def test_ignore_direction_and_axis_parallel_classes_in_augmentation():
    sample, box = _shape_sample()
    moved = preprocess.mirror(sample, False, True, ignore_direction=True)
    assert -QUARTER < oriented(moved)[0, 4] <= QUARTER
    assert oriented(moved)[0, 4] == pytest.approx(rotated_boxes.normalize_angle(math.pi - box[4], True))
    flat = augment_all(sample, {"mirror": "c", "class_ids_no_orientation": [3]})
    np.testing.assert_allclose(oriented(flat)[0], rotated_boxes.enclosing_axis_parallel(oriented(moved))[0],
                               atol=1e-9)


def test_resize_with_unequal_scales_refits_the_box():
    """Scaling rows by 0.5 and columns by 1.5 makes the rectangle a parallelogram: the refit box is the
    smallest rectangle around the mapped corners, keeps the direction and holds every mapped corner."""
    sample, box = _shape_sample()
    params = {"image_width": 60, "image_height": 20, "image_num_channels": 1, "image_range_min": -127.0,
              "image_range_max": 128.0, "ignore_direction": False}
    done = preprocess.preprocess_dl_samples([sample], params)[0]
    fit = oriented(done)[0]
    matrix = np.diag([0.5, 1.5])
    offset = 0.5 * np.array([0.5, 1.5]) - 0.5
    mapped = rotated_boxes.corners(np.array(box)) @ matrix.T + offset
    np.testing.assert_allclose(rotated_boxes.area(fit), rotated_boxes.area(rotated_boxes.from_polygon(mapped)),
                               rtol=1e-9)
    u, v = rotated_boxes.axes(fit[4])
    local = mapped - fit[:2]
    assert np.all(np.abs(local @ u) <= fit[2] + 1e-9) and np.all(np.abs(local @ v) <= fit[3] + 1e-9)
    direction = rotated_boxes.axes(box[4])[0] @ matrix.T
    assert float(u @ direction) > 0  # length1 still points the way the mapped length1 points


def test_preprocessing_drops_boxes_whose_centre_leaves_and_flattens_listed_classes():
    sample, _ = _shape_sample()
    params = {"image_width": 40, "image_height": 40, "image_num_channels": 1, "image_range_min": -127.0,
              "image_range_max": 128.0, "class_ids_no_orientation": [3]}
    done = preprocess.preprocess_dl_samples([sample], params)[0]
    assert oriented(done)[0, 4] == 0.0
    cropped = preprocess.crop(sample, 20, 0, 20, 40)  # the centre (row 15.3) lies above the region
    assert len(cropped["bbox_row"]) == 0 and len(cropped["bbox_label_id"]) == 0


# -- evaluation ---------------------------------------------------------------------------------
def test_rotated_ap_and_soap_by_hand():
    kind = Rectangle2(ignore_direction=False)
    truth = {"bbox_row": [10.0, 30.0], "bbox_col": [10.0, 30.0], "bbox_length1": [8.0, 8.0],
             "bbox_length2": [2.0, 2.0], "bbox_phi": [0.0, 1.0], "bbox_label_id": [0, 0]}
    # an exact hit, the second box turned by 90 degrees (IoU 1/7: a miss) and a small angle error (IoU > 0.5)
    result = {"bbox_row": [10.0, 30.0, 10.0], "bbox_col": [10.0, 30.0, 10.0], "bbox_length1": [8.0, 8.0, 8.0],
              "bbox_length2": [2.0, 2.0, 2.0], "bbox_phi": [0.0, 1.0 + QUARTER, 0.05], "bbox_class_id": [0, 0, 0],
              "bbox_confidence": [0.9, 0.8, 0.7]}
    found = measures.mean_average_precision([result], [truth], [0], (0.5,), box_type=kind)
    # ranked: hit, miss, a duplicate of the first box (a false positive) -> recall 0.5 at precision 1
    assert found["mean_ap"] == pytest.approx(measures.average_precision(np.array([0.5, 0.5, 0.5]),
                                                                         np.array([1.0, 0.5, 1 / 3])))
    assert measures.score_of_angle_precision([result], [truth], [0], kind) == 1.0
    result["bbox_phi"] = [0.1, 1.0 + QUARTER, 0.05]  # now the first hit is 0.1 rad off
    assert measures.score_of_angle_precision([result], [truth], [0], kind) == pytest.approx(1 - 0.1 / math.pi)
    result["bbox_phi"] = [math.pi - 0.1, 1.0 + QUARTER, 0.05]  # the box itself, direction reversed
    assert measures.score_of_angle_precision([result], [truth], [0], kind) == pytest.approx(
        1 - (math.pi - 0.1) / math.pi)
    assert measures.score_of_angle_precision([result], [truth], [0], Rectangle2(True)) == pytest.approx(
        1 - 0.1 / QUARTER)  # without direction the gap is 0.1 of at most pi/2
    assert math.isnan(measures.score_of_angle_precision([result], [truth], [5], kind))  # class 0 not asked for


def test_evaluation_compares_axis_parallel_classes_as_they_are_trained():
    """With class_ids_no_orientation the model returns (and learns) the enclosing axis-parallel box; the
    evaluation turns the ground truth the same way, so a perfect model scores 1, and soap leaves the class out."""
    params = {**TINY_PARAMS, "instance_type": "rectangle2", "anchor_angles": [0.0], "class_ids": [0, 1],
              "class_ids_no_orientation": [1], "ignore_direction": False}
    truth = {"bbox_row": [50.0, 20.0], "bbox_col": [50.0, 20.0], "bbox_length1": [30.0, 9.0],
             "bbox_length2": [10.0, 3.0], "bbox_phi": [0.6, 0.3], "bbox_label_id": [1, 0]}
    flat = rotated_boxes.enclosing_axis_parallel(oriented(truth))[0]
    result = {**{k: [v, truth[k][1]] for k, v in zip(KEYS, flat)}, "bbox_class_id": [1, 0],
              "bbox_confidence": [0.9, 0.8]}
    result["bbox_phi"][1] = 0.4  # class 0 keeps its orientation: 0.1 rad off
    found = detection.measures([result], [truth], params)
    assert found["map_50"] == 1.0 and found["ap_50_95_per_class"][1] == 1.0  # class 0's angle error costs at IoU 0.9
    assert found["soap"] == pytest.approx(1 - 0.1 / math.pi)


# -- bad input, files -----------------------------------------------------------------------------
@pytest.mark.parametrize("change,message", [
    ({"bbox_length1": [-1.0]}, r"sample 1, key 'bbox_length1': expected a half edge length > 0, got -1.0"),
    ({"bbox_phi": [float("nan")]}, r"sample 1, key 'bbox_phi': expected finite coordinates, got nan"),
    ({"bbox_label_id": [5]}, r"sample 1, key 'bbox_label_id': expected ids in the model's class_ids"),
    ({"bbox_row": [9.0]}, r"sample 1, key 'bbox_row': expected a box centre inside the image"),
    ({"bbox_row1": [1.0]}, None),  # axis-parallel keys are not read: still missing bbox_phi below
])
def test_bad_oriented_boxes_are_refused_and_change_nothing(change, message):
    model = rotated_tiny_model()
    samples = tiny_oriented_samples(4, seed=2, max_boxes=1)
    samples[1].update({k: [1.0] for k in KEYS}, bbox_label_id=[3])
    samples[1].update(change)
    if message is None:
        samples[1].pop("bbox_phi")
        message = r"sample 1: missing key 'bbox_phi'"
    before = snapshot(model)
    with pytest.raises(dl.DLSampleError, match=message):
        dl.train_dl_model_batch(model, samples)
    assert_unchanged(before, model)


def test_write_read_continue_is_bit_exact(tmp_path):
    def make() -> dl.DLModel:
        return dl.create_dl_model_detection("classifier_compact", 3, {
            "image_width": 64, "image_height": 64, "batch_size": 4, "instance_type": "rectangle2",
            "anchor_angles": [0.0, 1.0], "anchor_aspect_ratios": [2.0], "anchor_num_subscales": 1,
            "min_level": 2, "max_level": 3, "capacity": "low", "ignore_direction": True,
            "class_ids_no_orientation": [1]})

    batches = [oriented_detection_samples(4, 64, seed=10 + i) for i in range(4)]
    straight, resumed = make(), make()
    for batch in batches:
        dl.train_dl_model_batch(straight, batch)
    for batch in batches[:2]:
        dl.train_dl_model_batch(resumed, batch)
    dl.write_dl_model(resumed, tmp_path / "oriented.onnx")
    again = dl.read_dl_model(tmp_path / "oriented.onnx")
    assert again.params == resumed.params and again.params["anchor_angles"] == [0.0, 1.0]
    for batch in batches[2:]:
        dl.train_dl_model_batch(again, batch)
    for name, value in weights(straight).items():
        assert np.array_equal(weights(again)[name], value), name
    assert [list(r) for r in dl.apply_dl_model(again, batches[0][:1])] == [[*KEYS, "bbox_class_id",
                                                                            "bbox_class_name", "bbox_confidence"]]


def test_export_decodes_in_onnx_and_the_host_function_finishes_it(tmp_path):
    """write_dl_model(postprocess=True) of an oriented-box detector ends in every anchor's decoded box and
    scores (no NMS: ONNX's is axis-parallel); finish_oriented on them gives apply_dl_model's results."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from onnx_dl.serialization import file_params
    from onnx_dl.tasks.detection_postprocess import ORIENTED_OUTPUTS, finish_oriented

    built = dl.create_dl_model_detection("classifier_compact", 3, {
        "image_width": 64, "image_height": 64, "batch_size": 4, "instance_type": "rectangle2",
        "anchor_angles": [0.0, 1.0, -2.0], "anchor_aspect_ratios": [2.0], "anchor_num_subscales": 1,
        "min_level": 2, "max_level": 3, "capacity": "low", "min_confidence": 0.3, "max_overlap": 0.3,
        "class_ids_no_orientation": [2]})
    # random output biases: many candidates, and box deltas far from the anchors (angles wrap)
    network, rng = built.network(), np.random.default_rng(0)
    for tensor in network.graph.initializer:
        for suffix, mean, spread in (("head.box.output.bias", 0.0, 3.0), ("head.class.output.bias", -2.5, 1.5)):
            if tensor.name.endswith(suffix):
                tensor.CopyFrom(numpy_helper.from_array(rng.normal(mean, spread, tensor.dims).astype(np.float32),
                                                        tensor.name))
    model = from_network(network, "detection", built.params)
    samples = oriented_detection_samples(4, 64, seed=3)
    path = tmp_path / "oriented_boxes.onnx"
    dl.write_dl_model(model, path, postprocess=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(ORIENTED_OUTPUTS)
    images = np.stack([s["image"].transpose(2, 0, 1) for s in samples]).astype(np.float32)
    outputs = dict(zip(ORIENTED_OUTPUTS, session.run(None, {session.get_inputs()[0].name: images})))
    finished = finish_oriented(outputs, file_params(path))
    expected = dl.apply_dl_model(model, samples)
    assert sum(len(r["bbox_class_id"]) for r in expected) > 4
    for got, want in zip(finished, expected):
        assert list(got) == list(want)
        np.testing.assert_array_equal(got["bbox_class_id"], want["bbox_class_id"])
        np.testing.assert_allclose(oriented(got), oriented(want), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(got["bbox_confidence"], want["bbox_confidence"], rtol=1e-5)


# -- DOTA datasets and the command line ---------------------------------------------------------------
NAMES = ("rectangle", "ellipse", "triangle")


def write_dota(folder, samples: list[dict[str, Any]]) -> None:
    """A DOTA folder: images/P<i>.png and labelTxt/P<i>.txt with each box's corners as (x, y) pixel pairs
    (DOTA's coordinates: the pixel-centred ones + 0.5), a header, and one extra 'difficult' object."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    (folder / "labelTxt").mkdir()
    for index, sample in enumerate(samples):
        image = np.clip(sample["image"] + 127.0, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"P{index:04d}.png")
        lines = ["imagesource:generated", "gsd:0.5"]
        for box, label in zip(oriented(sample), sample["bbox_label_id"]):
            points = rotated_boxes.corners(box)[:, ::-1] + 0.5  # (x, y)
            lines.append(" ".join(f"{v:.6f}" for v in points.reshape(-1)) + f" {NAMES[label]} 0")
        lines.append("1 1 3 1 3 2 1 2 triangle 1")  # a difficult sliver
        (folder / "labelTxt" / f"P{index:04d}.txt").write_text("\n".join(lines) + "\n")


def test_a_dota_folder_reads_as_oriented_boxes(tmp_path):
    samples = oriented_detection_samples(3, 48, seed=7, max_shapes=3)
    write_dota(tmp_path / "dota", samples)
    dataset = read_dl_dataset_dota(tmp_path / "dota", class_names=list(NAMES), include_difficult=False)
    assert dataset["instance_type"] == "rectangle2" and dataset["ignore_direction"] is True
    assert dataset["class_names"] == list(NAMES)
    for entry, sample in zip(dataset["samples"], samples):
        assert [dataset["class_names"][i] for i in entry["bbox_label_id"]] == [NAMES[i] for i in
                                                                              sample["bbox_label_id"]]
        np.testing.assert_allclose(oriented(entry), oriented(sample), atol=1e-5)
    with_difficult = read_dl_dataset(tmp_path / "dota")  # the layout is recognised; difficult objects kept
    assert with_difficult["class_names"] == ["ellipse", "rectangle", "triangle"]  # found, sorted
    assert len(with_difficult["samples"][0]["bbox_label_id"]) == len(samples[0]["bbox_label_id"]) + 1
    raw = gen_dl_samples(dataset, [0])[0]
    np.testing.assert_allclose(oriented(raw), oriented(samples[0]), atol=1e-5)


def test_bad_dota_lines_name_the_file_and_line(tmp_path):
    write_dota(tmp_path / "dota", oriented_detection_samples(1, 32, seed=1))
    (tmp_path / "dota" / "labelTxt" / "P0000.txt").write_text("1 2 3 4 5 6 7 oops\n")
    with pytest.raises(DLDatasetError, match=r"P0000.txt', line 1: expected 'x1 y1 x2 y2 x3 y3 x4 y4 category"):
        read_dl_dataset_dota(tmp_path / "dota")
    (tmp_path / "dota" / "labelTxt" / "P0000.txt").write_text("gsd:1\n5 5 5 5 5 5 5 5 ship 0\n")
    with pytest.raises(DLDatasetError, match=r"P0000.txt', line 2: expected a polygon enclosing an area"):
        read_dl_dataset_dota(tmp_path / "dota")
    (tmp_path / "dota" / "labelTxt" / "P0000.txt").write_text("1 1 9 1 9 5 1 5 ship 0\n")
    with pytest.raises(DLDatasetError, match=r"name \['plane'\] more than once"):
        read_dl_dataset_dota(tmp_path / "dota", class_names=["plane", "ship", "plane"])


def test_the_command_line_trains_an_oriented_detector_from_a_dota_folder(tmp_path):
    from test_cli import _cli

    write_dota(tmp_path / "dota", oriented_detection_samples(16, 64, seed=2))
    done = _cli("train", "--dataset", str(tmp_path / "dota"), "--type", "detection", "--epochs", "1",
                "--batch-size", "4", "--image-size", "64", "--output", str(tmp_path / "runs"), "--quiet")
    assert done.returncode == 0, done.stderr
    (run,) = list((tmp_path / "runs").iterdir())
    model = dl.read_dl_model(run / "best_model.onnx")
    assert dl.get_dl_model_param(model, "instance_type") == "rectangle2"
    assert dl.get_dl_model_param(model, "ignore_direction") is True
    image = min((tmp_path / "dota" / "images").iterdir())
    done = _cli("apply", str(run / "best_model.onnx"), str(image), "--draw", str(tmp_path / "drawn"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "drawn" / f"{image.stem}_result.png").is_file()


# -- learning -----------------------------------------------------------------------------------
STEPS, BATCH, DROP = 1100, 8, 800
DATA = {"lengths": (0.15, 0.3), "elongation": (1.5, 2.5), "max_shapes": 2}


@pytest.mark.slow
def test_oriented_detector_reaches_rotated_map50_of_080_on_held_out_images():
    """64 x 64 images with 1 or 2 rotated rectangles, ellipses and triangles (3 classes) at any angle;
    6 anchor angles, ignore_direction; Adam 2e-3, 4e-4 from step 800. Rotated mAP@0.5 measured over
    training seeds (closing note of issue 15); asserted >= 0.8."""
    model = dl.create_dl_model_detection("classifier_compact", 3, {
        "image_width": 64, "image_height": 64, "batch_size": BATCH, "instance_type": "rectangle2",
        "ignore_direction": True, "anchor_angles": [k * math.pi / 6 for k in range(-2, 4)],
        "anchor_aspect_ratios": [2.0], "anchor_num_subscales": 2, "min_level": 2, "max_level": 3,
        "capacity": "low", "solver_type": "adam", "learning_rate": 2e-3, "min_confidence": 0.05})
    train = oriented_detection_samples(STEPS * BATCH, 64, seed=1, **DATA)
    test = oriented_detection_samples(100, 64, seed=1001, **DATA)
    for step in range(STEPS):
        if step == DROP:
            dl.set_dl_model_param(model, "learning_rate", 4e-4)
        dl.train_dl_model_batch(model, train[step * BATCH:(step + 1) * BATCH])
    found = dl.evaluate_dl_model(model, samples=test)
    assert found["map_50"] >= 0.8, found
    assert found["soap"] >= 0.9
