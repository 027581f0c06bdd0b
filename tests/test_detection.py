"""Detection: focal and Huber losses against NumPy references (values and gradients), the training
step, sample checks, parameters, the builder, files and the NMS export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_unchanged, fail_on_engine_run, snapshot, weights
from onnx import TensorProto, helper, numpy_helper

import onnx_dl as dl
from onnx_dl import anchors, box_types
from onnx_dl.tasks import detection_builder, detection_postprocess
from onnx_dl.model import from_network
from onnx_dl.synthetic import detection_samples

RTOL = 1e-5
TINY, TINY_CHANNELS = 8, 2  # the tiny detector: 8 x 8 images of 2 channels, levels 1 and 2
TINY_LEVELS = {1: 2, 2: 4}  # level -> average-pooling size giving its stride
TINY_PARAMS = {"min_level": 1, "max_level": 2, "anchor_num_subscales": 2, "anchor_aspect_ratios": [1.0, 0.5],
               "class_ids": [3, 7], "class_weights": [0.25, 0.6], "image_width": TINY, "image_height": TINY}
A, K = 4, 2


# -- a detector whose gradients have a closed form ------------------------------------------------
def tiny_network(seed: int = 0, class_scale: float = 0.5, size: int = TINY, box_size: int = 4) -> onnx.ModelProto:
    """image (N, 2, size, size) -> average pooling to each level's grid -> shared 1x1 class and box convolutions
    (``box_size`` 5: the box head of oriented boxes)."""
    rng = np.random.default_rng(seed)
    inits = {"cls.weight": rng.normal(0, class_scale, (A * K, TINY_CHANNELS, 1, 1)),
             "cls.bias": rng.normal(-1.0, 0.5, A * K),
             "box.weight": rng.normal(0, 0.5, (A * box_size, TINY_CHANNELS, 1, 1)),
             "box.bias": rng.normal(0, 0.2, A * box_size)}
    nodes, scores, deltas = [], [], []
    for level, pool in TINY_LEVELS.items():
        nodes += [helper.make_node("AveragePool", ["image"], [f"pool{level}"], kernel_shape=[pool, pool],
                                   strides=[pool, pool]),
                  helper.make_node("Conv", [f"pool{level}", "cls.weight", "cls.bias"], [f"logits{level}"]),
                  helper.make_node("Sigmoid", [f"logits{level}"], [f"class_scores_level_{level}"]),
                  helper.make_node("Conv", [f"pool{level}", "box.weight", "box.bias"], [f"box_deltas_level_{level}"])]
        grid = size // pool
        scores.append(helper.make_tensor_value_info(f"class_scores_level_{level}", TensorProto.FLOAT,
                                                    ["N", A * K, grid, grid]))
        deltas.append(helper.make_tensor_value_info(f"box_deltas_level_{level}", TensorProto.FLOAT,
                                                    ["N", A * box_size, grid, grid]))
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", TINY_CHANNELS, size, size])
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, "tiny_detector", [image], scores + deltas, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def tiny_model(size: int = TINY, class_scale: float = 0.5, **params: Any) -> dl.DLModel:
    """The tiny detector as a model handle (levels 1 and 2, classes 3 and 7) with ``params`` set."""
    model = from_network(tiny_network(class_scale=class_scale, size=size), "detection",
                         {**TINY_PARAMS, "image_width": size, "image_height": size, "batch_size": 4})
    for name, value in params.items():
        dl.set_dl_model_param(model, name, value)
    return model


def tiny_samples(count: int, seed: int = 0, scale: float = 1.0, max_boxes: int = 3) -> list[dict[str, Any]]:
    """Random images with 0 to ``max_boxes`` random boxes of classes 3 and 7."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        boxes = rng.integers(0, max_boxes + 1)
        top, left = rng.uniform(-0.5, 4.0, (2, boxes))
        height, width = rng.uniform(1.5, 5.0, (2, boxes))
        samples.append({"image": rng.normal(0, scale, (TINY, TINY, TINY_CHANNELS)).astype(np.float32),
                        "bbox_row1": top, "bbox_col1": left, "bbox_row2": np.minimum(top + height, TINY - 0.5),
                        "bbox_col2": np.minimum(left + width, TINY - 0.5),
                        "bbox_label_id": rng.choice([3, 7], boxes)})
    return samples


def positive_average(previous: float, positives: int) -> float:
    """The running average of positive anchors (detectron2's RetinaNet): 0.9 * previous + 0.1 * max(P, 1)."""
    return 0.9 * previous + 0.1 * max(positives, 1)


