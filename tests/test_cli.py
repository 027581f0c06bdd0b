"""The onnx-dl command, through a subprocess."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from onnx_dl import dataset as D


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_dl.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, check=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small default-style run: generated shapes, the bundled classifier."""
    out = tmp_path_factory.mktemp("runs")
    done = _cli("train", "--epochs", "2", "--samples", "192", "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "best validation top1_error" in done.stdout
    (run,) = list(out.iterdir())
    return run


def test_train_writes_model_log_and_plot(trained: Path) -> None:
    with open(trained / "log.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    steps = [r for r in rows if r["total_loss"]]
    assert len(steps) == 2 * (192 * 80 // 100 // 32) and len(rows) == len(steps) + 2
    assert (trained / "training.png").stat().st_size > 1000
    for name in ("evaluation.json", "report.txt", "confusion_matrix.png", "predictions.png"):  # the best model's
        assert (trained / name).stat().st_size > 100, name
    assert "loss_cross_entropy" in rows[0]  # every loss part is logged
    session = ort.InferenceSession(str(trained / "best_model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape[1] == 4


def test_evaluate_apply_export_info(trained: Path, tmp_path: Path) -> None:
    model = str(trained / "best_model.onnx")
    done = _cli("evaluate", model, str(trained / "dataset"), "--split", "train", "--json")
    assert done.returncode == 0, done.stderr
    assert 0.0 <= json.loads(done.stdout)["top1_error"] <= 1.0
    images = sorted((trained / "dataset" / "circle").iterdir())[:2]
    done = _cli("apply", model, *map(str, images), "--draw", str(tmp_path / "drawn"))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 2 and {"class_id", "class_name", "confidence"} <= set(lines[0])
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 2
    done = _cli("export", model, str(tmp_path / "deploy.onnx"))
    assert done.returncode == 0 and (tmp_path / "deploy.onnx").exists()
    done = _cli("info", model)
    assert done.returncode == 0 and "num_trainable_params" in done.stdout and "circle" in done.stdout


def test_evaluate_prints_a_report_and_writes_its_files(trained: Path, tmp_path: Path) -> None:
    model, data = str(trained / "best_model.onnx"), str(trained / "dataset")
    measures = json.loads(_cli("evaluate", model, data, "--split", "train", "--json").stdout)
    done = _cli("evaluate", model, data, "--split", "train", "--output", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr
    assert ["top1_error", f"{measures['top1_error']:.4f}"] in [line.split() for line in done.stdout.splitlines()]
    assert "absolute_confusion_matrix (rows: predicted, columns: ground truth)" in done.stdout
    assert json.loads((tmp_path / "report" / "evaluation.json").read_text()) == measures
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {"report.txt", "predictions.png",
                                                                 "confusion_matrix.png", "confusion_matrix_normalized.png"}


def test_train_detection_dataset_and_export_boxes(tmp_path: Path) -> None:
    coco = D.write_synthetic_dataset("detection", tmp_path / "data", 24, 64, seed=0)
    done = _cli("train", "--dataset", str(coco), "--epochs", "1", "--batch-size", "4", "--image-size", "64",
                "--output", str(tmp_path / "runs"), "--quiet")
    assert done.returncode == 0, done.stderr
    (run,) = list((tmp_path / "runs").iterdir())
    done = _cli("export", str(run / "best_model.onnx"), str(tmp_path / "boxes.onnx"))
    assert done.returncode == 0, done.stderr
    session = ort.InferenceSession(str(tmp_path / "boxes.onnx"), providers=["CPUExecutionProvider"])
    assert "bbox_confidence" in [o.name for o in session.get_outputs()]
    image = min((tmp_path / "data" / "images").iterdir())
    done = _cli("apply", str(run / "best_model.onnx"), str(image), "--draw", str(tmp_path / "drawn"))
    assert done.returncode == 0, done.stderr
    assert "boxes" in json.loads(done.stdout)


@pytest.mark.parametrize("command", ["train", "evaluate", "apply", "export", "info"])
def test_help_of_every_command(command: str) -> None:
    done = _cli(command, "--help")
    assert done.returncode == 0 and "usage: onnx-dl" in done.stdout


def test_bad_arguments_exit_2_with_one_line() -> None:
    for args in [("train", "--epochs", "x"), ("fly",), ("info", "no_such_model"), ("evaluate", "classifier_compact",
                                                                                  "/nonexistent/dataset")]:
        done = _cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    bad = _cli("info", "no_such_model")
    assert bad.stderr.strip().startswith("onnx-dl info: no model file 'no_such_model'")
