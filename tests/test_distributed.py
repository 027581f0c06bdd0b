"""Data-parallel training on a local Ray cluster (onnx_dl.distributed): K = 2 workers equal the single
process with batch_size_multiplier = 2 bit for bit, through failures, resume and the training loop."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

import onnx_dl as dl
from conftest import assert_unchanged, snapshot, weights
from onnx_dl import dataset as D
from onnx_dl import training
from onnx_dl.distributed import DataParallel, shares
from onnx_dl.synthetic import classification_samples

SIZE, BATCH, STEPS = 16, 4, 3
ROOT = Path(dl.__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Any:
    """One local Ray cluster for the module; workers import this checkout of onnx_dl. The single-process
    runs use one engine thread, as each worker does, so no kernel's result depends on a thread count."""
    threads = dl.get_system("thread_num")
    dl.set_system("thread_num", 1)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield
    ray.shutdown()
    dl.set_system("thread_num", threads)


def _model(solver: str = "sgd", multiplier: int = 2) -> dl.DLModel:
    """The bundled classifier (batch norm after every convolution) on tiny images."""
    model = dl.read_dl_model("classifier_compact")
    for name, value in [("class_ids", [0, 1, 2, 3]), ("image_dimensions", [SIZE, SIZE, 3]), ("batch_size", BATCH),
                        ("batch_size_multiplier", multiplier), ("solver_type", solver), ("learning_rate", 0.01),
                        ("weight_prior", 1e-4)]:
        dl.set_dl_model_param(model, name, value)
    return model


def _batches(count: int = STEPS, multiplier: int = 2) -> list[list[dict[str, Any]]]:
    samples = classification_samples(count * BATCH * multiplier, size=SIZE, seed=3)
    step = BATCH * multiplier
    return [samples[i:i + step] for i in range(0, len(samples), step)]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """The single-process runs (losses per step, final weights), per solver."""
    found = {}
    for solver in ("sgd", "adam"):
        model = _model(solver)
        losses = [dl.train_dl_model_batch(model, batch) for batch in _batches(STEPS + 1)]
        found[solver] = {"losses": losses, "weights": weights(model), "model": model}
    return found


