"""Exact resume: write, read and continue equals the uninterrupted run, bit for bit on CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_dl as dl
from conftest import bn_network, image_samples, load, weights


def _batches():
    return [image_samples(4, [0, 1, 2], seed=s, scale=2.0) for s in range(6)]


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_resume_is_bit_exact(tmp_path, solver):
    settings = dict(batch_size=4, solver_type=solver, learning_rate=0.02, weight_prior=0.01)
    straight = load(tmp_path, bn_network(), **settings)
    first = load(tmp_path, bn_network(), **settings)
    batches = _batches()
    straight_losses = [dl.train_dl_model_batch(straight, b) for b in batches]
    for b in batches[:3]:
        dl.train_dl_model_batch(first, b)
    path = tmp_path / "halfway.onnx"
    dl.write_dl_model(first, path)
    resumed = dl.read_dl_model(path)
    resumed_losses = [dl.train_dl_model_batch(resumed, b) for b in batches[3:]]
    assert resumed_losses == straight_losses[3:]
    for name, value in weights(straight).items():
        assert np.array_equal(weights(resumed)[name], value), name


def test_two_identical_runs_are_bit_identical(tmp_path):
    a, b = (load(tmp_path, bn_network(), batch_size=4, learning_rate=0.05) for _ in range(2))
    for batch in _batches():
        assert dl.train_dl_model_batch(a, batch) == dl.train_dl_model_batch(b, batch)
    for name, value in weights(a).items():
        assert np.array_equal(weights(b)[name], value)


def test_inference_export_can_leave_the_solver_state_out(tmp_path):
    model = load(tmp_path, bn_network(), batch_size=4, solver_type="adam")
    dl.train_dl_model_batch(model, _batches()[0])
    full, slim = tmp_path / "full.onnx", tmp_path / "slim.onnx"
    dl.write_dl_model(model, full)
    dl.write_dl_model(model, slim, include_solver_state=False)
    keys = lambda p: {m.key for m in onnx.load(p).metadata_props}  # noqa: E731
    assert keys(full) == {"onnx_dl", "onnx_dl.solver_state"} and keys(slim) == {"onnx_dl"}
    assert full.stat().st_size > slim.stat().st_size


def test_corrupt_solver_state_is_refused(tmp_path):
    model = load(tmp_path, bn_network(), batch_size=4)
    dl.train_dl_model_batch(model, _batches()[0])
    path = tmp_path / "m.onnx"
    dl.write_dl_model(model, path)
    proto = onnx.load(path)
    for entry in proto.metadata_props:
        if entry.key == "onnx_dl.solver_state":
            entry.value = "not base64 !"
    onnx.save(proto, path)
    with pytest.raises(dl.DLModelFileError, match="solver state"):
        dl.read_dl_model(path)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_interrupt_between_chunks_changes_nothing(tmp_path, monkeypatch, failure):
    """Ctrl-C (or an engine error) after the first chunk: weights, solver state and steps stay as they were."""
    from conftest import assert_unchanged, fail_on_engine_run, snapshot

    model = load(tmp_path, bn_network(), batch_size=2, batch_size_multiplier=2)
    dl.train_dl_model_batch(model, _batches()[0])
    before = snapshot(model)
    fail_on_engine_run(monkeypatch, 2, failure)
    with pytest.raises(failure):
        dl.train_dl_model_batch(model, _batches()[1])
    monkeypatch.undo()
    assert_unchanged(before, model)
    # the next step starts from fresh gradients: it equals the same step on an untouched copy
    twin = load(tmp_path, bn_network(), batch_size=2, batch_size_multiplier=2)
    dl.train_dl_model_batch(twin, _batches()[0])
    assert dl.train_dl_model_batch(model, _batches()[2]) == dl.train_dl_model_batch(twin, _batches()[2])
    for name, value in weights(twin).items():
        assert np.array_equal(weights(model)[name], value), name
