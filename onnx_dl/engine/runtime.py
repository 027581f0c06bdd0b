"""The door to ONNX Runtime: imports the engine lazily, without torch, and quietly; builds inference
sessions and forward probes; counts the time spent in the engine.

Only the ``onnx_dl.engine`` package imports ``onnxruntime`` or ``onnxruntime.training``, and only
through :func:`ort` and :func:`training`. Importing ``onnx_dl`` never needs the engine; the first
call that does raises a :class:`DLRuntimeError` that names the extra to install.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..errors import DLRuntimeError

_INSTALL_HINT = (
    "install the engine with `pip install 'onnx_dl[cpu]'` (onnxruntime-training-cpu==1.19.2), "
    "or `pip install 'onnx_dl[cuda]'` for the CUDA 11.8 build; never both in one environment"
)
CUDA_HINT = (
    "runtime 'gpu' needs the CUDA build of the engine and an NVIDIA driver: "
    "`pip uninstall onnxruntime-training-cpu && pip install 'onnx_dl[cuda]'` "
    "(onnxruntime-training==1.19.2 with the CUDA 11.8 / cuDNN 8.9 libraries, Linux x86_64, Python <= 3.11)"
)
QUIET = 3  # ORT log severity: errors only


@functools.cache
def ort() -> Any:
    """Return the ``onnxruntime`` module, logging silenced; raise if the engine is not installed."""
    try:
        module = _import_without_torch()
    except ImportError as exc:
        raise DLRuntimeError(f"ONNX Runtime is not installed: {_INSTALL_HINT}") from exc
    if not hasattr(module, "InferenceSession"):
        raise DLRuntimeError(f"the installed onnxruntime is incomplete: {_INSTALL_HINT}")
    module.set_default_logger_severity(QUIET)
    return module


_TORCH_PACKAGES = ("training", "tools")
"""onnxruntime's sub-packages whose ``__init__`` imports torch whenever torch is installed."""


def _import_without_torch() -> Any:
    """``import onnxruntime`` without loading torch: its import validates the build by importing
    ``onnxruntime.training.ortmodule`` (PyTorch's ORTModule), whose package ``__init__`` and the
    ``tools`` package it reaches import torch when it is installed (microsoft/onnxruntime#22070; about
    2 s and a few hundred MB). Bare package objects stand in for ``training`` and ``tools`` (their
    submodules load as usual) and ORTModule reads as absent during the import. If onnxruntime is
    already imported, it is returned as it is."""
    if "onnxruntime" in sys.modules:
        return importlib.import_module("onnxruntime")
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("onnxruntime is not installed")
    root = list(spec.submodule_search_locations)[0]
    shims = {name: _bare_package(root, name) for name in _TORCH_PACKAGES if os.path.isdir(os.path.join(root, name))}
    sys.modules["onnxruntime.training.ortmodule"] = None  # type: ignore[assignment]  # an ImportError: absent
    try:
        module = importlib.import_module("onnxruntime")
    finally:
        del sys.modules["onnxruntime.training.ortmodule"]  # a later explicit import finds the real one
    for name, shim in shims.items():
        setattr(module, name, shim)
    return module


def _bare_package(root: str, name: str) -> types.ModuleType:
    """Register ``onnxruntime.<name>`` (under the package folder ``root``) as a package whose
    ``__init__`` does not run; its submodules load as usual."""
    shim = types.ModuleType(f"onnxruntime.{name}")
    shim.__path__ = [os.path.join(root, name)]
    sys.modules[shim.__name__] = shim
    return shim


