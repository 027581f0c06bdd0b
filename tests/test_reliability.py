"""Reliability: non-finite gradients, faults while writing, threads, random malformed input, long runs."""

from __future__ import annotations

import os
import sys
import tempfile
import threading

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnx_dl as dl
from onnx_dl.engine.session import TrainingSession
from conftest import (CHANNELS, SIZE, assert_unchanged, conv_segmentation_network, image_samples, linear_network,
                      load, snapshot, weights)
from test_detection import tiny_model as tiny_detection_model
from test_rotated_detection import rotated_tiny_model


def test_non_finite_gradient_with_finite_loss_applies_no_update(tmp_path):
    """sqrt(|w x|) at x = 0 is finite, its gradient is not: DLNonFiniteError, nothing changes."""
    inits = {"scale": np.full((1, CHANNELS, 1, 1), 0.5, np.float32),
             "fc.weight": np.ones((3, CHANNELS), np.float32), "fc.bias": np.zeros(3, np.float32)}
    nodes = [helper.make_node("Mul", ["image", "scale"], ["scaled"]), helper.make_node("Abs", ["scaled"], ["abs"]),
             helper.make_node("Sqrt", ["abs"], ["root"]), helper.make_node("GlobalAveragePool", ["root"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "sqrt", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", CHANNELS, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    network = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    network.ir_version = 9
    model = load(tmp_path, network, batch_size=2)
    dl.train_dl_model_batch(model, image_samples(2, [0, 1], scale=1.0))
    before = snapshot(model)
    zeros = [{"image": np.zeros((SIZE, SIZE, CHANNELS), np.float32), "image_label_id": i} for i in (0, 1)]
    with pytest.raises(dl.DLNonFiniteError, match="gradient went non-finite.*no update was applied"):
        dl.train_dl_model_batch(model, zeros)
    assert_unchanged(before, model)


def test_fault_during_serialisation_keeps_the_old_file(tmp_path, linear_model, monkeypatch):
    path = tmp_path / "model.onnx"
    dl.write_dl_model(linear_model, path)
    old = path.read_bytes()
    dl.train_dl_model_batch(linear_model, image_samples(4, [0, 1, 2]))

    def broken(self):
        raise MemoryError("out of memory while serialising")

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", broken)
    with pytest.raises(MemoryError):
        dl.write_dl_model(linear_model, path)
    monkeypatch.undo()
    assert path.read_bytes() == old and sorted(os.listdir(tmp_path)) == ["model.onnx"] + sorted(
        n for n in os.listdir(tmp_path) if n.startswith("net_"))


def _train(model, batches, out=None, key=None):
    losses = [dl.train_dl_model_batch(model, b)["total_loss"] for b in batches]
    if out is not None:
        out[key] = losses


def test_two_models_in_two_threads_equal_one_after_the_other(tmp_path):
    batches_a = [image_samples(4, [0, 1, 2], seed=s) for s in range(15)]
    batches_b = [image_samples(4, [2, 1, 0], seed=100 + s) for s in range(15)]
    make = lambda solver: load(tmp_path, linear_network(), batch_size=4, solver_type=solver)  # noqa: E731
    seq_a, seq_b = make("sgd"), make("adam")
    expected = {}
    _train(seq_a, batches_a, expected, "a")
    _train(seq_b, batches_b, expected, "b")
    par_a, par_b = make("sgd"), make("adam")
    got: dict[str, list[float]] = {}
    threads = [threading.Thread(target=_train, args=(par_a, batches_a, got, "a")),
               threading.Thread(target=_train, args=(par_b, batches_b, got, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected
    assert all(np.array_equal(weights(par_a)[k], v) for k, v in weights(seq_a).items())
    assert all(np.array_equal(weights(par_b)[k], v) for k, v in weights(seq_b).items())


def test_sessions_built_at_the_same_moment_in_several_threads_do_not_collide(tmp_path):
    """The engine's artifact builder holds one model per process (two models trained in two threads
    once failed with "Base onnx model already exists"): sessions built at once must all come up."""
    model = load(tmp_path, linear_network(), batch_size=2)
    dl.train_dl_model_batch(model, image_samples(2, [0, 1], seed=3))
    graph = model._trainer.graph
    errors: list[BaseException] = []

    def build(start: threading.Barrier) -> None:
        start.wait()
        try:
            TrainingSession(graph, "cpu", 1, True)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often, so they meet inside the builder
    try:
        for _ in range(3):
            start = threading.Barrier(6)
            threads = [threading.Thread(target=build, args=(start,)) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_one_model_from_two_threads_is_serialised(tmp_path):
    """Calls on one model run one at a time (a lock): the result equals some sequential order."""
    model = load(tmp_path, linear_network(), batch_size=4, momentum=0.0, learning_rate=0.01)
    batches = [image_samples(4, [0, 1, 2], seed=s) for s in range(20)]
    threads = [threading.Thread(target=_train, args=(model, batches[i::2])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert model._trainer.solver.step_count == 20
    assert all(np.isfinite(v).all() for v in weights(model).values())


# -- random malformed input -------------------------------------------------------------------
_values = st.one_of(
    st.none(), st.integers(-5, 300), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
    st.lists(st.integers(0, 3), max_size=3),
    st.builds(lambda shape, fill: np.full(shape, fill, np.float32),
              st.sampled_from([(SIZE, SIZE, CHANNELS), (SIZE, SIZE), (SIZE + 1, SIZE, CHANNELS), (0,), (SIZE, SIZE, 1)]),
              st.sampled_from([0.0, 1.0, -1.0, 1e38, np.nan, np.inf])),
    st.builds(lambda shape, value: np.full(shape, value, np.int64),
              st.sampled_from([(SIZE, SIZE), (SIZE, SIZE, CHANNELS), (SIZE,)]), st.integers(-2, 5)),
)
_keys = st.sampled_from(["image", "image_label_id", "image_label_ids", "segmentation_image", "weight_image",
                         "bbox_row1", "bbox_col2", "bbox_label_id", "bbox_length1", "bbox_phi", "other"])
_sample = st.one_of(st.dictionaries(_keys, _values, max_size=5), st.integers(), st.none())


def _valid(kind, rng):
    if kind == "classification":
        return {"image": rng.normal(0, 1, (SIZE, SIZE, CHANNELS)).astype(np.float32), "image_label_id": 1}
    if kind == "multi_label_classification":
        return {"image": rng.normal(0, 1, (SIZE, SIZE, CHANNELS)).astype(np.float32), "image_label_ids": [0, 2]}
    if kind == "detection":
        return {"image": rng.normal(0, 1, (SIZE, SIZE, CHANNELS)).astype(np.float32), "bbox_row1": [0.0],
                "bbox_col1": [0.5], "bbox_row2": [2.5], "bbox_col2": [3.0], "bbox_label_id": [7]}
    if kind == "detection_rectangle2":
        return {"image": rng.normal(0, 1, (SIZE, SIZE, CHANNELS)).astype(np.float32), "bbox_row": [2.0],
                "bbox_col": [1.5], "bbox_length1": [2.5], "bbox_length2": [1.0], "bbox_phi": [0.4],
                "bbox_label_id": [7]}
    return {"image": rng.normal(0, 1, (SIZE, SIZE, CHANNELS)).astype(np.float32),
            "segmentation_image": rng.integers(0, 3, (SIZE, SIZE)).astype(np.uint8)}


def _fuzzed_model(tmp_path, kind):
    if kind == "detection":
        return tiny_detection_model(size=SIZE, batch_size=2)
    if kind == "detection_rectangle2":
        return rotated_tiny_model(size=SIZE, batch_size=2)
    network = linear_network() if "classification" in kind else conv_segmentation_network()
    path = tmp_path / f"{kind}.onnx"
    onnx.save(network, path)
    model = dl.read_dl_model(path, type=kind)
    dl.set_dl_model_param(model, "image_dimensions", [SIZE, SIZE, CHANNELS])
    dl.set_dl_model_param(model, "batch_size", 2)
    return model


@pytest.mark.parametrize("kind", ["classification", "segmentation", "detection", "detection_rectangle2",
                                  "multi_label_classification"])
def test_random_malformed_batches_raise_dl_errors_and_change_nothing(tmp_path, kind):
    model = _fuzzed_model(tmp_path, kind)
    class_ids = dl.get_dl_model_param(model, "class_ids")
    rng = np.random.default_rng(0)
    dl.train_dl_model_batch(model, [_valid(kind, rng), _valid(kind, rng)])

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(batch=st.one_of(st.lists(st.one_of(_sample, st.just(_valid(kind, rng))), max_size=5), _values),
           param=st.tuples(st.sampled_from(["batch_size", "learning_rate", "class_weights", "momentum", "class_ids"]),
                           _values))
    def check(batch, param):
        before = snapshot(model)
        try:
            dl.train_dl_model_batch(model, batch)
        except dl.DLError as error:
            assert str(error)
            assert_unchanged(before, model)
        before = snapshot(model)
        try:
            dl.set_dl_model_param(model, *param)
        except dl.DLError as error:
            assert str(error)
            assert_unchanged(before, model)
        dl.set_dl_model_param(model, "batch_size", 2)
        if dl.get_dl_model_param(model, "class_ids") != class_ids:
            dl.set_dl_model_param(model, "class_ids", class_ids)

    check()


@pytest.mark.slow
def test_soak_5000_steps_no_memory_growth_no_temporary_files():
    """The bundled classifier at a small size: RSS after warm-up grows by less than 5 %."""
    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    model = dl.read_dl_model("classifier_compact")
    for name, value in [("class_ids", [0, 1]), ("image_dimensions", [32, 32, 3]), ("batch_size", 2)]:
        dl.set_dl_model_param(model, name, value)
    rng = np.random.default_rng(0)
    batches = [[{"image": rng.normal(0, 50, (32, 32, 3)).astype(np.float32), "image_label_id": i % 2}
                for i in range(2)] for _ in range(8)]
    before_files = set(os.listdir(tempfile.gettempdir()))
    for step in range(500):
        dl.train_dl_model_batch(model, batches[step % 8])
    dl.apply_dl_model(model, batches[0])  # the warm-up covers every path the loop below takes
    warm = rss()
    for step in range(4500):
        dl.train_dl_model_batch(model, batches[step % 8])
        if step % 1000 == 0:
            dl.apply_dl_model(model, batches[0])
    assert rss() < warm * 1.05, (warm, rss())
    assert {n for n in set(os.listdir(tempfile.gettempdir())) - before_files if n.startswith("onnx_dl_")} == set()
