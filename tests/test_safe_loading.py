"""Untrusted files: external data and symbolic links stay inside the model's folder; size limit."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import onnx_dl as dl
from conftest import image_samples, linear_network


def _external(folder, location="weights.bin"):
    folder.mkdir(exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(linear_network(), path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    model = dl.read_dl_model(_external(tmp_path / "m"), type="classification")
    dl.set_dl_model_param(model, "batch_size", 3)
    assert np.isfinite(dl.train_dl_model_batch(model, image_samples(3, [0, 1, 2]))["total_loss"])


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    path = _external(tmp_path / "m")
    (tmp_path / "secret.bin").write_bytes(b"\0" * 1024)
    proto = onnx.load(path, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, path)
    with pytest.raises(dl.DLModelFileError, match="outside the model's folder"):
        dl.read_dl_model(path, type="classification")


def test_external_data_through_an_escaping_symlink_is_refused(tmp_path):
    path = _external(tmp_path / "m")
    outside = tmp_path / "elsewhere.bin"
    os.replace(tmp_path / "m" / "weights.bin", outside)
    os.symlink(outside, tmp_path / "m" / "weights.bin")
    with pytest.raises(dl.DLModelFileError, match="outside the model's folder"):
        dl.read_dl_model(path, type="classification")


def test_model_symlink_escaping_its_folder_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    onnx.save(linear_network(), tmp_path / "real" / "model.onnx")
    os.symlink(tmp_path / "real" / "model.onnx", tmp_path / "links" / "model.onnx")
    with pytest.raises(dl.DLModelFileError, match="symbolic link"):
        dl.read_dl_model(tmp_path / "links" / "model.onnx", type="classification")


def test_size_limit_needs_consent(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(linear_network(), path)
    with pytest.raises(dl.DLModelFileError, match="max_file_size=None"):
        dl.read_dl_model(path, type="classification", max_file_size=100)
    assert dl.read_dl_model(path, type="classification", max_file_size=None) is not None