@functools.cache
def training() -> types.SimpleNamespace:
    """Return ``artifacts`` and ``api`` of onnxruntime.training, imported without torch (the bare
    packages of :func:`_import_without_torch`: only the torch-free submodules are loaded)."""
    rt = ort()
    root = os.path.dirname(rt.__file__)
    if not os.path.isdir(os.path.join(root, "training", "api")):
        raise DLRuntimeError(f"this onnxruntime has no training support: {_INSTALL_HINT}")
    for name in _TORCH_PACKAGES:  # onnxruntime imported before us (and without torch) may lack them
        if f"onnxruntime.{name}" not in sys.modules:
            setattr(rt, name, _bare_package(root, name))
    artifacts = importlib.import_module("onnxruntime.training.artifacts")
    api = importlib.import_module("onnxruntime.training.api")
    graph_utils = importlib.import_module("onnxruntime.training.onnxblock._training_graph_utils")

    def quiet_session_options() -> Any:
        # build_gradient_graph() logs every graph transformer at INFO through a bare
        # SessionOptions(); the name it looks up is replaced by one that logs errors only.
        options = rt.SessionOptions()
        options.log_severity_level = QUIET
        return options

    graph_utils.SessionOptions = quiet_session_options
    return types.SimpleNamespace(artifacts=artifacts, api=api, C=importlib.import_module("onnxruntime.capi._pybind_state"))


def cuda_available() -> bool:
    """True when the installed engine offers the CUDA execution provider."""
    return "CUDAExecutionProvider" in ort().get_available_providers()


def require_device(runtime: str) -> None:
    """Raise a clear error when ``runtime`` cannot run with the installed engine."""
    if runtime == "gpu" and not cuda_available():
        raise DLRuntimeError(f"CUDA is not available to ONNX Runtime; {CUDA_HINT}")


def session_options(threads: int, deterministic: bool, optimize: bool = True, spinning: bool = True) -> Any:
    """SessionOptions with the thread count and determinism of :mod:`onnx_dl.system`.

    ``spinning`` False makes the session's idle threads sleep at once instead of busy-waiting for
    more work: for a short session run between runs of another one (the solver update between
    training steps), whose spinning threads would otherwise take cores from the next training step.
    """
    rt = ort()
    options = rt.SessionOptions()
    options.log_severity_level = QUIET
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = rt.ExecutionMode.ORT_SEQUENTIAL
    options.use_deterministic_compute = deterministic
    if not optimize:
        options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def providers(runtime: str, deterministic: bool, device_id: int = 0) -> list[Any]:
    """Execution providers for an InferenceSession on ``runtime`` (on 'gpu': CUDA device ``device_id``)."""
    if runtime == "gpu":
        search = "DEFAULT" if deterministic else "HEURISTIC"
        return [("CUDAExecutionProvider", {"device_id": device_id, "cudnn_conv_algo_search": search}),
                "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def inference_session(model: onnx.ModelProto, runtime: str = "cpu", threads: int = 1, deterministic: bool = False,
                      device_id: int = 0, **options: bool) -> Any:
    """An engine InferenceSession of ``model`` on ``runtime`` (CUDA device ``device_id`` on 'gpu';
    ``options``: those of :func:`session_options`)."""
    require_device(runtime)
    return ort().InferenceSession(model.SerializeToString(), session_options(threads, deterministic, **options),
                                  providers=providers(runtime, deterministic, device_id))


def forward(model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
    """One forward pass of ``model`` on the CPU, one thread (a probe of shapes and batch sizes).

    The engine's own exception passes through: callers decide what a refused graph means."""
    return list(inference_session(model).run(outputs, feeds))


def device_value(array: np.ndarray, runtime: str = "cpu", device_id: int = 0) -> Any:
    """``array`` as an engine OrtValue on ``runtime``'s device (CUDA device ``device_id`` on 'gpu'; a copy)."""
    on_gpu = runtime == "gpu"
    return ort().OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda" if on_gpu else "cpu",
                                              device_id if on_gpu else 0)


@dataclass
class Counters:
    """Time spent inside the engine since the last :meth:`reset`: forward and backward runs of training
    sessions, and solver updates (tools/bench reads these to tell engine time from the library's own)."""

    run_s: float = 0.0
    runs: int = 0
    update_s: float = 0.0
    updates: int = 0

    def reset(self) -> None:
        """Start counting from zero."""
        self.run_s, self.runs, self.update_s, self.updates = 0.0, 0, 0.0, 0

    @contextmanager
    def timing(self, what: str) -> Iterator[None]:
        """Add the wall time of the block to ``what`` ('run' or 'update')."""
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, f"{what}_s", getattr(self, f"{what}_s") + time.perf_counter() - start)
            setattr(self, f"{what}s", getattr(self, f"{what}s") + 1)


COUNTERS = Counters()
