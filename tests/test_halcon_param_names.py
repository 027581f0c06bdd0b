"""HALCON parameter names of issue 17 (gap 8): meta_data, layer_names, input_dimensions, image_size,
device / gpu, runtime_init, batchnorm_momentum, precision, optimize_for_inference, min_version and the
accepted no-ops enable_resizing, fuse_bn_relu and fuse_conv_relu."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_dl as dl
from conftest import (CHANNELS, SIZE, assert_unchanged, bn_network, image_samples, linear_network, load,
                      load_segmentation, snapshot, weights)
from onnx_dl import serialization
from onnx_dl.engine import runtime
from onnx_dl.engine.session import device_string
from onnx_dl.trainer import Engine, Trainer
from onnx_dl.training_graph import TrainingGraph
from reference import batchnorm_train


def _get(model: dl.DLModel, name: str) -> Any:
    return dl.get_dl_model_param(model, name)


def _round_trip(model: dl.DLModel, tmp_path: Path, **kwargs: Any) -> dl.DLModel:
    path = tmp_path / "round_trip.onnx"
    dl.write_dl_model(model, path, **kwargs)
    return dl.read_dl_model(path)


def test_defaults(linear_model: dl.DLModel) -> None:
    assert _get(linear_model, "meta_data") == {}
    assert _get(linear_model, "input_dimensions") == [SIZE, SIZE, CHANNELS]
    assert _get(linear_model, "image_size") == [SIZE, SIZE]
    assert _get(linear_model, "gpu") == 0 and _get(linear_model, "device") == 0
    assert _get(linear_model, "batchnorm_momentum") == "auto"
    assert _get(linear_model, "precision") == "float32"
    assert _get(linear_model, "optimize_for_inference") is False
    assert _get(linear_model, "min_version") == str(serialization.FORMAT_VERSION)
    assert _get(linear_model, "enable_resizing") is True
    assert _get(linear_model, "fuse_bn_relu") is False and _get(linear_model, "fuse_conv_relu") is False


@pytest.mark.parametrize("name, value, message", [
    ("meta_data", "a=b", r"'meta_data': expected a dict of str -> str, got 'a=b' \(str\)"),
    ("meta_data", {"a": 1}, r"'meta_data': expected a dict of str -> str, got key 'a' \(str\) with value 1 \(int\)"),
    ("meta_data", {2: "b"}, r"'meta_data': expected a dict of str -> str, got key 2 \(int\)"),
    ("meta_data", {"onnx_dl.x": "b"}, r"'meta_data': expected keys that do not start with 'onnx_dl'.*got \{'onnx_dl"),
    ("image_size", [SIZE], r"'image_size': expected \[width, height\], both >= 1, got \[4\]"),
    ("image_size", [SIZE, 0], r"'image_size': expected \[width, height\], both >= 1, got \[4, 0\]"),
    ("image_size", [SIZE, SIZE, CHANNELS], r"'image_size': expected \[width, height\]"),
    ("image_size", [8, 8], "does not accept 8 x 8"),  # the linear network is fixed to 4 x 4
    ("image_size", ["4", "4"], r"'image_size': expected an int, got '4'"),
    ("gpu", -1, r"'gpu': expected a value >= 0, got -1"),
    ("gpu", 1.5, r"'gpu': expected an int, got 1.5"),
    ("device", True, r"'device': expected an int, got True"),
    ("device", "cuda:0", r"'device': expected an int, got 'cuda:0'"),
    ("device", -2, r"'device': expected a value >= 0, got -2"),
    ("runtime_init", "later", r"'runtime_init': expected one of \['immediately'\], got 'later'"),
    ("runtime_init", 1, r"'runtime_init': expected a string, got 1"),
    ("batchnorm_momentum", 1.0, r"'batchnorm_momentum': expected 'auto' or a value in \[0, 1\), got 1.0"),
    ("batchnorm_momentum", -0.1, r"'batchnorm_momentum': expected 'auto' or a value in \[0, 1\), got -0.1"),
    ("batchnorm_momentum", "fast", r"'batchnorm_momentum': expected 'auto' or a number, got 'fast'"),
    ("batchnorm_momentum", float("nan"), r"'batchnorm_momentum': expected a finite number"),
    ("batchnorm_momentum", True, r"'batchnorm_momentum': expected a number, got True"),
    ("precision", "float16", r"'precision': expected 'float32' \(the only precision onnx_dl runs\), got 'float16'"),
    ("precision", 32, r"'precision': expected a string, got 32"),
    ("optimize_for_inference", "yes", r"'optimize_for_inference': expected True, False, 'true' or 'false', got 'yes'"),
    ("enable_resizing", 1, r"'enable_resizing': expected True, False, 'true' or 'false', got 1"),
    ("fuse_bn_relu", None, r"'fuse_bn_relu': expected True, False, 'true' or 'false', got None"),
    ("fuse_conv_relu", "on", r"'fuse_conv_relu': expected True, False, 'true' or 'false', got 'on'"),
    ("layer_names", ["a"], r"'layer_names' is read-only"),
    ("input_dimensions", [SIZE, SIZE, CHANNELS], r"'input_dimensions' is read-only"),
    ("min_version", "2", r"'min_version' is read-only"),
])
def test_bad_values_name_the_parameter_and_change_nothing(linear_model: dl.DLModel, name: str, value: Any,
                                                          message: str) -> None:
    dl.train_dl_model_batch(linear_model, image_samples(4, [0, 1, 2]))
    trainer = linear_model._trainer
    before = snapshot(linear_model)
    with pytest.raises(dl.DLParamError, match=message):
        dl.set_dl_model_param(linear_model, name, value)
    assert_unchanged(before, linear_model)
    assert linear_model._trainer is trainer  # the solver state is still there


# -- meta_data -----------------------------------------------------------------------------------

def test_meta_data_is_written_to_metadata_props_and_read_back(linear_model: dl.DLModel, tmp_path: Path) -> None:
    values = {"author": "me", "line": "3", "note": "ünïcode, = and \"quotes\""}
    dl.set_dl_model_param(linear_model, "meta_data", values)
    got = _get(linear_model, "meta_data")
    assert got == values
    got["author"] = "changed"  # a copy: the model keeps its own
    assert _get(linear_model, "meta_data") == values
    path = tmp_path / "meta.onnx"
    dl.write_dl_model(linear_model, path)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert {k: props[k] for k in values} == values  # one ONNX metadata entry per key, seen by any ONNX tool
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert {k: session.get_modelmeta().custom_metadata_map[k] for k in values} == values
    again = dl.read_dl_model(path)
    assert _get(again, "meta_data") == values
    dl.set_dl_model_param(again, "meta_data", {})  # emptied, it stays empty through a file
    assert _get(_round_trip(again, tmp_path), "meta_data") == {}


def test_meta_data_of_a_foreign_file(tmp_path: Path) -> None:
    network = linear_network()
    onnx.helper.set_model_props(network, {"exporter_note": "from elsewhere"})
    model = load(tmp_path, network)
    assert _get(model, "meta_data") == {"exporter_note": "from elsewhere"}


# -- read-only names -----------------------------------------------------------------------------

def test_layer_names_are_the_inference_graph_nodes_in_order(linear_model: dl.DLModel) -> None:
    names = _get(linear_model, "layer_names")
    nodes = linear_model.inference_graph().graph.node
    assert names == [n.name or n.output[0] for n in nodes] and len(names) == len(nodes)
    assert names == [line.split()[0] for line in _get(linear_model, "summary")[:-1]]  # as the summary names them


def test_input_dimensions_and_image_size_follow_the_image_size(tmp_path: Path) -> None:
    model = load_segmentation(tmp_path)
    dl.set_dl_model_param(model, "image_size", [6, 5])
    assert _get(model, "image_width") == 6 and _get(model, "image_height") == 5
    assert _get(model, "image_size") == [6, 5]
    assert _get(model, "input_dimensions") == _get(model, "image_dimensions") == [6, 5, CHANNELS]
    dl.set_dl_model_param(model, "image_dimensions", [7, 3, CHANNELS])
    assert _get(model, "image_size") == [7, 3] and _get(model, "input_dimensions") == [7, 3, CHANNELS]
    dl.set_dl_model_param(model, "image_size", np.array([4, 4]))
    assert _get(model, "image_size") == [4, 4]
    assert _get(_round_trip(model, tmp_path), "image_size") == [4, 4]


def test_image_size_of_a_detector_is_fixed_as_its_image_width() -> None:
    model = dl.create_dl_model_detection("classifier_compact", 2, {"image_width": 64, "image_height": 64})
    before = snapshot(model)
    for name, value in (("image_size", [128, 128]), ("image_width", 128)):
        with pytest.raises(dl.DLParamError, match=f"'{name}' of a detection model is fixed when the model is created"):
            dl.set_dl_model_param(model, name, value)
    assert_unchanged(before, model)
    assert _get(model, "image_size") == [64, 64]


def test_min_version_is_the_file_format_version(linear_model: dl.DLModel, tmp_path: Path) -> None:
    path = tmp_path / "v.onnx"
    dl.write_dl_model(linear_model, path)
    assert serialization.metadata(onnx.load(path))["format"] == int(_get(linear_model, "min_version"))


def test_runtime_init_can_only_be_set(linear_model: dl.DLModel) -> None:
    with pytest.raises(dl.DLParamError, match="'runtime_init' can only be set"):
        _get(linear_model, "runtime_init")


# -- device / gpu --------------------------------------------------------------------------------

def test_gpu_and_device_are_one_index(linear_model: dl.DLModel, tmp_path: Path) -> None:
    dl.set_dl_model_param(linear_model, "device", 3)
    assert _get(linear_model, "gpu") == _get(linear_model, "device") == 3
    dl.set_dl_model_param(linear_model, "gpu", np.int64(1))
    assert _get(linear_model, "device") == 1 and type(_get(linear_model, "gpu")) is int
    assert _get(_round_trip(linear_model, tmp_path), "gpu") == 1


def test_the_cuda_provider_gets_the_device_index() -> None:
    cuda = runtime.providers("gpu", False, 2)[0]
    assert cuda == ("CUDAExecutionProvider", {"device_id": 2, "cudnn_conv_algo_search": "HEURISTIC"})
    assert runtime.providers("gpu", True)[0][1]["device_id"] == 0
    assert runtime.providers("cpu", False, 2) == ["CPUExecutionProvider"]
    assert device_string("gpu", 2) == "cuda:2" and device_string("cpu", 2) == "cpu"


def test_the_model_passes_its_device_index_to_the_engine(linear_model: dl.DLModel,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """On this machine (no CUDA) the GPU session is replaced by a CPU one; what the engine would receive is kept."""
    real = runtime.inference_session
    received: list[Any] = []

    def record(model: onnx.ModelProto, where: str = "cpu", threads: int = 1, deterministic: bool = False,
               device_id: int = 0, **options: bool) -> Any:
        received.append(runtime.providers(where, deterministic, device_id))
        return real(model, "cpu", threads, deterministic, **options)

    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    monkeypatch.setattr(runtime, "inference_session", record)
    sample = image_samples(1, [0])
    dl.apply_dl_model(linear_model, sample)
    dl.set_dl_model_param(linear_model, "gpu", 1)
    dl.apply_dl_model(linear_model, sample)
    assert received == [["CPUExecutionProvider"]]  # on the CPU the index is unused: no new session
    dl.set_dl_model_param(linear_model, "runtime", "gpu")
    dl.apply_dl_model(linear_model, sample)
    dl.set_dl_model_param(linear_model, "device", 2)
    dl.apply_dl_model(linear_model, sample)
    assert [found[0][1]["device_id"] for found in received[1:]] == [1, 2]  # a new session per device


def test_the_trainer_passes_the_device_index_to_the_training_session() -> None:
    received: list[tuple[str, dict[str, Any]]] = []

    class Session:
        def __init__(self, tg: TrainingGraph, where: str, threads: int, deterministic: bool, **device: int | None) -> None:
            received.append((where, device))

    def solver(*args: Any, **kwargs: Any) -> None:
        return None

    graph = TrainingGraph(model=onnx.ModelProto(), inputs=[], losses=[], trainable=[], batchnorms=[], bn_elements={})
    for where in ("gpu", "cpu"):
        Trainer(graph, {}, {"solver_type": "sgd", "gpu": 3, "batch_size": 5}, where, 1, False, engine=Engine(Session, solver))
    assert received == [("gpu", {"device_id": 3, "chunk_size": 5}), ("cpu", {"chunk_size": 5})]


# -- runtime_init --------------------------------------------------------------------------------

def test_runtime_init_builds_the_sessions_now(linear_model: dl.DLModel) -> None:
    assert linear_model._trainer is None and linear_model._inference is None
    dl.set_dl_model_param(linear_model, "runtime_init", "immediately")
    trainer, inference = linear_model._trainer, linear_model._inference
    assert trainer is not None and inference is not None
    dl.train_dl_model_batch(linear_model, image_samples(4, [0, 1, 2]))
    dl.apply_dl_model(linear_model, image_samples(1, [0]))
    assert linear_model._trainer is trainer and linear_model._inference is inference  # the ones used


def test_runtime_init_of_a_model_optimized_for_inference_builds_the_inference_session_only(
        linear_model: dl.DLModel) -> None:
    dl.set_dl_model_param(linear_model, "optimize_for_inference", True)
    dl.set_dl_model_param(linear_model, "runtime_init", "immediately")
    assert linear_model._trainer is None and linear_model._inference is not None


# -- batchnorm_momentum --------------------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.5, 0.0, "auto"])
def test_batchnorm_momentum_in_the_running_statistics(tmp_path: Path, momentum: float | str) -> None:
    """running = m * running + (1 - m) * batch statistic (unbiased variance), per chunk; 'auto': the node's 0.9."""
    model = load(tmp_path, bn_network(), batch_size=4, batch_size_multiplier=2, learning_rate=0.01)
    dl.set_dl_model_param(model, "batchnorm_momentum", momentum)
    assert _get(model, "batchnorm_momentum") == momentum
    start = weights(model)
    mean, var = start["bn.mean"].astype(np.float64), start["bn.var"].astype(np.float64)
    samples = image_samples(8, [0, 1, 2], seed=4, scale=3.0)
    x = np.stack([s["image"].transpose(2, 0, 1) for s in samples]).astype(np.float64)
    dl.train_dl_model_batch(model, samples)
    m = 0.9 if momentum == "auto" else momentum
    for chunk in (x[:4], x[4:]):
        _, batch_mean, batch_var = batchnorm_train(chunk, start["bn.scale"], start["bn.bias"], 1e-5)
        mean = m * mean + (1 - m) * batch_mean
        var = m * var + (1 - m) * batch_var
    after = weights(model)
    np.testing.assert_allclose(after["bn.mean"], mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(after["bn.var"], var, rtol=1e-5, atol=1e-7)
    assert _get(_round_trip(model, tmp_path), "batchnorm_momentum") == momentum


# -- precision -----------------------------------------------------------------------------------

def test_precision_is_float32(linear_model: dl.DLModel) -> None:
    dl.set_dl_model_param(linear_model, "precision", "float32")
    assert _get(linear_model, "precision") == "float32"


# -- optimize_for_inference ----------------------------------------------------------------------

def test_optimize_for_inference_drops_the_solver_state_and_refuses_training(linear_model: dl.DLModel,
                                                                           tmp_path: Path) -> None:
    samples, test = image_samples(4, [0, 1, 2]), image_samples(3, [0, 1, 2], seed=7)
    dl.train_dl_model_batch(linear_model, samples)
    dl.train_dl_model_batch(linear_model, samples)
    assert linear_model.solver_state()[1] == 2
    trained, results = weights(linear_model), dl.apply_dl_model(linear_model, test)
    dl.set_dl_model_param(linear_model, "optimize_for_inference", "true")
    assert _get(linear_model, "optimize_for_inference") is True and linear_model.solver_state() is None
    assert dl.apply_dl_model(linear_model, test) == results  # the trained weights stay
    for name, value in trained.items():
        assert np.array_equal(weights(linear_model)[name], value), name
    before = snapshot(linear_model)
    with pytest.raises(dl.DLParamError, match="'optimize_for_inference' is True.*set it to False"):
        dl.train_dl_model_batch(linear_model, samples)
    assert_unchanged(before, linear_model)

    path = tmp_path / "inference.onnx"
    dl.write_dl_model(linear_model, path)
    assert serialization.SOLVER_KEY not in {p.key for p in onnx.load(path).metadata_props}
    again = dl.read_dl_model(path)
    assert _get(again, "optimize_for_inference") is True and again.solver_state() is None
    with pytest.raises(dl.DLParamError, match="optimize_for_inference"):
        dl.train_dl_model_batch(again, samples)

    dl.set_dl_model_param(again, "optimize_for_inference", False)
    dl.train_dl_model_batch(again, samples)
    kind, steps, state = again.solver_state()
    assert kind == "sgd" and steps == 1  # a fresh solver: one step taken
    # from a zero velocity v0 = 0: v1 = mu * v0 - lr * g = -lr * g and w1 = w0 + v1, so the velocity is the step
    step = weights(again)["fc.weight"] - trained["fc.weight"]
    assert np.abs(step).max() > 0
    np.testing.assert_allclose(state["fc.weight"]["velocity"], step, rtol=1e-5, atol=1e-7)


def test_a_stored_solver_state_is_not_resumed_by_a_model_optimized_for_inference(linear_model: dl.DLModel,
                                                                                tmp_path: Path) -> None:
    dl.train_dl_model_batch(linear_model, image_samples(4, [0, 1, 2]))
    path = tmp_path / "trained.onnx"
    dl.write_dl_model(linear_model, path)
    again = dl.read_dl_model(path)
    assert again.solver_state() is not None
    dl.set_dl_model_param(again, "optimize_for_inference", True)
    assert again.solver_state() is None
    dl.set_dl_model_param(again, "optimize_for_inference", False)
    assert again.solver_state() is None  # training restarts from a fresh solver state


# -- accepted no-ops -----------------------------------------------------------------------------

def test_no_op_names_are_stored_and_change_nothing_else(linear_model: dl.DLModel, tmp_path: Path) -> None:
    network = linear_model.network().SerializeToString()
    settings = {"enable_resizing": False, "fuse_bn_relu": "true", "fuse_conv_relu": True}
    for name, value in settings.items():
        dl.set_dl_model_param(linear_model, name, value)
    expected = {"enable_resizing": False, "fuse_bn_relu": True, "fuse_conv_relu": True}
    assert {name: _get(linear_model, name) for name in settings} == expected
    assert linear_model.network().SerializeToString() == network
    again = _round_trip(linear_model, tmp_path)
    assert {name: _get(again, name) for name in settings} == expected


def test_every_stored_name_survives_a_file(linear_model: dl.DLModel, tmp_path: Path) -> None:
    values = {"meta_data": {"k": "v"}, "gpu": 2, "batchnorm_momentum": 0.25, "precision": "float32",
              "optimize_for_inference": True, "enable_resizing": False, "fuse_bn_relu": True, "fuse_conv_relu": True}
    for name, value in values.items():
        dl.set_dl_model_param(linear_model, name, value)
    again = _round_trip(linear_model, tmp_path)
    assert {name: _get(again, name) for name in values} == values
    assert _get(again, "device") == 2 and _get(again, "min_version") == _get(linear_model, "min_version")
