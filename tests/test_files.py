"""Reading and writing: round trips, plain-onnxruntime parity, atomic writes, clear errors."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_dl as dl
from conftest import image_samples, linear_network, load, weights


def test_round_trip_restores_parameters_and_weights(tmp_path, linear_model):
    for name, value in [("class_ids", [4, 5, 6]), ("class_names", ["a", "b", "c"]), ("learning_rate", 0.02),
                        ("solver_type", "adam"), ("weight_prior", 0.001), ("class_weights", [1.0, 2.0, 0.5])]:
        dl.set_dl_model_param(linear_model, name, value)
    for seed in range(3):
        dl.train_dl_model_batch(linear_model, image_samples(4, [4, 5, 6], seed=seed))
    path = tmp_path / "model.onnx"
    dl.write_dl_model(linear_model, path)
    again = dl.read_dl_model(path)
    for name in ["type", "class_ids", "class_names", "learning_rate", "solver_type", "weight_prior", "class_weights",
                 "batch_size", "image_dimensions", "momentum", "adam_beta2"]:
        assert dl.get_dl_model_param(again, name) == dl.get_dl_model_param(linear_model, name), name
    for name, value in weights(linear_model).items():
        assert np.array_equal(weights(again)[name], value)
    assert np.isfinite(dl.train_dl_model_batch(again, image_samples(4, [4, 5, 6]))["total_loss"])


def test_written_file_is_plain_onnx_with_the_same_confidences(tmp_path, linear_model):
    for seed in range(2):
        dl.train_dl_model_batch(linear_model, image_samples(4, [0, 1, 2], seed=seed))
    path = tmp_path / "plain.onnx"
    dl.write_dl_model(linear_model, path)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    test = image_samples(6, [0], seed=42)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.stack([s["image"].transpose(2, 0, 1) for s in test])
    plain = session.run(None, {"image": batch})[0]
    for row, result in zip(plain, dl.apply_dl_model(linear_model, test)):
        got = dict(zip(result["classification_class_ids"], result["classification_confidences"]))
        np.testing.assert_allclose([got[i] for i in range(3)], row, rtol=1e-6)


def test_repeated_round_trips_keep_one_softmax(tmp_path, linear_model):
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    dl.write_dl_model(linear_model, first)
    dl.write_dl_model(dl.read_dl_model(first), second)
    ops = [n.op_type for n in onnx.load(second).graph.node]
    assert ops.count("Softmax") == 1


def test_write_is_atomic(tmp_path, linear_model, monkeypatch):
    """A crash while the new file is written leaves the old file intact and no temporary behind."""
    path = tmp_path / "model.onnx"
    dl.write_dl_model(linear_model, path)
    old = path.read_bytes()
    dl.train_dl_model_batch(linear_model, image_samples(4, [0, 1, 2]))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(dl.DLModelFileError, match="disk full"):
        dl.write_dl_model(linear_model, path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_written_file_mode_follows_umask(tmp_path, linear_model):
    path = tmp_path / "model.onnx"
    dl.write_dl_model(linear_model, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("content, message", [
    (b"definitely not a model", "not an ONNX model"),
    (b"", "not an ONNX model"),
    (bytes(range(256)) * 10, "not an ONNX model"),
])
def test_non_onnx_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(dl.DLModelFileError, match=message):
        dl.read_dl_model(path, type="classification")


def test_missing_files_and_names(tmp_path):
    with pytest.raises(dl.DLModelFileError, match="does not exist"):
        dl.read_dl_model(tmp_path / "nothing.onnx")
    with pytest.raises(dl.DLModelFileError, match="no bundled model of that name.*classifier_compact"):
        dl.read_dl_model("classifier_huge")


def test_foreign_model_needs_a_type(tmp_path):
    path = tmp_path / "foreign.onnx"
    onnx.save(linear_network(), path)
    with pytest.raises(dl.DLModelFileError, match="type='classification'"):
        dl.read_dl_model(path)
    with pytest.raises(dl.DLParamError, match="not supported"):
        dl.read_dl_model(path, type="anomaly_detection")


def test_written_type_must_match(tmp_path, linear_model):
    path = tmp_path / "m.onnx"
    dl.write_dl_model(linear_model, path)
    with pytest.raises(dl.DLModelFileError, match="holds a classification model"):
        dl.read_dl_model(path, type="segmentation")


def test_bundled_classifier_defaults():
    model = dl.read_dl_model("classifier_compact")
    assert "classifier_compact" in dl.bundled_models()
    assert dl.get_dl_model_param(model, "image_dimensions") == [224, 224, 3]
    assert dl.get_dl_model_param(model, "image_range_min") == -127.0
    assert dl.get_dl_model_param(model, "image_range_max") == 128.0
    result = dl.apply_dl_model(model, [{"image": np.zeros((224, 224, 3), np.float32)}])
    assert len(result[0]["classification_class_ids"]) == dl.get_dl_model_param(model, "num_classes")


def test_opset_outside_the_engine_range_is_converted(tmp_path):
    model = load(tmp_path, linear_network(opset=11), batch_size=4)
    assert np.isfinite(dl.train_dl_model_batch(model, image_samples(4, [0, 1, 2]))["total_loss"])