def reference(model: dl.DLModel, samples: list[dict[str, Any]],
              norm: float | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Losses and weight gradients of the tiny detector, in float64, from the formulas:

        FL = w [y (1-p)^2 (-log p) + (1-y) p^2 (-log(1-p))], w = anchor weight * (alpha if y else 1 - alpha)
        dFL/dz = w [y (1-p)^2 (2 p log p - (1-p)) + (1-y) p^2 (p - 2 (1-p) log(1-p))]
        h(d) = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta,  h'(d) = d / beta or sign(d)
    each summed and divided by ``norm``, times the head weight. ``norm`` defaults to the running
    average of positive anchors after this step: :func:`positive_average` of the model's
    ``positive_anchor_average`` and the step's positive count.
    """
    params = model.params
    w = {name: value.astype(np.float64) for name, value in weights(model).items()}
    x = np.stack([s["image"].transpose(2, 0, 1) for s in samples]).astype(np.float64)
    keys = box_types.of_params(params).keys
    boxes = [np.stack([np.asarray(s[k], np.float64) for k in keys], 1) for s in samples]
    classes = [np.searchsorted([3, 7], s["bbox_label_id"]) for s in samples]
    targets, positives = anchors.detection_targets(boxes, classes, params)
    if norm is None:
        norm = positive_average(params["positive_anchor_average"], positives)
    alpha = np.tile(np.asarray(params["class_weights"]), A)[None, :, None, None]
    beta = 0.11
    losses: dict[str, float] = {}
    grads = {name: np.zeros_like(value) for name, value in w.items()}
    for (level, pool), t in zip(TINY_LEVELS.items(), targets):
        n, c, size = len(x), TINY_CHANNELS, TINY // pool
        xl = x.reshape(n, c, size, pool, size, pool).mean(axis=(3, 5))
        z = np.einsum("oc,nchw->nohw", w["cls.weight"][:, :, 0, 0], xl) + w["cls.bias"][None, :, None, None]
        d = np.einsum("oc,nchw->nohw", w["box.weight"][:, :, 0, 0], xl) + w["box.bias"][None, :, None, None]
        y = t["cls_target"].astype(np.float64)
        fw = t["cls_weight"] * (y * alpha + (1 - y) * (1 - alpha))
        p = 1 / (1 + np.exp(-z))
        log_p, log_q = -np.logaddexp(0, -z), -np.logaddexp(0, z)
        fl = fw * (y * (1 - p) ** 2 * -log_p + (1 - y) * p**2 * -log_q)
        dz = fw * (y * (1 - p) ** 2 * (2 * p * log_p - (1 - p)) + (1 - y) * p**2 * (p - 2 * (1 - p) * log_q))
        diff = d - t["box_target"]
        a = np.abs(diff)
        h = np.where(a < beta, 0.5 * a**2 / beta, a - 0.5 * beta)
        dd = t["box_weight"] * np.where(a < beta, diff / beta, np.sign(diff))
        losses[f"loss_focal_level_{level}"] = params["class_heads_weight"] * fl.sum() / norm
        losses[f"loss_huber_level_{level}"] = params["bbox_heads_weight"] * (t["box_weight"] * h).sum() / norm
        dz *= params["class_heads_weight"] / norm
        dd *= params["bbox_heads_weight"] / norm
        grads["cls.weight"][:, :, 0, 0] += np.einsum("nohw,nchw->oc", dz, xl)
        grads["cls.bias"] += dz.sum(axis=(0, 2, 3))
        grads["box.weight"][:, :, 0, 0] += np.einsum("nohw,nchw->oc", dd, xl)
        grads["box.bias"] += dd.sum(axis=(0, 2, 3))
    alpha_prior = params["weight_prior"]
    losses["loss_weight_prior"] = alpha_prior / 2 * sum(float((w[k] ** 2).sum()) for k in ("cls.weight", "box.weight"))
    for name in ("cls.weight", "box.weight"):
        grads[name] += alpha_prior * w[name]
    losses["total_loss"] = sum(losses.values())
    return losses, grads


@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_focal_and_huber_values_and_gradients_match_reference(scale):
    """One plain SGD step (momentum 0, lr 1): the weight change is the gradient. Scale 60 drives the
    logits to about +-100, where a naive log(sigmoid) would overflow."""
    model = tiny_model(learning_rate=1.0, momentum=0.0, weight_prior=0.01, class_heads_weight=0.7,
                       bbox_heads_weight=1.3)
    check_one_step(model, tiny_samples(4, seed=1, scale=scale))


def check_one_step(model: dl.DLModel, samples: list[dict[str, Any]]) -> dict[str, float]:
    """One training step of a plain-SGD model (lr 1, momentum 0) against :func:`reference`: the loss values
    and, as the weight change, the gradients. Returns the reference losses."""
    expected, grads = reference(model, samples)
    before = {k: v.astype(np.float64) for k, v in weights(model).items()}
    result = dl.train_dl_model_batch(model, samples)
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=RTOL), key
    assert result["total_loss"] == pytest.approx(sum(v for k, v in result.items() if k != "total_loss"), rel=1e-6)
    after = weights(model)
    for name, grad in grads.items():
        scale = max(1.0, float(np.abs(grad).max()))
        np.testing.assert_allclose(before[name] - after[name], grad, rtol=RTOL, atol=1e-6 * scale)
    return expected


def test_chunks_add_up_to_the_whole_batch():
    """batch_size 2 x multiplier 2 equals one step of 4: one positive count for the whole step, one
    update of the running average per step."""
    chunked = tiny_model(batch_size=2, batch_size_multiplier=2, solver_type="adam", learning_rate=0.01)
    whole = tiny_model(solver_type="adam", learning_rate=0.01)
    for seed in (3, 3, 30, 3):
        samples = tiny_samples(4, seed=seed)
        a, b = dl.train_dl_model_batch(chunked, samples), dl.train_dl_model_batch(whole, samples)
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=RTOL, abs=1e-7), key
        average = dl.get_dl_model_param(whole, "positive_anchor_average")
        assert dl.get_dl_model_param(chunked, "positive_anchor_average") == average
    for name, value in weights(whole).items():
        np.testing.assert_allclose(weights(chunked)[name], value, rtol=RTOL, atol=1e-7)


def _empty(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples with every box removed."""
    return [{**s, **{k: np.zeros(0) for k in ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2")},
             "bbox_label_id": np.zeros(0, np.int64)} for s in samples]


def test_the_positive_anchor_average_follows_its_formula_step_by_step():
    """Losses and gradients of consecutive steps, one of them without any box, against the reference
    with the running average 100 -> 0.9 a + 0.1 max(P, 1) computed in NumPy."""
    model = tiny_model(learning_rate=1.0, momentum=0.0, class_heads_weight=0.7, bbox_heads_weight=1.3)
    assert dl.get_dl_model_param(model, "positive_anchor_average") == 100.0
    average = 100.0
    for step, samples in enumerate([tiny_samples(4, seed=40), _empty(tiny_samples(4, seed=41)),
                                    tiny_samples(4, seed=42, max_boxes=1)]):
        boxes = [np.stack([s[k] for k in ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2")], 1) for s in samples]
        positives = anchors.detection_targets(boxes, [np.searchsorted([3, 7], s["bbox_label_id"]) for s in samples],
                                              model.params)[1]
        average = 0.9 * average + 0.1 * max(positives, 1)
        expected, grads = reference(model, samples, norm=average)
        before = {k: v.astype(np.float64) for k, v in weights(model).items()}
        result = dl.train_dl_model_batch(model, samples)
        for key, value in expected.items():
            assert result[key] == pytest.approx(value, rel=RTOL, abs=1e-12), (step, key)
        after = weights(model)
        for name, grad in grads.items():
            np.testing.assert_allclose(before[name] - after[name], grad, rtol=RTOL,
                                       atol=1e-6 * max(1.0, float(np.abs(grad).max())))
        assert dl.get_dl_model_param(model, "positive_anchor_average") == pytest.approx(average, rel=1e-14), step
    with pytest.raises(dl.DLParamError, match="read-only"):
        dl.set_dl_model_param(model, "positive_anchor_average", 5.0)


def test_the_average_resumes_bit_exactly_and_is_left_out_with_the_solver_state(tmp_path):
    batches = [tiny_samples(4, seed=70 + i) for i in range(5)]
    batches[2] = _empty(batches[2])
    straight, first = tiny_model(solver_type="adam"), tiny_model(solver_type="adam")
    expected = [dl.train_dl_model_batch(straight, b) for b in batches]
    for b in batches[:3]:
        dl.train_dl_model_batch(first, b)
    dl.write_dl_model(first, tmp_path / "halfway.onnx")
    dl.write_dl_model(first, tmp_path / "slim.onnx", include_solver_state=False)
    resumed = dl.read_dl_model(tmp_path / "halfway.onnx")
    assert resumed.params == first.params
    assert [dl.train_dl_model_batch(resumed, b) for b in batches[3:]] == expected[3:]
    assert resumed.params["positive_anchor_average"] == straight.params["positive_anchor_average"]
    for name, value in weights(straight).items():
        assert np.array_equal(weights(resumed)[name], value), name
    assert dl.get_dl_model_param(dl.read_dl_model(tmp_path / "slim.onnx"), "positive_anchor_average") == 100.0


def test_a_failed_step_leaves_the_average_as_it_was(monkeypatch):
    model = tiny_model(batch_size=2, batch_size_multiplier=2)
    dl.train_dl_model_batch(model, tiny_samples(4, seed=80))
    before = snapshot(model)
    fail_on_engine_run(monkeypatch, 2, RuntimeError)
    with pytest.raises(RuntimeError):
        dl.train_dl_model_batch(model, tiny_samples(4, seed=81))
    assert_unchanged(before, model)
    assert model.params["positive_anchor_average"] == before["params"]["positive_anchor_average"]


def test_loss_hyper_parameters_change_without_rebuild():
    model = tiny_model()
    dl.set_dl_model_param(model, "weight_prior", 0.01)  # positive: changing it keeps the session (0 leaves it out)
    samples = tiny_samples(4, seed=4)
    dl.train_dl_model_batch(model, samples)
    session = model._trainer.session
    for name, value in [("class_weights", [0.9, 0.1]), ("class_heads_weight", 2.0), ("bbox_heads_weight", 0.0),
                        ("min_confidence", 0.2), ("max_overlap", 0.3), ("weight_prior", 0.1)]:
        dl.set_dl_model_param(model, name, value)
        expected, _ = reference(model, samples)
        result = dl.train_dl_model_batch(model, samples)
        assert model._trainer.session is session, name
        for key, value in expected.items():
            assert result[key] == pytest.approx(value, rel=RTOL, abs=1e-12), (name, key)


def test_images_without_boxes_train_on_the_focal_loss_alone():
    model = tiny_model()
    empty = _empty(tiny_samples(4, seed=5))
    expected, _ = reference(model, empty)
    result = dl.train_dl_model_batch(model, empty)
    assert result["loss_huber_level_1"] == 0.0 and result["loss_huber_level_2"] == 0.0
    assert result["loss_focal_level_1"] == pytest.approx(expected["loss_focal_level_1"], rel=RTOL)


def test_a_step_without_weight_applies_no_update():
    """Both head weights 0: the losses are 0 and nothing changes (as an all-ignored segmentation step)."""
    model = tiny_model(class_heads_weight=0.0, bbox_heads_weight=0.0, weight_prior=0.1)
    dl.train_dl_model_batch(model, tiny_samples(4, seed=10))
    before = snapshot(model)
    result = dl.train_dl_model_batch(model, tiny_samples(4, seed=11))
    assert all(value == 0.0 for key, value in result.items() if key.startswith(("loss_focal", "loss_huber")))
    assert_unchanged(before, model)


def test_a_detector_ending_in_logits_gets_its_sigmoid_for_inference():
    with_sigmoid = tiny_model(min_confidence=0.1)
    network = tiny_network()
    kept = [n for n in network.graph.node if n.op_type != "Sigmoid"]
    del network.graph.node[:]
    network.graph.node.extend(kept)
    for output, level in zip(network.graph.output, TINY_LEVELS):
        output.name = f"logits{level}"
    logits_only = from_network(network, "detection", {**TINY_PARAMS, "batch_size": 4, "min_confidence": 0.1})
    samples = tiny_samples(4, seed=12)
    expected, found = dl.apply_dl_model(with_sigmoid, samples), dl.apply_dl_model(logits_only, samples)
    assert sum(len(r["bbox_row1"]) for r in found) > 0
    for a, b in zip(expected, found):
        for key in ("bbox_row1", "bbox_col2", "bbox_class_id", "bbox_confidence"):
            np.testing.assert_array_equal(a[key], b[key])
    assert dl.train_dl_model_batch(logits_only, samples)["total_loss"] == pytest.approx(
        dl.train_dl_model_batch(with_sigmoid, samples)["total_loss"], rel=1e-6)


# -- bad samples ----------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"bbox_row2": [0.0, 5.0]}, r"sample 1, key 'bbox_row2': expected a value greater than bbox_row1"),
    ({"bbox_col2": [3.0, 3.0]}, r"sample 1, key 'bbox_col2': expected a value greater than bbox_col1"),
    ({"bbox_col2": [4.0, 9.0]}, r"sample 1, key 'bbox_col2': expected coordinates inside the image, -0.5 .. 7.5"),
    ({"bbox_row1": [-2.0, 1.0]}, r"sample 1, key 'bbox_row1': expected coordinates inside the image"),
    ({"bbox_row1": [1.0]}, r"sample 1, key 'bbox_label_id': expected one value per box .* lengths \[1, 2, 2, 2, 2\]"),
    ({"bbox_label_id": [3, 5]}, r"sample 1, key 'bbox_label_id': expected ids in the model's class_ids \[3, 7\], got \[5\]"),
    ({"bbox_label_id": [3.0, 7.5]}, r"sample 1, key 'bbox_label_id': expected integer class ids"),
    ({"bbox_col1": [np.nan, 1.0]}, r"sample 1, key 'bbox_col1': expected finite coordinates, got nan"),
    ({"bbox_row2": [np.inf, 5.0]}, r"sample 1, key 'bbox_row2': expected finite coordinates"),
    ({"bbox_row1": np.zeros((2, 1))}, r"sample 1, key 'bbox_row1': expected a 1-D numeric array"),
    ({"bbox_col1": "0, 1"}, r"sample 1, key 'bbox_col1': expected a 1-D numeric array"),
    ({"bbox_label_id": None}, r"sample 1, key 'bbox_label_id': expected a 1-D numeric array"),
])
def test_bad_boxes_are_refused_and_change_nothing(change, message):
    model = tiny_model()
    dl.train_dl_model_batch(model, tiny_samples(4, seed=6))
    before = snapshot(model)
    samples = tiny_samples(4, seed=7)
    samples[1] = {**samples[1], "bbox_row1": [1.0, 2.0], "bbox_col1": [1.0, 3.0], "bbox_row2": [4.0, 5.0],
                  "bbox_col2": [4.0, 6.0], "bbox_label_id": [3, 7]}
    samples[1].update(change)
    with pytest.raises(dl.DLSampleError, match=message):
        dl.train_dl_model_batch(model, samples)
    assert_unchanged(before, model)


def test_a_missing_box_key_names_it():
    model = tiny_model()
    samples = tiny_samples(4, seed=8)
    del samples[2]["bbox_col1"]
    with pytest.raises(dl.DLSampleError, match=r"sample 2: missing key 'bbox_col1'"):
        dl.train_dl_model_batch(model, samples)


# -- parameters -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compact_detector() -> dl.DLModel:
    """The bundled classifier as backbone, 64 x 64, levels 2..4, low capacity."""
    return dl.create_dl_model_detection("classifier_compact", 3, {"image_width": 64, "image_height": 64,
                                                                  "capacity": "low", "batch_size": 2})


def test_detection_defaults(compact_detector):
    get = lambda name: dl.get_dl_model_param(compact_detector, name)
    assert get("type") == "detection" and get("num_classes") == 3 and get("class_ids") == [0, 1, 2]
    assert get("class_weights") == [0.25, 0.25, 0.25]
    assert (get("min_level"), get("max_level"), get("anchor_num_subscales")) == (2, 4, 3)
    assert get("anchor_aspect_ratios") == [1.0, 2.0, 0.5] and get("instance_type") == "rectangle1"
    assert (get("min_confidence"), get("max_overlap"), get("max_overlap_class_agnostic")) == (0.5, 0.5, 1.0)
    assert (get("max_num_detections"), get("bbox_heads_weight"), get("class_heads_weight")) == (100, 1.0, 1.0)
    assert get("backbone") == "classifier_compact" and get("image_dimensions") == [64, 64, 3]
    assert get("backbone_docking_layers") == ["stage1.conv.relu", "stage2.conv.relu", "stage3.down.relu"]


@pytest.mark.parametrize("name, value, message", [
    ("min_level", 3, "fixed when the model is created"),
    ("anchor_aspect_ratios", [1.0], "fixed when the model is created"),
    ("capacity", "high", "fixed when the model is created"),
    ("image_dimensions", [128, 128, 3], "fixed when the model is created"),
    ("image_width", 128, "fixed when the model is created"),
    ("instance_type", "rectangle2", "fixed when the model is created"),
    ("backbone", "other", "read-only"),
    ("class_ids", [0, 1], "keeps the 3 classes"),
    ("class_weights", [0.25, 1.5, 0.25], r"focal alphas in \[0, 1\]"),
    ("class_weights", [0.25, 0.25], "expected 3 weights"),
    ("min_confidence", 1.5, r"\[0, 1\]"),
    ("max_overlap", -0.1, r"\[0, 1\]"),
    ("max_num_detections", 0, ">= 1"),
    ("bbox_heads_weight", -1.0, ">= 0"),
    ("ignore_class_ids", [4], "does not apply"),
])
def test_bad_or_fixed_parameters_raise_and_change_nothing(compact_detector, name, value, message):
    before = snapshot(compact_detector)
    with pytest.raises(dl.DLParamError, match=message):
        dl.set_dl_model_param(compact_detector, name, value)
    assert_unchanged(before, compact_detector)


def test_settable_detection_parameters():
    model = dl.create_dl_model_detection("classifier_compact", 3, {"image_width": 64, "image_height": 64,
                                                                   "capacity": "low"})
    for name, value in [("class_ids", [5, 6, 9]), ("class_weights", [0.1, 0.5, 1.0]), ("min_confidence", 0.3),
                        ("max_overlap_class_agnostic", 0.7), ("max_num_detections", 20)]:
        dl.set_dl_model_param(model, name, value)
        assert dl.get_dl_model_param(model, name) == pytest.approx(value, rel=1e-7)


@pytest.mark.parametrize("params, message", [
    ({"instance_type": "mask"}, "'rectangle1' \\(axis-parallel boxes\\) or 'rectangle2' \\(oriented boxes\\)"),
    ({"instance_type": "rectangle2", "anchor_angles": []}, "a non-empty list of finite angles"),
    ({"instance_type": "rectangle2", "class_ids_no_orientation": [7]}, r"expected ids of the model's class_ids"),
    ({"image_width": 100, "image_height": 96}, r"divisible by 2\*\*4 = 16 .* got 100 x 96"),
    ({"min_level": 4, "max_level": 3}, "'min_level' <= 'max_level'"),
    ({"image_num_channels": 1}, "the backbone takes 3"),
    ({"class_ids": [1, 2]}, r"expected 3 ids \(num_classes\)"),
    ({"no_such": 1}, "unknown model parameter"),
    ({"backbone_docking_layers": ["stage1.conv.relu", "stage1.down.relu"]}, "are both of level 2"),
    ({"backbone_docking_layers": ["features"]}, r"'features' has shape \[1, 128\]"),
    ({"backbone_docking_layers": ["pool"]}, r"'pool' is of level 6 \(stride 64\), above max_level 4"),
    ({"backbone_docking_layers": ["stage2.conv.relu"]}, r"no feature map for level\(s\) \[2\]"),
])
def test_bad_creation_parameters(params, message):
    with pytest.raises(dl.DLParamError, match=message):
        dl.create_dl_model_detection("classifier_compact", 3, {"image_width": 64, "image_height": 64, **params})


def test_bad_backbones_and_class_counts(tmp_path):
    with pytest.raises(dl.DLParamError, match="num_classes: expected an int >= 1"):
        dl.create_dl_model_detection("classifier_compact", 0)
    with pytest.raises(dl.DLParamError, match="expected a classification model"):
        dl.create_dl_model_detection(dl.read_dl_model("segmentation_compact"), 2)
    with pytest.raises(dl.DLModelFileError, match="does not exist"):
        dl.create_dl_model_detection(str(tmp_path / "missing.onnx"), 2)


# -- the builder ----------------------------------------------------------------------------------
def test_builder_docks_on_the_last_map_of_each_stride_and_shares_the_heads():
    model = dl.create_dl_model_detection("classifier_compact", 2, {"image_width": 128, "image_height": 128,
                                                                   "min_level": 3, "max_level": 5,
                                                                   "anchor_aspect_ratios": [1.0]})
    network = model.network()
    backbone = dl.read_dl_model("classifier_compact").network()
    maps = detection_builder.docking_layers(backbone, model.params)
    assert {level: name for level, (name, _) in maps.items()} == {3: "stage2.conv.relu", 4: "stage3.down.relu"}
    outputs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in network.graph.output}
    assert outputs == {"class_scores_level_3": ["N", 6, 16, 16], "class_scores_level_4": ["N", 6, 8, 8],
                       "class_scores_level_5": ["N", 6, 4, 4], "box_deltas_level_3": ["N", 12, 16, 16],
                       "box_deltas_level_4": ["N", 12, 8, 8], "box_deltas_level_5": ["N", 12, 4, 4]}
    assert not any(i.name.startswith("classifier.") for i in network.graph.initializer)
    head_convs = [n for n in network.graph.node if n.op_type == "Conv" and "head.class.output" in n.input[1]]
    assert len(head_convs) == 3 and len({tuple(n.input[1:]) for n in head_convs}) == 1  # one set of weights
    bias = numpy_helper.to_array(next(i for i in network.graph.initializer if i.name == head_convs[0].input[2]))
    np.testing.assert_allclose(bias, -np.log(99.0), rtol=1e-6)
    session = ort.InferenceSession(network.SerializeToString(), providers=["CPUExecutionProvider"])
    scores = session.run(["class_scores_level_3"], {"image": np.zeros((1, 3, 128, 128), np.float32)})[0]
    assert abs(float(scores.mean()) - 0.01) < 0.005  # every anchor starts near probability 0.01


def test_named_docking_layers_and_levels_above_the_backbone():
    model = dl.create_dl_model_detection("classifier_compact", 1, {
        "image_width": 64, "image_height": 64, "min_level": 2, "max_level": 6, "capacity": "low", "batch_size": 2,
        "backbone_docking_layers": ["stage1.down.relu", "stage2.down.relu"]})
    shapes = {o.name: o.type.tensor_type.shape.dim[2].dim_value for o in model.network().graph.output}
    assert [shapes[f"box_deltas_level_{level}"] for level in range(2, 7)] == [16, 8, 4, 2, 1]
    assert {"detector.fpn.extra4.weight", "detector.fpn.extra6.weight"} <= {
        i.name for i in model.network().graph.initializer}
    samples = detection_samples(2, 64, seed=1, max_shapes=2)
    assert np.isfinite(dl.train_dl_model_batch(model, [{**s, "bbox_label_id": np.zeros_like(s["bbox_label_id"])}
                                                       for s in samples])["total_loss"])


# -- files and the NMS export ---------------------------------------------------------------------
def _compact(**params: Any) -> dl.DLModel:
    settings = {"image_width": 64, "image_height": 64, "capacity": "low", "batch_size": 4, "solver_type": "adam",
                "learning_rate": 2e-3, **params}
    return dl.create_dl_model_detection("classifier_compact", 3, settings)


def test_write_read_continue_is_bit_exact_and_the_file_runs_in_onnxruntime(tmp_path):
    batches = [detection_samples(4, 64, seed=10 + i, max_shapes=2) for i in range(4)]
    straight = _compact()
    for batch in batches:
        dl.train_dl_model_batch(straight, batch)
    resumed = _compact()
    for batch in batches[:2]:
        dl.train_dl_model_batch(resumed, batch)
    path = tmp_path / "detector.onnx"
    dl.write_dl_model(resumed, path)
    again = dl.read_dl_model(path)
    assert dl.get_dl_model_param(again, "type") == "detection" and again.params == resumed.params
    for batch in batches[2:]:
        dl.train_dl_model_batch(again, batch)
    for name, value in weights(straight).items():
        assert np.array_equal(weights(again)[name], value), name
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.stack([s["image"].transpose(2, 0, 1) for s in batches[0]])
    heads = session.run(None, {"image": images})
    assert [o.name for o in session.get_outputs()] == [o.name for o in resumed.network().graph.output]
    for got, expected in zip(heads, resumed.predict(images)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _export_matches_apply(model: dl.DLModel, samples: list[dict[str, Any]], path: Path) -> int:
    results = dl.apply_dl_model(model, samples)
    dl.write_dl_model(model, path, postprocess=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    channels_first = np.stack([s["image"].transpose(2, 0, 1) if s["image"].ndim == 3 else s["image"][None]
                               for s in samples]).astype(np.float32)
    found = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": channels_first})))
    for n, result in enumerate(results):
        mine = found["bbox_image_index"] == n
        assert mine.sum() == len(result["bbox_row1"]), n
        for key in ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2", "bbox_confidence"):
            np.testing.assert_allclose(found[key][mine], result[key], rtol=1e-4, atol=1e-4)
        assert np.array_equal(found["bbox_class_id"][mine], result["bbox_class_id"])
        assert list(found["bbox_class_name"][mine]) == result["bbox_class_name"]
    return len(found["bbox_image_index"])


@pytest.mark.parametrize("agnostic, cap", [(1.0, 100), (0.3, 5)])
def test_export_with_nms_reproduces_apply(tmp_path, agnostic, cap):
    model = _compact(min_confidence=0.05, max_overlap=0.4, max_overlap_class_agnostic=agnostic,
                     max_num_detections=cap, class_names=["circle", "square", "triangle"])
    train = detection_samples(60, 64, seed=20, max_shapes=3)
    for step in range(15):
        dl.train_dl_model_batch(model, train[4 * step:4 * step + 4])
    detections = _export_matches_apply(model, detection_samples(6, 64, seed=21), tmp_path / "boxes.onnx")
    assert detections > 6  # the comparison saw boxes
    with pytest.raises(dl.DLModelFileError, match="cannot be trained"):
        dl.read_dl_model(tmp_path / "boxes.onnx")


@pytest.mark.parametrize("agnostic", [1.0, 0.5])
def test_export_keeps_the_tie_order_of_apply(tmp_path, agnostic):
    """Class weights 0: every anchor of a class scores the same; NMS and the cap must pick the same boxes."""
    model = tiny_model(class_scale=0.0, min_confidence=0.0, max_overlap_class_agnostic=agnostic,
                       max_num_detections=7)
    assert _export_matches_apply(model, tiny_samples(3, seed=9), tmp_path / "ties.onnx") == 21


def test_postprocess_export_is_for_detectors_only(tmp_path):
    with pytest.raises(dl.DLParamError, match="applies to detection models"):
        dl.write_dl_model(dl.read_dl_model("classifier_compact"), tmp_path / "c.onnx", postprocess=True)


def test_export_refuses_more_pairs_than_float32_ranks_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(detection_postprocess, "MAX_PAIRS", 100)
    with pytest.raises(dl.DLParamError, match=r"\(anchor, class\) pairs per image"):
        dl.write_dl_model(tiny_model(), tmp_path / "big.onnx", postprocess=True)
    assert not (tmp_path / "big.onnx").exists()


def test_freeze_backbone_keeps_the_classifier_fixed_and_trains_pyramid_and_heads() -> None:
    model = dl.create_dl_model_detection("classifier_compact", 3, {"image_width": 64, "image_height": 64,
                                                                   "min_level": 3, "max_level": 4,
                                                                   "capacity": "low", "batch_size": 2})
    dl.set_dl_model_param(model, "freeze_backbone", True)
    before = weights(model)
    dl.train_dl_model_batch(model, detection_samples(2, 64, seed=3))
    after = weights(model)
    moved = {name for name in after if not np.array_equal(before[name], after[name])}
    assert moved and all(name.startswith(detection_builder.PREFIX) for name in moved), sorted(moved)[:5]
    assert any(name.startswith(detection_builder.PREFIX) and "bn.running" in name for name in moved)  # FPN BN trains
    assert not any("running" in name for name in moved if not name.startswith(detection_builder.PREFIX))


# -- evaluation -----------------------------------------------------------------------------------
def test_evaluation_ranks_every_detection_down_to_the_floor_whatever_min_confidence():
    """evaluate_dl_model measures the detections scoring >= EVALUATION_MIN_CONFIDENCE (0.05), not those
    above the display threshold min_confidence, and leaves min_confidence as it was."""
    from onnx_dl.evaluation import EVALUATION_MIN_CONFIDENCE, detection_measures, evaluate_dl_model

    model = _compact(min_confidence=0.5)
    train = detection_samples(120, 64, seed=93, max_shapes=3)
    for step in range(30):
        dl.train_dl_model_batch(model, train[4 * step:4 * step + 4])
    samples = detection_samples(16, 64, seed=94, max_shapes=3)
    measures = evaluate_dl_model(model, samples=samples)
    assert dl.get_dl_model_param(model, "min_confidence") == 0.5
    dl.set_dl_model_param(model, "min_confidence", 0.9)
    again = evaluate_dl_model(model, samples=samples)
    assert dl.get_dl_model_param(model, "min_confidence") == 0.9
    dl.set_dl_model_param(model, "min_confidence", EVALUATION_MIN_CONFIDENCE)
    floor_results = dl.apply_dl_model(model, samples)
    expected = detection_measures(floor_results, samples, [0, 1, 2])
    for key in ("map_50", "map_50_95"):
        assert measures[key] == again[key] == pytest.approx(expected[key], rel=1e-12), key
    dl.set_dl_model_param(model, "min_confidence", 0.5)
    display = dl.apply_dl_model(model, samples)
    assert sum(len(r["bbox_row1"]) for r in display) < sum(len(r["bbox_row1"]) for r in floor_results)
    assert detection_measures(display, samples, [0, 1, 2])["map_50"] < expected["map_50"]


def test_a_failed_evaluation_changes_nothing():
    from onnx_dl.evaluation import evaluate_dl_model

    model = tiny_model(min_confidence=0.3)
    dl.train_dl_model_batch(model, tiny_samples(4, seed=91))
    before = snapshot(model)
    samples = tiny_samples(4, seed=92)
    del samples[1]["bbox_label_id"]
    with pytest.raises(dl.DLSampleError, match="bbox_label_id"):
        evaluate_dl_model(model, samples=samples)
    assert_unchanged(before, model)
