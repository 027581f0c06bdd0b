"""The epoch loop: schedules, logging, best model, plot, interruption, and evaluate_dl_model."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

import onnx_dl as dl
from onnx_dl import dataset as D
from onnx_dl import training
from onnx_dl.evaluation import classification_measures, evaluate_dl_model


def test_schedules_follow_their_formulas() -> None:
    assert training.step_schedule(0.1, 0.0, step_epochs=2, gamma=0.5) == 0.1
    assert training.step_schedule(0.1, 1.99, step_epochs=2, gamma=0.5) == 0.1
    assert training.step_schedule(0.1, 2.0, step_epochs=2, gamma=0.5) == pytest.approx(0.05)
    assert training.step_schedule(0.1, 5.5, step_epochs=2, gamma=0.5) == pytest.approx(0.025)
    assert training.cosine_schedule(0.1, 0.0, 10) == pytest.approx(0.1)
    assert training.cosine_schedule(0.1, 5.0, 10) == pytest.approx(0.05)
    assert training.cosine_schedule(0.1, 2.5, 10, minimum=0.01) == pytest.approx(
        0.01 + 0.09 * (1 + math.cos(math.pi / 4)) / 2)
    assert training.cosine_schedule(0.1, 10.0, 10, minimum=0.01) == pytest.approx(0.01)
    with pytest.raises(dl.DLParamError, match="schedule"):
        training.schedule_function("linear", 0.1, 3)


def _classification(tmp_path: Path, count: int = 96) -> tuple[dl.DLModel, dict]:
    dataset = D.read_dl_dataset(D.write_synthetic_dataset("classification", tmp_path / "data", count, 32, seed=2))
    D.split_dl_dataset(dataset, 75, 25, seed=0)
    model = dl.read_dl_model("classifier_compact")
    dl.set_dl_model_param(model, "class_ids", dataset["class_ids"])
    dl.set_dl_model_param(model, "image_dimensions", [32, 32, 3])
    for name, value in [("batch_size", 16), ("solver_type", "adam"), ("learning_rate", 0.003)]:
        dl.set_dl_model_param(model, name, value)
    return model, dataset


def _log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_loop_logs_keeps_the_best_model_and_plots(tmp_path: Path) -> None:
    model, dataset = _classification(tmp_path)
    out = tmp_path / "run"
    result = training.train_dl_model(model, dataset, epochs=3, schedule="cosine", output_dir=out, progress=False)
    steps_per_epoch = len(D.split_indices(dataset, "train")) // 16
    assert result.steps == 3 * steps_per_epoch and not result.interrupted
    rows = _log(out / "log.csv")
    losses = [r for r in rows if r["total_loss"]]
    assert len(losses) == result.steps and len(rows) == result.steps + 3
    rates = [float(r["learning_rate"]) for r in losses]
    assert rates[0] == pytest.approx(0.003) and rates == sorted(rates, reverse=True)  # cosine decay
    assert dl.get_dl_model_param(model, "learning_rate") == pytest.approx(0.003)  # restored afterwards
    errors = [h["top1_error"] for h in result.history]
    assert result.best_measure == min(errors) and result.best_epoch == 1 + errors.index(min(errors))
    best = dl.read_dl_model(out / "best_model.onnx")
    assert evaluate_dl_model(best, dataset)["top1_error"] == pytest.approx(result.best_measure)
    assert (out / "training.png").stat().st_size > 1000


def test_interrupt_keeps_log_and_best_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, dataset = _classification(tmp_path)
    steps_per_epoch = len(D.split_indices(dataset, "train")) // 16
    real, calls = training.train_dl_model_batch, []

    def interrupted_later(m: dl.DLModel, samples: list) -> dict:
        calls.append(1)
        if len(calls) == steps_per_epoch + 2:  # during the second epoch
            raise KeyboardInterrupt
        return real(m, samples)

    monkeypatch.setattr(training, "train_dl_model_batch", interrupted_later)
    out = tmp_path / "run"
    result = training.train_dl_model(model, dataset, epochs=3, output_dir=out, progress=False)
    assert result.interrupted and result.steps == steps_per_epoch + 1 and result.best_epoch == 1
    rows = _log(out / "log.csv")
    assert [r["step"] for r in rows if r["total_loss"]] == [str(i) for i in range(1, result.steps + 1)]
    assert dl.get_dl_model_param(dl.read_dl_model(out / "best_model.onnx"), "num_classes") == 4


def test_evaluate_dl_model_reads_preprocesses_and_measures(tmp_path: Path) -> None:
    model, dataset = _classification(tmp_path, count=40)
    measures = evaluate_dl_model(model, dataset, "validation")
    from onnx_dl.preprocess import preprocess_dl_samples

    samples = preprocess_dl_samples(D.gen_dl_samples(dataset, D.split_indices(dataset, "validation")), model.params)
    expected = classification_measures(dl.apply_dl_model(model, samples), samples, dataset["class_ids"])
    assert measures["top1_error"] == expected["top1_error"]
    assert np.array_equal(measures["absolute_confusion_matrix"], expected["absolute_confusion_matrix"])
    assert measures["absolute_confusion_matrix"].sum() == len(samples)


@pytest.mark.parametrize("kind", ["segmentation", "detection"])
def test_loop_runs_for_every_model_type(tmp_path: Path, kind: str) -> None:
    dataset = D.read_dl_dataset(D.write_synthetic_dataset(kind, tmp_path / "data", 24, 64, seed=1))
    D.split_dl_dataset(dataset, 70, 30, seed=0)
    if kind == "segmentation":
        model = dl.read_dl_model("segmentation_compact")
        dl.set_dl_model_param(model, "image_dimensions", [64, 64, 3])
    else:
        model = dl.create_dl_model_detection("classifier_compact", 3, {"image_width": 64, "image_height": 64,
                                                                       "min_level": 3, "max_level": 4,
                                                                       "capacity": "low"})
    dl.set_dl_model_param(model, "batch_size", 4)
    result = training.train_dl_model(model, dataset, epochs=1, augment=True, output_dir=tmp_path / "run",
                                     progress=False)
    name = "mean_iou" if kind == "segmentation" else "mean_ap"  # detection: HALCON's key, IoU 0.5:0.95
    assert result.history and 0.0 <= result.history[0][name] <= 1.0
    assert (tmp_path / "run" / "best_model.onnx").exists()


def test_loop_argument_errors(tmp_path: Path) -> None:
    model, dataset = _classification(tmp_path, count=16)
    with pytest.raises(dl.DLParamError, match="epochs"):
        training.train_dl_model(model, dataset, epochs=0)
    for sample in dataset["samples"]:
        sample.pop("split")
    with pytest.raises(dl.DLParamError, match="no 'train' samples"):
        training.train_dl_model(model, dataset, epochs=1)