def _log(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def _assert_same_weights(model: dl.DLModel, expected: dict[str, np.ndarray]) -> None:
    found = weights(model)  # trained weights and the batch-norm running statistics
    assert found.keys() == expected.keys()
    differ = [name for name, value in expected.items() if not np.array_equal(found[name], value)]
    assert not differ, f"not bit-identical: {differ}"


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_two_workers_equal_the_multiplier_run_bit_for_bit(reference: dict[str, Any], solver: str) -> None:
    model = _model(solver)
    with DataParallel(model, num_workers=2) as runner:
        losses = [runner.train_dl_model_batch(batch) for batch in _batches(STEPS + 1)]
        assert len(runner.timing.worker_compute) == 2  # one chunk on each worker
    expected = reference[solver]
    assert losses == expected["losses"]
    _assert_same_weights(model, expected["weights"])
    kind, steps, state = model.solver_state()
    ref_kind, ref_steps, ref_state = expected["model"].solver_state()
    assert (kind, steps) == (ref_kind, ref_steps) == (solver, STEPS + 1)
    for name, buffers in ref_state.items():
        for key, value in buffers.items():
            assert np.array_equal(state[name][key], value), (name, key)
    test = classification_samples(8, size=SIZE, seed=9)
    assert dl.apply_dl_model(model, test) == dl.apply_dl_model(expected["model"], test)


def test_a_worker_that_dies_mid_step_is_replaced_and_the_result_is_identical(reference: dict[str, Any]) -> None:
    model = _model("sgd")
    with DataParallel(model, num_workers=2) as runner:
        losses = []
        for step, batch in enumerate(_batches(STEPS + 1)):
            if step == 1:
                runner.die_during_next_step(1)
            losses.append(runner.train_dl_model_batch(batch))
            assert runner.timing.restarts == (1 if step == 1 else 0)
    assert losses == reference["sgd"]["losses"]
    _assert_same_weights(model, reference["sgd"]["weights"])


def test_resume_of_a_distributed_run_from_its_written_model_is_exact(reference: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    batches = _batches(STEPS + 1)
    first = _model("adam")
    with DataParallel(first, num_workers=2) as runner:
        losses = [runner.train_dl_model_batch(batch) for batch in batches[:2]]
    dl.write_dl_model(first, tmp_path / "halfway.onnx")
    resumed = dl.read_dl_model(tmp_path / "halfway.onnx")
    assert dl.get_dl_model_param(resumed, "batch_size_multiplier") == 2
    with DataParallel(resumed, num_workers=2) as runner:
        losses += [runner.train_dl_model_batch(batch) for batch in batches[2:]]
    assert losses == reference["adam"]["losses"]
    _assert_same_weights(resumed, reference["adam"]["weights"])


def test_a_failed_step_on_a_worker_changes_nothing(reference: dict[str, Any]) -> None:
    model = _model("sgd")
    batches = _batches(STEPS + 1)
    with DataParallel(model, num_workers=2) as runner:
        runner.train_dl_model_batch(batches[0])
        before = snapshot(model)
        poisoned = [dict(s) for s in batches[1]]
        for sample in poisoned[BATCH:]:  # finite images whose batch norm overflows: worker 1's loss is NaN
            sample["image"] = np.full_like(sample["image"], 3e38)
        with pytest.raises(dl.DLNonFiniteError, match="chunk 2 of 2"):
            runner.train_dl_model_batch(poisoned)
        assert_unchanged(before, model)
        with pytest.raises(dl.DLSampleError, match="batch_size_multiplier"):
            runner.train_dl_model_batch(batches[1][:BATCH])
        assert_unchanged(before, model)
        losses = [runner.train_dl_model_batch(batch) for batch in batches[1:]]  # as if nothing had happened
    assert losses == reference["sgd"]["losses"][1:]
    _assert_same_weights(model, reference["sgd"]["weights"])


def test_more_chunks_than_workers_equal_the_multiplier_run_to_float32_rounding() -> None:
    """Four chunks on two workers: each worker adds its two, the driver the two sums (g0 + g1) + (g2 + g3)
    where the single process adds ((g0 + g1) + g2) + g3: equal up to float32 rounding."""
    assert shares(4, 2) == [range(0, 2), range(2, 4)] and shares(3, 2) == [range(0, 1), range(1, 3)]
    single, parallel = _model("sgd", multiplier=4), _model("sgd", multiplier=4)
    batches = _batches(2, multiplier=4)
    expected = [dl.train_dl_model_batch(single, batch) for batch in batches]
    with DataParallel(parallel, num_workers=2) as runner:
        found = [runner.train_dl_model_batch(batch) for batch in batches]
    for a, b in zip(found, expected):
        assert a["total_loss"] == pytest.approx(b["total_loss"], rel=1e-6)
    for name, value in weights(single).items():
        np.testing.assert_allclose(weights(parallel)[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_the_training_loop_takes_a_runner_and_writes_on_the_driver(tmp_path: Path) -> None:
    dataset = D.read_dl_dataset(D.write_synthetic_dataset("classification", tmp_path / "data", 40, SIZE, seed=2))
    D.split_dl_dataset(dataset, 80, 20, seed=0)
    single, parallel = _model("adam"), _model("adam")
    alone = training.train_dl_model(single, dataset, epochs=1, output_dir=tmp_path / "alone", progress=False)
    with DataParallel(parallel, num_workers=2) as runner:
        spread = training.train_dl_model(parallel, dataset, epochs=1, output_dir=tmp_path / "spread",
                                         progress=False, runner=runner)
    assert spread.steps == alone.steps == 32 // (BATCH * 2) and spread.history == alone.history
    _assert_same_weights(parallel, weights(single))
    losses = [[r["total_loss"] for r in _log(tmp_path / run / "log.csv")] for run in ("alone", "spread")]
    assert losses[0] == losses[1]
    assert (tmp_path / "spread" / "best_model.onnx").exists()


def test_a_worker_that_cannot_start_gives_a_clear_error() -> None:
    model = _model()
    with pytest.raises(dl.DLRuntimeError, match="3 workers of 1 CPU each need 3 CPUs; the Ray cluster has 2"):
        DataParallel(model, num_workers=3)
    with pytest.raises(dl.DLRuntimeError, match="the workers did not start within 0.001 s"):
        DataParallel(model, num_workers=2, start_timeout=1e-3)  # no process starts in a millisecond
    with pytest.raises(dl.DLParamError, match="num_workers"):
        DataParallel(model, num_workers=0)
    with DataParallel(model, num_workers=2) as runner:  # the failed starts left no worker holding a CPU
        assert runner.train_dl_model_batch(_batches(1)[0])["total_loss"] > 0


def test_importing_onnx_dl_does_not_import_ray() -> None:
    code = "import sys, onnx_dl, onnx_dl.distributed, onnx_dl.cli; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "False"


def test_the_command_line_trains_on_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from onnx_dl import cli

    assert cli.main(["train", "--workers", "2", "--samples", "40", "--image-size", "16", "--batch-size", "4",
                     "--epochs", "1", "--output", str(tmp_path), "--quiet"]) == 0
    (run,) = list(tmp_path.iterdir())
    rows = [r for r in _log(run / "log.csv") if r["total_loss"]]
    assert len(rows) == 32 // (4 * 2)  # 32 training samples, steps of 2 chunks of 4
    assert dl.get_dl_model_param(dl.read_dl_model(run / "best_model.onnx"), "batch_size_multiplier") == 2
    assert ray.is_initialized()  # the runner joined the module's cluster and left it running


def test_workers_read_their_own_samples_from_shared_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dataset mode equals the operator on the same samples preprocessed by the driver; the driver reads none."""
    from onnx_dl.preprocess import preprocess_dl_samples

    dataset = D.read_dl_dataset(D.write_synthetic_dataset("classification", tmp_path / "data", 24, 20, seed=4))
    single, parallel = _model("adam"), _model("adam")
    order = [[5, 17, 2, 9, 11, 0, 23, 7], [1, 3, 4, 6, 8, 10, 12, 13]]
    expected = [dl.train_dl_model_batch(single, preprocess_dl_samples(D.gen_dl_samples(dataset, ids), single.params))
                for ids in order]
    monkeypatch.setattr(D, "read_image", lambda path: pytest.fail(f"the driver read {path}"))
    with DataParallel(parallel, num_workers=2, dataset=dataset) as runner:
        found = [runner.train_dataset_batch(ids) for ids in order]
    assert found == expected
    _assert_same_weights(parallel, weights(single))


def test_the_training_loop_sends_only_indices_to_workers_that_read_the_dataset(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """train_dl_model with a dataset-mode runner: the driver reads no training image (the validation images it
    evaluates on it does read), the run equals the single-process one, and augmentation is refused."""
    dataset = D.read_dl_dataset(D.write_synthetic_dataset("classification", tmp_path / "data", 40, SIZE, seed=2))
    D.split_dl_dataset(dataset, 80, 20, seed=0)
    single, parallel = _model("adam"), _model("adam")
    alone = training.train_dl_model(single, dataset, epochs=1, progress=False)
    train_files = {dataset["samples"][i]["image_file_name"] for i in D.split_indices(dataset, "train")}
    real = D.read_image

    def driver_read(path: Any) -> np.ndarray:
        assert Path(path).name not in train_files, f"the driver read the training image {path}"
        return real(path)

    monkeypatch.setattr(D, "read_image", driver_read)
    with DataParallel(parallel, num_workers=2, dataset=dataset) as runner:
        with pytest.raises(dl.DLParamError, match="does not augment"):
            training.train_dl_model(parallel, dataset, epochs=1, progress=False, runner=runner, augment=True)
        spread = training.train_dl_model(parallel, dataset, epochs=1, progress=False, runner=runner)
        with pytest.raises(dl.DLParamError, match="read another dataset"):
            training.train_dl_model(parallel, dict(dataset), epochs=1, progress=False, runner=runner)
    assert spread.steps == alone.steps and spread.history == alone.history
    _assert_same_weights(parallel, weights(single))


def test_workers_read_the_samples_preprocess_dl_dataset_wrote(tmp_path: Path) -> None:
    """A dataset written by preprocess_dl_dataset (here with HALCON's 'first_channel' stretch, which the
    model's own preprocessing would not apply) trains on the written samples, in the driver and the workers."""
    dataset = D.read_dl_dataset(D.write_synthetic_dataset("classification", tmp_path / "data", 40, SIZE, seed=6))
    D.split_dl_dataset(dataset, 80, 20, seed=0)
    single, parallel = _model("adam"), _model("adam")
    param = dl.create_dl_preprocess_param_from_model(single, normalization_type="first_channel")
    dl.preprocess_dl_dataset(dataset, tmp_path / "prepared", param)
    assert "dlsample_dir" in dataset
    training.train_dl_model(single, dataset, epochs=1, progress=False)
    with DataParallel(parallel, num_workers=2, dataset=dataset) as runner:
        training.train_dl_model(parallel, dataset, epochs=1, progress=False, runner=runner)
    _assert_same_weights(parallel, weights(single))
