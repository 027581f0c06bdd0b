"""The onnx-dl command, through a subprocess."""

from __future__ import annotations

import csv
import subprocess
import sys

import onnxruntime as ort


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_dl.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_train_writes_model_and_log(tmp_path):
    done = _cli("train", "--epochs", "1", "--train-samples", "256", "--output", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "validation accuracy" in done.stdout
    (run,) = list(tmp_path.iterdir())
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 256 // 32 + 1 and rows[-1]["validation_accuracy"] != ""
    session = ort.InferenceSession(str(run / "best_model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape[1] == 4


def test_info_and_bad_arguments():
    done = _cli("info", "classifier_compact")
    assert done.returncode == 0 and "num_trainable_params" in done.stdout
    assert _cli("train", "--epochs", "x").returncode == 2
    assert _cli("fly").returncode == 2
    bad = _cli("info", "no_such_model")
    assert bad.returncode == 1 and "no bundled model" in bad.stderr
