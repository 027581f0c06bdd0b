"""The parameter table: defaults, types, ranges, read-only names, class changes, image size."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_dl as dl
from conftest import CHANNELS, SIZE, assert_unchanged, image_samples, linear_network, load, snapshot, weights
from onnx_dl import params as P


def test_defaults_of_a_foreign_network(linear_model):
    get = lambda name: dl.get_dl_model_param(linear_model, name)  # noqa: E731
    assert get("type") == "classification" and get("runtime") == "cpu" and get("solver_type") == "sgd"
    assert get("class_ids") == [0, 1, 2] and get("num_classes") == 3 and get("class_names") == ["0", "1", "2"]
    assert get("class_weights") == [1.0, 1.0, 1.0]
    assert get("image_dimensions") == [SIZE, SIZE, CHANNELS]
    assert get("momentum") == 0.9 and get("adam_beta1") == 0.9 and get("adam_beta2") == 0.999
    assert get("adam_epsilon") == 1e-8 and get("weight_prior") == 0.0 and get("batch_size_multiplier") == 1
    assert get("image_range_min") == -127.0 and get("image_range_max") == 128.0
    assert get("num_trainable_params") == 3 * CHANNELS * SIZE * SIZE + 3


def test_every_spec_has_a_doc_and_a_valid_default():
    for spec in P.SPECS.values():
        assert spec.doc
        if spec.default is not None and spec.settable:
            assert spec.check(spec.default) is None, spec.name


@pytest.mark.parametrize("name, value, message", [
    ("no_such_param", 1, "unknown model parameter"),
    ("batch_size", 0, "expected a value >= 1"),
    ("batch_size", 2.5, "expected an int"),
    ("batch_size", True, "expected an int"),
    ("learning_rate", 0.0, "expected a value > 0"),
    ("learning_rate", "fast", "expected a number"),
    ("learning_rate", float("nan"), "finite"),
    ("momentum", 1.0, r"\[0, 1\)"),
    ("solver_type", "rmsprop", "one of"),
    ("runtime", "tpu", "one of"),
    ("adam_epsilon", -1e-8, "> 0"),
    ("weight_prior", -0.1, ">= 0"),
    ("class_ids", [0, 0, 1], "unique"),
    ("class_ids", [], "at least one"),
    ("class_names", ["a", "b"], "expected 3 names"),
    ("class_weights", [1.0, 2.0], "expected 3 weights"),
    ("class_weights", [1.0, -2.0, 1.0], ">= 0"),
    ("image_range_min", 200.0, "image_range_min"),
    ("type", "segmentation", "read-only"),
    ("num_classes", 5, "read-only"),
    ("image_num_channels", 3, "read-only"),
    ("image_dimensions", [SIZE, SIZE, 3], "channels"),
    ("ignore_class_ids", [1], "does not apply"),
])
def test_bad_values_raise_and_change_nothing(linear_model, name, value, message):
    dl.train_dl_model_batch(linear_model, image_samples(4, [0, 1, 2]))
    before = snapshot(linear_model)
    with pytest.raises(dl.DLParamError, match=message):
        dl.set_dl_model_param(linear_model, name, value)
    assert_unchanged(before, linear_model)


def test_values_are_coerced_to_plain_python(linear_model):
    dl.set_dl_model_param(linear_model, "learning_rate", np.float32(0.5))
    dl.set_dl_model_param(linear_model, "batch_size", np.int64(2))
    dl.set_dl_model_param(linear_model, "class_weights", np.array([1, 2, 3]))
    dl.set_dl_model_param(linear_model, "class_names", ("a", "b", "c"))
    assert dl.get_dl_model_param(linear_model, "learning_rate") == 0.5
    assert type(dl.get_dl_model_param(linear_model, "batch_size")) is int
    assert dl.get_dl_model_param(linear_model, "class_weights") == [1.0, 2.0, 3.0]
    assert dl.get_dl_model_param(linear_model, "class_names") == ["a", "b", "c"]


def test_relabelling_keeps_the_layer(linear_model):
    before = weights(linear_model)["fc.weight"]
    dl.set_dl_model_param(linear_model, "class_ids", [7, 3, 5])
    assert np.array_equal(weights(linear_model)["fc.weight"], before)
    dl.set_dl_model_param(linear_model, "batch_size", 3)
    dl.train_dl_model_batch(linear_model, image_samples(3, [7, 3, 5]))
    assert dl.apply_dl_model(linear_model, image_samples(1, [7]))[0]["classification_class_ids"][0] in (7, 3, 5)


def test_new_class_count_replaces_the_classification_layer(linear_model):
    dl.train_dl_model_batch(linear_model, image_samples(4, [0, 1, 2]))
    dl.set_dl_model_param(linear_model, "class_ids", [10, 11, 12, 13, 14])
    w = weights(linear_model)
    assert w["fc.weight"].shape == (5, CHANNELS * SIZE * SIZE) and w["fc.bias"].shape == (5,)
    assert np.all(w["fc.bias"] == 0) and 0.005 < w["fc.weight"].std() < 0.015  # Normal(0, 0.01)
    assert dl.get_dl_model_param(linear_model, "num_classes") == 5
    assert dl.get_dl_model_param(linear_model, "class_names") == ["10", "11", "12", "13", "14"]
    assert dl.get_dl_model_param(linear_model, "class_weights") == [1.0] * 5
    losses = [dl.train_dl_model_batch(linear_model, image_samples(4, [10, 14, 12, 11], seed=1))["total_loss"]
              for _ in range(20)]
    assert losses[-1] < losses[0]
    result = dl.apply_dl_model(linear_model, image_samples(2, [10]))
    assert sorted(result[0]["classification_class_ids"]) == [10, 11, 12, 13, 14]


def test_image_size_change_rebuilds_and_trains():
    model = dl.read_dl_model("classifier_compact")
    dl.set_dl_model_param(model, "class_ids", [0, 1])
    dl.set_dl_model_param(model, "batch_size", 2)
    for size in (32, 48):
        dl.set_dl_model_param(model, "image_dimensions", [size, size + 8, 3])
        samples = [{"image": np.zeros((size + 8, size, 3), np.float32), "image_label_id": i} for i in (0, 1)]
        assert np.isfinite(dl.train_dl_model_batch(model, samples)["total_loss"])
    assert dl.get_dl_model_param(model, "image_width") == 48
    assert dl.get_dl_model_param(model, "image_height") == 56


def test_size_a_fixed_network_cannot_take_is_refused(tmp_path):
    model = load(tmp_path, linear_network())
    with pytest.raises(dl.DLParamError, match="does not accept"):
        dl.set_dl_model_param(model, "image_width", 8)
    assert dl.get_dl_model_param(model, "image_width") == SIZE


def test_gpu_runtime_needs_cuda_and_says_what_to_install(linear_model):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        dl.set_dl_model_param(linear_model, "runtime", "gpu")
        assert dl.get_dl_model_param(linear_model, "runtime") == "gpu"
        return
    with pytest.raises(dl.DLRuntimeError, match=r"onnx_dl\[cuda\]"):
        dl.set_dl_model_param(linear_model, "runtime", "gpu")
    assert dl.get_dl_model_param(linear_model, "runtime") == "cpu"
