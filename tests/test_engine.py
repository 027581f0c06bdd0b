"""Imports without torch or engine, system settings, the engine's temporary files."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import onnx_dl as dl
from conftest import image_samples


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_training_never_needs_torch():
    # torch is installed for the tests (and `import onnxruntime` imports it when present, upstream
    # microsoft/onnxruntime#22070): a None entry makes every `import torch` fail, as without torch
    done = _python("import sys; sys.modules['torch'] = None\n"
                   "import numpy as np, onnx_dl as dl\n"
                   "m = dl.read_dl_model('classifier_compact')\n"
                   "dl.set_dl_model_param(m, 'image_dimensions', [32, 32, 3]); dl.set_dl_model_param(m, 'batch_size', 2)\n"
                   "r = dl.train_dl_model_batch(m, [{'image': np.zeros((32, 32, 3)), 'image_label_id': i} for i in (0, 1)])\n"
                   "print(sys.modules['torch'] is None, np.isfinite(r['total_loss']))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True True"


def test_the_engine_leaves_an_installed_torch_unloaded():
    """torch is installed here; `import onnxruntime` would load it (its build check imports ORTModule):
    reading, training, applying, writing and a detector leave it unloaded (about 2 s and a few hundred MB)."""
    done = _python("import sys, numpy as np, onnx_dl as dl\n"
                   "from onnx_dl import synthetic\n"
                   "m = dl.read_dl_model('classifier_compact')\n"
                   "dl.set_dl_model_param(m, 'image_dimensions', [32, 32, 3]); dl.set_dl_model_param(m, 'batch_size', 2)\n"
                   "r = dl.train_dl_model_batch(m, synthetic.classification_samples(2, 32))\n"
                   "dl.apply_dl_model(m, synthetic.classification_samples(2, 32))\n"
                   "d = dl.create_dl_model_detection('classifier_compact', 3, {'image_width': 64, 'image_height': 64, "
                   "'batch_size': 2})\n"
                   "dl.train_dl_model_batch(d, synthetic.detection_samples(2, 64))\n"
                   "import importlib.util; print(importlib.util.find_spec('torch') is not None, 'torch' in sys.modules, "
                   "np.isfinite(r['total_loss']))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True False True"


def test_export_torch_takes_the_callers_torch_module_and_refuses_anything_else(tmp_path):
    with pytest.raises(dl.DLParamError, match="export_torch: expected a torch.nn.Module, got dict"):
        dl.export_torch({}, tmp_path / "x.onnx", 32)


def test_the_library_imports_no_framework_anywhere():
    package = Path(dl.__file__).parent
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):  # also inside functions: export_torch uses the caller's
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            frameworks = [n for n in names if n.split(".")[0] in ("torch", "torchvision", "timm", "tensorflow")]
            assert not frameworks, f"{path.name} imports {frameworks}"


def test_import_without_engine_and_clear_error_at_first_use():
    done = _python("import sys; sys.modules['onnxruntime'] = None\n"
                   "import onnx_dl as dl\n"
                   "m = dl.read_dl_model('classifier_compact')\n"
                   "try:\n"
                   "    dl.apply_dl_model(m, [{'image': __import__('numpy').zeros((224, 224, 3))}])\n"
                   "except dl.DLRuntimeError as e: print(e)")
    assert done.returncode == 0, done.stderr
    assert "onnx_dl[cpu]" in done.stdout


def test_system_settings():
    assert dl.get_system("thread_num") >= 1
    assert dl.get_system("cudnn_deterministic") is False
    with pytest.raises(dl.DLParamError, match="thread_num"):
        dl.set_system("thread_num", 0)
    with pytest.raises(dl.DLParamError, match="unknown setting"):
        dl.set_system("threads", 2)
    with pytest.raises(dl.DLParamError, match="unknown setting"):
        dl.get_system("threads")


def test_thread_change_rebuilds_sessions_and_results_stay_identical(tmp_path):
    from conftest import linear_network, load, weights
    import numpy as np
    original = dl.get_system("thread_num")
    a = load(tmp_path, linear_network(), batch_size=4)
    b = load(tmp_path, linear_network(), batch_size=4)
    try:
        for step in range(3):
            samples = image_samples(4, [0, 1, 2], seed=step)
            dl.set_system("thread_num", 1)
            dl.train_dl_model_batch(a, samples)
            dl.set_system("thread_num", 2)
            dl.train_dl_model_batch(a, image_samples(4, [0, 1, 2], seed=step + 10))
            dl.train_dl_model_batch(b, samples)
            dl.train_dl_model_batch(b, image_samples(4, [0, 1, 2], seed=step + 10))
        for name, value in weights(a).items():
            assert np.array_equal(weights(b)[name], value), name
    finally:
        dl.set_system("thread_num", original)


def test_no_temporary_files_left(tmp_path, linear_model):
    before = set(os.listdir(tempfile.gettempdir()))
    for step in range(3):
        dl.train_dl_model_batch(linear_model, image_samples(4, [0, 1, 2], seed=step))
    dl.set_dl_model_param(linear_model, "class_ids", [0, 1, 2, 3])
    dl.train_dl_model_batch(linear_model, image_samples(4, [0, 1, 2, 3]))
    assert {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("onnx_dl_")} == set()
