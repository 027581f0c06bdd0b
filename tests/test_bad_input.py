"""Bad input: a DLError naming the sample, the key, what was expected and what came; model unchanged."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_dl as dl
from conftest import CHANNELS, SIZE, assert_unchanged, image_samples, snapshot


def _ok(count=4):
    return image_samples(count, [0, 1, 2])


def _with(index, **changes):
    samples = _ok()
    samples[index] = {**samples[index], **changes}
    return samples


def _without(index, key):
    samples = _ok()
    samples[index] = {k: v for k, v in samples[index].items() if k != key}
    return samples


CASES = [
    ("too few samples", _ok(3), dl.DLSampleError, r"multiple of batch_size = 4 samples, got 3"),
    ("empty list", [], dl.DLSampleError, "at least one sample"),
    ("not a list", "images", dl.DLSampleError, "expected a list of sample dicts"),
    ("not a dict", [1, 2, 3, 4], dl.DLSampleError, "sample 0: expected a dict"),
    ("missing image", _without(2, "image"), dl.DLSampleError, r"sample 2: missing key 'image'"),
    ("missing label", _without(1, "image_label_id"), dl.DLSampleError, r"sample 1: missing key 'image_label_id'"),
    ("unknown label", _with(3, image_label_id=7), dl.DLSampleError,
     r"sample 3, key 'image_label_id': expected one of the model's class_ids \[0, 1, 2\], got int 7"),
    ("label of wrong type", _with(0, image_label_id="cat"), dl.DLSampleError, r"sample 0, key 'image_label_id'"),
    ("image of wrong size", _with(1, image=np.zeros((SIZE + 1, SIZE, CHANNELS), np.float32)), dl.DLSampleError,
     r"sample 1, key 'image': expected shape \(4, 4, 2\).*got shape \(5, 4, 2\)"),
    ("wrong channel count", _with(2, image=np.zeros((SIZE, SIZE, 3), np.float32)), dl.DLSampleError,
     r"sample 2, key 'image': expected shape \(4, 4, 2\).*got shape \(4, 4, 3\)"),
    ("gray image for a 2-channel model", _with(2, image=np.zeros((SIZE, SIZE), np.float32)), dl.DLSampleError,
     r"sample 2, key 'image'.*got shape \(4, 4\)"),
    ("non-numeric image", _with(0, image=np.full((SIZE, SIZE, CHANNELS), "x")), dl.DLSampleError,
     r"sample 0, key 'image': expected a numeric NumPy array"),
    ("a list, not an array", _with(0, image=[[0.0]]), dl.DLSampleError, r"sample 0, key 'image'.*got list"),
    ("NaN in image", _with(3, image=np.full((SIZE, SIZE, CHANNELS), np.nan, np.float32)), dl.DLSampleError,
     r"sample 3, key 'image': expected finite values"),
    ("infinity in image", _with(1, image=np.full((SIZE, SIZE, CHANNELS), np.inf)), dl.DLSampleError,
     r"sample 1, key 'image': expected finite values"),
]


@pytest.mark.parametrize("case, samples, error, message", CASES, ids=[c[0] for c in CASES])
def test_bad_batches_are_refused_and_change_nothing(linear_model, case, samples, error, message):
    dl.train_dl_model_batch(linear_model, _ok())  # a trained model with solver state
    before = snapshot(linear_model)
    with pytest.raises(error, match=message):
        dl.train_dl_model_batch(linear_model, samples)
    assert_unchanged(before, linear_model)


def test_multiplier_count_is_exact(linear_model):
    dl.set_dl_model_param(linear_model, "batch_size_multiplier", 2)
    with pytest.raises(dl.DLSampleError, match=r"batch_size \* batch_size_multiplier = 4 \* 2 = 8 samples, got 12"):
        dl.train_dl_model_batch(linear_model, image_samples(12, [0, 1, 2]))


def test_non_finite_loss_applies_no_update(linear_model):
    """Finite but huge pixels overflow the logits: the error names the loss part, nothing changes."""
    dl.train_dl_model_batch(linear_model, _ok())
    before = snapshot(linear_model)
    samples = _with(0, image=np.full((SIZE, SIZE, CHANNELS), 3e38, np.float32))
    with pytest.raises(dl.DLNonFiniteError, match=r"loss went non-finite \(.*loss_cross_entropy.*no update was applied"):
        dl.train_dl_model_batch(linear_model, samples)
    assert_unchanged(before, linear_model)
    assert np.isfinite(dl.train_dl_model_batch(linear_model, _ok())["total_loss"])  # and training goes on


def test_errors_are_value_errors_too(linear_model):
    """DLSampleError and DLParamError are ValueErrors, for code that catches those."""
    with pytest.raises(ValueError):
        dl.train_dl_model_batch(linear_model, [])
    with pytest.raises(ValueError):
        dl.set_dl_model_param(linear_model, "batch_size", -1)


def test_apply_checks_samples_too(linear_model):
    with pytest.raises(dl.DLSampleError, match=r"sample 0, key 'image'"):
        dl.apply_dl_model(linear_model, [{"image": np.zeros((2, 2))}])
    with pytest.raises(dl.DLParamError, match="unknown outputs"):
        dl.apply_dl_model(linear_model, _ok(1), outputs=["bbox_row1"])


def test_apply_any_count_and_selected_outputs(linear_model):
    results = dl.apply_dl_model(linear_model, image_samples(7, [0]), outputs=["classification_confidences"])
    assert len(results) == 7 and set(results[0]) == {"classification_confidences"}
    confidences = results[0]["classification_confidences"]
    assert confidences == sorted(confidences, reverse=True) and sum(confidences) == pytest.approx(1.0, rel=1e-5)


def test_not_a_model():
    with pytest.raises(dl.DLParamError, match="expected a DLModel"):
        dl.train_dl_model_batch("model.onnx", _ok())
