"""HALCON's training loop: create_dl_train_param, the index stream, change and serialisation strategies,
train and evaluation infos, and a resumed run that equals the uninterrupted one bit for bit."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import onnx_dl as dl
from onnx_dl import dataset as D
from onnx_dl import train_param as TP
from onnx_dl import training
from onnx_dl.train_param import create_dl_train_param, latest_checkpoint


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """48 generated 16 x 16 images of 4 classes: 36 train (4 batches of 8 and 4 left over), 12 validation."""
    folder = tmp_path_factory.mktemp("shapes")
    data = D.read_dl_dataset(D.write_synthetic_dataset("classification", folder, 48, 16, seed=2))
    D.split_dl_dataset(data, 75, 25, seed=0)
    return data


def _model(dataset: dict, solver: str = "sgd") -> dl.DLModel:
    model = dl.read_dl_model("classifier_compact")
    dl.set_dl_model_param(model, "class_ids", dataset["class_ids"])
    dl.set_dl_model_param(model, "image_dimensions", [16, 16, 3])
    for name, value in [("batch_size", 8), ("learning_rate", 0.05), ("solver_type", solver)]:
        dl.set_dl_model_param(model, name, value)
    return model


# -- create_dl_train_param ------------------------------------------------------------------------

def test_create_dl_train_param_keys_and_defaults(dataset: dict) -> None:
    model = _model(dataset)
    param = create_dl_train_param(model, 5, 1, "false", 3, [], [])
    assert param["num_epochs"] == 5 and param["evaluation_interval_epochs"] == 1 and param["seed_rand"] == 3
    assert param["serialization_strategies"] == [{"type": "best", "basename": "model_best"}]
    assert param["change_strategies"] == [] and param["augmentation_param"] == {} and param["evaluation_param"] == {}
    assert param["num_samples_mean_loss"] == 1000 and param["update_interval_seconds"] == 2
    assert param["evaluation_comparison_keys"] == ["top1_error"] and param["evaluate_before_train"] is False
    assert param["display_param"]["enabled"] is False
    assert create_dl_train_param(model, 1, 1, True, [], [], [])["seed_rand"] is None  # HALCON's empty tuple
    change = {"model_param": "learning_rate", "epochs": [2], "values": [0.01]}
    listed = create_dl_train_param(model, 4, 1, True, 1, ["change", "serialize", "serialize", "augment"],
                                   [change, {"type": "final", "basename": "f"}, {"type": "epochs", "basename": "e",
                                                                                 "epochs": 2}, {"mirror": "c"}])
    as_dict = create_dl_train_param(model, 4, 1, True, 1, {
        "change": change, "serialize": [{"type": "final", "basename": "f"}, {"type": "epochs", "basename": "e",
                                                                             "epochs": 2}], "augment": {"mirror": "c"}})
    assert listed == as_dict
    assert listed["change_strategies"][0]["initial_value"] == 0.05  # the model's value when not given
    assert [s["type"] for s in listed["serialization_strategies"]] == ["final", "epochs"]
    assert detection_key(dataset) == ["mean_ap"]


def detection_key(dataset: dict) -> list[str]:
    detector = dl.create_dl_model_detection("classifier_compact", 3, {"image_width": 64, "image_height": 64,
                                                                      "min_level": 3, "max_level": 4, "capacity": "low"})
    return create_dl_train_param(detector, 1, 1, False, 1)["evaluation_comparison_keys"]


@pytest.mark.parametrize("names, values, message", [
    (["shuffle"], [{}], "unknown GenParamName 'shuffle'"),
    (["change", "serialize"], [{}], "one GenParamValue per GenParamName"),
    (["change"], [{"model_param": "learning_rate", "epochs": [2, 1], "values": [0.1, 0.2]}], "rising 'epochs'"),
    (["change"], [{"model_param": "learning_rate", "epochs": [1], "values": [-1.0]}], "learning_rate"),
    (["change"], [{"model_param": "type", "epochs": [1], "values": ["x"]}], "read-only"),
    (["change"], [{"model_param": "learning_rate", "epochs": [1], "values": [0.1], "scale_momentum_threshold": 0.5}],
     "scale_momentum_threshold"),
    (["serialize"], [{"type": "sometimes", "basename": "x"}], "'type' expected one of"),
    (["serialize"], [{"type": "epochs", "basename": "x"}], "type 'epochs' expects 'epochs'"),
    (["augment"], [{"mirror": "diagonal"}], "mirror"),
    (["display"], [{"colour": "red"}], "unknown keys"),
    (["display"], [{"enabled": "yes"}], r"'enabled': expected a bool, got 'yes'"),
    (["display"], [{"selected_percentage_train_samples": 150}], r"'selected_percentage_train_samples': expected a "
                                                                  r"number in \[0, 100\], got 150"),
    (["display"], [{"selected_percentage_train_samples": "10"}], "'selected_percentage_train_samples'"),
    (["display"], [{"log_dir": 3}], r"'log_dir': expected a folder path .* or None, got 3"),
    (["change"], [{"model_param": "learning_rate", "epochs": [1], "values": {"a": 0.1}}],
     r"'values' expected a number or a list of values .*, got \{'a': 0.1\}"),
    (["change"], [{"model_param": "learning_rate", "epochs": [1]}], "'values' expected a number or a list"),
    (["evaluate"], [{"max_num_detections": 10}], "apply to detection models"),
])
def test_bad_train_params_are_refused(dataset: dict, names: list, values: list, message: str) -> None:
    with pytest.raises((dl.DLParamError, dl.DLSampleError), match=message):
        create_dl_train_param(_model(dataset), 2, 1, False, 1, names, values)


@pytest.mark.parametrize("key, value, message", [
    ("update_interval_seconds", "2", "'update_interval_seconds': expected a number >= 0, got '2'"),
    ("update_interval_seconds", -1, "'update_interval_seconds': expected a number >= 0, got -1"),
    ("num_samples_mean_loss", 0, "'num_samples_mean_loss': expected an int >= 1, got 0"),
    ("num_samples_mean_loss", 2.5, "'num_samples_mean_loss': expected an int >= 1, got 2.5"),
    ("evaluate_before_train", "true", "'evaluate_before_train': expected a bool, got 'true'"),
    ("display_param", {"enabled": 1}, "'enabled': expected a bool, got 1"),
    ("display_param", {"selected_percentage_train_samples": -5}, "'selected_percentage_train_samples'"),
    ("display_param", {"log_dir": ["x"]}, "'log_dir'"),
    ("display_param", None, "'display_param': expected a dict, got None"),
])
def test_bad_train_param_values_are_refused_before_any_step(dataset: dict, key: str, value: Any,
                                                            message: str) -> None:
    """A bad value set in the dict after create_dl_train_param: a DLParamError naming the key, what was
    expected and what came, before the first step (the model is left as it was)."""
    model = _model(dataset)
    param = create_dl_train_param(model, 1, 1, False, 1)
    param["serialization_strategies"] = []
    if key == "display_param" and value is not None:
        value = dict(param["display_param"], **value)
    param[key] = value
    with pytest.raises(dl.DLParamError, match=message):
        TP.check_train_param(param, model)
    before = _weights(model)
    with pytest.raises(dl.DLParamError, match=message):
        training.train_dl_model(model, dataset, param)
    assert model.solver_state() is None and _weights(model) == before


def test_change_strategy_values_may_be_one_number(dataset: dict) -> None:
    """A change strategy's 'values' may be one number (HALCON's tuple of one), as strategy_value reads it."""
    model = _model(dataset)
    param = create_dl_train_param(model, 2, 1, False, 1, "change",
                                  {"model_param": "learning_rate", "epochs": 1, "values": 0.01})
    strategy = param["change_strategies"][0]
    assert [TP.strategy_value(strategy, e) for e in (0, 0.99, 1, 2)] == [0.05, 0.05, 0.01, 0.01]
    with pytest.raises(dl.DLParamError, match="one value per epoch"):
        TP.check_change_strategy(dict(strategy, epochs=[1, 2]), model)


def test_bad_loop_arguments_are_refused(dataset: dict, tmp_path: Path) -> None:
    model = _model(dataset)
    param = create_dl_train_param(model, 1, 1, False, 1, "serialize", {"type": "final", "basename": str(tmp_path / "f")})
    with pytest.raises(dl.DLParamError, match="not both"):
        training.train_dl_model(model, dataset, param, epochs=1)
    with pytest.raises(dl.DLParamError, match="no checkpoint of this run"):
        training.train_dl_model(model, dataset, param, "resume")
    with pytest.raises(dl.DLParamError, match="start_epoch expected"):
        training.train_dl_model(model, dataset, param, -1)
    with pytest.raises(dl.DLParamError, match=r"start_epoch expected at most num_epochs 1, got 1.5"):  # [P]
        training.train_dl_model(model, dataset, param, 1.5)
    rising = create_dl_train_param(model, 2, 1, False, 1, "change", {"model_param": "learning_rate", "epochs": [1],
                                                                     "values": [0.5], "scale_momentum_threshold": 2})
    with pytest.raises(dl.DLParamError, match="scaled by the rate's change 10 is 9"):  # checked before any step
        training.train_dl_model(model, dataset, rising)
    assert model.solver_state() is None


# -- the index stream and the schedule ------------------------------------------------------------

def test_index_stream_concatenates_permutations_and_carries_leftovers() -> None:
    train = list(range(10, 20))
    stream, seeds = TP.index_stream(train, 2.5, seed=5)
    assert len(stream) == 30 and len(seeds) == 30
    for epoch in range(3):
        assert sorted(stream[epoch * 10:(epoch + 1) * 10]) == train
    rng = np.random.default_rng(5)  # the formula, drawn independently
    expected = np.concatenate([rng.permutation(np.array(train)) for _ in range(3)])
    assert np.array_equal(stream, expected)
    assert np.array_equal(seeds, np.floor((2**31 - 1) * rng.random(30)).astype(np.int64))
    per_epoch, total = TP.iterations(len(train), 4, 2.5)
    assert (per_epoch, total) == (2, 5)
    batches = [stream[i * 4:(i + 1) * 4] for i in range(total)]
    assert set(batches[2]) & set(stream[:10]) and set(batches[2]) & set(stream[10:20])  # batch 3 spans two shuffles
    assert np.array_equal(TP.index_stream(train, 2.5, seed=5)[0], stream)  # the same for any batch size


def test_evaluation_schedule_and_mean_loss() -> None:
    due = [i for i in range(10) if TP.evaluation_due(i, 4, 10, 1.0)]
    assert due == [4, 8, 9]  # non-zero multiples of floor(1.0 * 4) and the last iteration (HALCON)
    assert [i for i in range(10) if TP.evaluation_due(i, 4, 10, 0.25)] == list(range(10))  # interval 1
    assert not any(TP.evaluation_due(i, 4, 10, 0.0) for i in range(10))
    results = [{"total_loss": float(v)} for v in range(1, 11)]
    assert TP.mean_loss(results, 24, 8) == pytest.approx(np.mean([8, 9, 10]))  # ceil(24 / 8) = 3 iterations
    assert TP.mean_loss(results, 1000, 8) == pytest.approx(5.5)


def test_strategy_values_and_serialisation_marks() -> None:
    strategy = {"model_param": "learning_rate", "initial_value": 0.1, "epochs": [1.5, 3], "values": [0.01, 0.001]}
    assert [TP.strategy_value(strategy, e) for e in (0, 1.49, 1.5, 2.9, 3, 10)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    every_two = {"type": "epochs", "basename": "m", "epochs": 2}
    assert TP.epochs_reached(every_two, 1.75, 2.0) == [2.0] and TP.epochs_reached(every_two, 2.0, 2.25) == []
    listed = {"type": "epochs", "basename": "m", "epochs": [1, 2.5]}
    assert [TP.epochs_reached(listed, i / 4, (i + 1) / 4) for i in (3, 9)] == [[1.0], [2.5]]
    names = TP.due_serializations([{"type": "best", "basename": "b"}, {"type": "final", "basename": "f"}, every_two],
                                  7, 8, 4, improved=False)
    assert names == ["f", "m_epoch_2"]


def test_change_strategies_and_momentum_scaling_reach_each_step(dataset: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step runs with the learning rate of the strategy at epoch i / per_epoch; a fall by more than
    scale_momentum_threshold runs one step with momentum mu * new / old, then mu again (HALCON)."""
    model = _model(dataset)
    seen: list[tuple[float, float, list[int]]] = []
    monkeypatch.setattr(training, "train_dl_model_batch", lambda m, samples: (
        seen.append((m.params["learning_rate"], m.params["momentum"], len(samples))) or {"total_loss": 1.0}))
    strategy = {"model_param": "learning_rate", "epochs": [1.5, 2], "values": [0.01, 0.008],
                "scale_momentum_threshold": 2.0}
    param = create_dl_train_param(model, 3, 0, False, 1, ["change", "serialize"],
                                  [strategy, {"type": "final", "basename": "unused"}])
    param["serialization_strategies"] = []
    results, infos, evaluations = training.train_dl_model(model, dataset, param)
    expected_rates = [0.05] * 6 + [0.01] * 2 + [0.008] * 4  # 4 iterations per epoch: epoch 1.5 = iteration 6
    assert [r for r, _, _ in seen] == expected_rates
    momenta = [m for _, m, _ in seen]
    assert momenta[6] == pytest.approx(0.9 * 0.01 / 0.05) and momenta[:6] == [0.9] * 6 and momenta[7:] == [0.9] * 5
    assert len(results) == 12 and evaluations == []  # evaluation_interval_epochs 0: no evaluation
    assert dl.get_dl_model_param(model, "learning_rate") == 0.008  # left as the strategy set it (HALCON)


# -- the loop, end to end -------------------------------------------------------------------------

def _param(model: dl.DLModel, folder: Path, interrupted: bool = True) -> dict[str, Any]:
    strategies = [{"type": "best", "basename": str(folder / "best")}, {"type": "final", "basename": str(folder / "final")},
                  {"type": "epochs", "basename": str(folder / "every"), "epochs": 1}]
    if interrupted:
        strategies.append({"type": "interrupted", "basename": str(folder / "interrupted")})
    param = create_dl_train_param(model, 3.5, 1, False, 11, ["change", "augment", "display"] + ["serialize"] * len(strategies),
                                  [{"model_param": "learning_rate", "epochs": [1.5, 2.5], "values": [0.01, 0.001],
                                    "scale_momentum_threshold": 2.0},
                                   {"augmentation_percentage": 60, "mirror": "rc", "brightness_variation": 20},
                                   {"log_dir": str(folder), "selected_percentage_train_samples": 50}, *strategies])
    param["update_interval_seconds"] = 0  # a train info after every iteration: comparable between runs
    param["num_samples_mean_loss"] = 24  # mean_loss over the last ceil(24 / 8) = 3 iterations
    return param


def _weights(model: dl.DLModel) -> dict[str, bytes]:
    import onnx

    return {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in model.network().graph.initializer}


def _log(folder: Path) -> list[list[str]]:
    """log.csv without the images_per_second column (a timing)."""
    with open(folder / "log.csv", newline="") as stream:
        return [r[:4] + r[5:] for r in csv.reader(stream)]


def _untimed(infos: list[dict]) -> list[dict]:
    """Train infos without what records the call rather than the run: the time and the start epoch."""
    return [{k: v for k, v in info.items() if k not in ("time_elapsed", "start_epoch")} for info in infos]


def test_loop_records_halcon_infos_and_serialises(dataset: dict, tmp_path: Path) -> None:
    model = _model(dataset)
    param = _param(model, tmp_path)
    results, infos, evaluations = training.train_dl_model(dataset, model, param)  # HALCON's argument order
    assert len(results) == 14 and all(set(r) >= {"total_loss", "loss_cross_entropy"} for r in results)
    # after iteration i the model has done i + 1 steps: epoch (i + 1) / 4, as in the train info of that iteration
    assert [(e["iteration"], e["epoch"]) for e in evaluations] == [(4, 1.25), (8, 2.25), (12, 3.25), (13, 3.5)]
    assert all(e["epoch"] == infos[e["iteration"]]["epoch"] for e in evaluations)
    assert all(set(e["result_train"]) >= {"top1_error"} for e in evaluations)  # 50 % of the train split
    assert [i["iteration"] for i in infos] == list(range(14)) and infos[-1]["epoch"] == 3.5
    losses = [r["total_loss"] for r in results]
    assert infos[5]["mean_loss"] == pytest.approx(np.mean(losses[3:6]), rel=1e-12)
    assert infos[1]["mean_loss"] == pytest.approx(np.mean(losses[:2]), rel=1e-12)
    assert infos[6]["model_params"]["momentum"] == pytest.approx(0.9 * 0.01 / 0.05)
    errors = [e["result"]["top1_error"] for e in evaluations]
    best_index = errors.index(min(errors))  # the first of the lowest
    best = dl.read_dl_model(tmp_path / "best.onnx")
    assert dl.evaluation.evaluate_dl_model(best, dataset)["top1_error"] == min(errors)
    assert TP.read_checkpoint(tmp_path / "best_info.json")["next_iteration"] == evaluations[best_index]["iteration"] + 1
    assert sorted(p.name for p in tmp_path.glob("every_epoch_*.onnx")) == [f"every_epoch_{e}.onnx" for e in (1, 2, 3)]
    assert _weights(dl.read_dl_model(tmp_path / "final.onnx")) == _weights(model)
    assert not (tmp_path / "interrupted.onnx").exists()
    log = _log(tmp_path)
    assert len(log) == 1 + 14 + 4 and (tmp_path / "training.png").stat().st_size > 1000
    evaluation_rows = [k for k, row in enumerate(log) if k and row[4]]  # validation_measure (speed dropped)
    assert [log[k][0] for k in evaluation_rows] == ["1.25", "2.25", "3.25", "3.5"]
    assert all(log[k][0] == log[k - 1][0] for k in evaluation_rows)  # the epoch of the step just before


@pytest.fixture(scope="module")
def straight_run(dataset: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dl.DLModel, tuple]:
    """The uninterrupted run of :func:`_param`: its folder, its model and what it returned."""
    folder = tmp_path_factory.mktemp("runs") / "straight"
    model = _model(dataset)
    return folder, model, training.train_dl_model(model, dataset, _param(model, folder))


def _interrupt_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during step 7 (after the learning rate fell and the momentum was scaled)."""
    real, calls = training.train_dl_model_batch, []

    def interrupted(m: dl.DLModel, samples: list) -> dict:
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(m, samples)
    monkeypatch.setattr(training, "train_dl_model_batch", interrupted)


def _interrupt_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the evaluation after iteration 8: validation (3rd call) done, the train share interrupted."""
    real, calls = training.evaluate_dl_model, []

    def interrupted(*args: Any, **kwargs: Any) -> dict:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(training, "evaluate_dl_model", interrupted)


def _interrupt_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the logging of step 7, after its row was written and flushed: the model has stepped."""
    real, calls = training._HalconRun._log_step, []

    def interrupted(run: Any, *args: Any) -> None:
        real(run, *args)
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
    monkeypatch.setattr(training._HalconRun, "_log_step", interrupted)


def _interrupt_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in apply_change_strategies before iteration 6, right after the learning rate fell and the
    scaled momentum was set, before it returns the momentum to restore."""
    real = TP.set_dl_model_param

    def interrupted(m: dl.DLModel, name: str, value: Any) -> None:
        real(m, name, value)
        if name == "momentum" and value != 0.9:
            raise KeyboardInterrupt
    monkeypatch.setattr(TP, "set_dl_model_param", interrupted)


INTERRUPTIONS = {"step": (_interrupt_step, (6, "applied")), "evaluation": (_interrupt_evaluation, (8, "stepped")),
                 "log": (_interrupt_log, (6, "stepped")), "change": (_interrupt_change, (6, "start"))}


@pytest.mark.parametrize("where", list(INTERRUPTIONS))
def test_interrupted_and_resumed_run_equals_the_straight_run(dataset: dict, tmp_path: Path, straight_run: tuple,
                                                             monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Ctrl-C in a step, an evaluation, the logging after a step or the change strategies; 'resume' with the
    model read from the latest checkpoint: weights byte-equal, train results, evaluation infos, train infos
    (but times) and log rows equal to the straight run's (no step trained twice, no momentum left scaled)."""
    straight_folder, straight, expected = straight_run
    model = _model(dataset)
    param = _param(model, tmp_path / "resumed")
    interrupt, where_saved = INTERRUPTIONS[where]
    interrupt(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        training.train_dl_model(model, dataset, param)
    monkeypatch.undo()
    checkpoint = latest_checkpoint(param)
    assert checkpoint == tmp_path / "resumed" / "interrupted.onnx"
    state = TP.read_checkpoint(TP.info_path_of(checkpoint))
    assert (state["next_iteration"], state["phase"]) == where_saved
    assert len(state["train_results"]) == state["next_iteration"]  # the interrupted step is not recorded yet
    assert (state["pending_step"] is not None) == (state["phase"] == "stepped")
    if where == "change":  # the checkpoint is the state before the strategies: they apply again on the resume
        saved = dl.read_dl_model(checkpoint)
        assert (saved.params["learning_rate"], saved.params["momentum"]) == (0.05, 0.9)
        assert state["momentum_to_restore"] is None
    with pytest.raises(dl.DLParamError, match="read the model from that file"):
        training.train_dl_model(_model(dataset), dataset, param, "resume")
    resumed = dl.read_dl_model(checkpoint)
    got = training.train_dl_model(resumed, dataset, param, "resume")
    assert _weights(resumed) == _weights(straight)
    assert got[0] == expected[0]
    assert _untimed(got[1]) == _untimed(expected[1])
    assert got[1][-1]["start_epoch"] == state["next_iteration"] / 4 and expected[1][-1]["start_epoch"] == 0
    assert repr(got[2]) == repr(expected[2])  # measures hold arrays and NaN: compared by their text
    assert _log(tmp_path / "resumed") == _log(straight_folder)
    assert resumed.params["momentum"] == straight.params["momentum"] == 0.9
    for name in ("best", "final", "every_epoch_3"):
        assert _weights(dl.read_dl_model(tmp_path / "resumed" / f"{name}.onnx")) == \
            _weights(dl.read_dl_model(straight_folder / f"{name}.onnx")), name


def test_start_epoch_continues_from_an_epoch_checkpoint(dataset: dict, tmp_path: Path) -> None:
    """HALCON's numeric StartEpoch: the model of epoch 2 (an 'epochs' file) trained on from epoch 2 gives the
    straight run's weights and results."""
    straight = _model(dataset, "adam")
    expected = training.train_dl_model(straight, dataset, _param(straight, tmp_path, interrupted=False))
    model = dl.read_dl_model(tmp_path / "every_epoch_2.onnx")
    param = _param(model, tmp_path, interrupted=False)
    got = training.train_dl_model(model, dataset, param, 2)
    assert _weights(model) == _weights(straight) and got[0] == expected[0]
    assert repr(got[2]) == repr(expected[2])
    assert training.train_dl_model(model, dataset, param, 3.5) == ([], [], [])  # nothing left to do


def test_detection_comparison_key_is_mean_ap(tmp_path: Path) -> None:
    """A detector's best model is kept by mean_ap over IoU 0.5:0.95; evaluate_dl_model takes HALCON's
    max_num_detections and area_ranges."""
    data = D.read_dl_dataset(D.write_synthetic_dataset("detection", tmp_path / "data", 12, 64, seed=1))
    D.split_dl_dataset(data, 70, 30, seed=0)
    detector = dl.create_dl_model_detection("classifier_compact", 3, {"image_width": 64, "image_height": 64,
                                                                      "min_level": 3, "max_level": 4, "capacity": "low",
                                                                      "batch_size": 4})
    param = create_dl_train_param(detector, 1, 1, False, 1, {"serialize": {"type": "best", "basename": str(tmp_path / "b")},
                                                             "evaluate": {"max_num_detections": [-1, 10]}})
    _, _, evaluations = training.train_dl_model(detector, data, param)
    result = evaluations[-1]["result"]
    assert result["mean_ap"] == result["max_num_detections_all"]["area_all"]["mean_ap"] == result["map_50_95"]
    assert set(result) >= {"max_num_detections_all", "max_num_detections_10"}  # evaluation_param reached it
    measures = dl.evaluation.evaluate_dl_model(detector, data, gen_param={
        "max_num_detections": [-1, 10], "area_ranges": {"name": ["all", "small"], "min": [0, 0], "max": [2e8, 1024]}})
    assert set(measures["max_num_detections_10"]) == {"area_all", "area_small"}
    assert measures["max_num_detections_all"]["area_all"]["mean_ap"] == pytest.approx(result["mean_ap"])
    with pytest.raises(dl.DLParamError, match="unsupported keys"):
        dl.evaluation.evaluate_dl_model(detector, data, gen_param={"detailed_evaluation": True})
    with pytest.raises(dl.DLParamError, match="unknown names"):
        dl.evaluation.evaluate_dl_model(detector, data, gen_param={"area_ranges": ["tiny"]})
    assert math.isfinite(TP.comparison_value(result, ["mean_ap"]))


def test_halcon_script_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    """tools/halcon_script.py end to end: interrupted after 7 steps and resumed vs. uninterrupted: the final
    and best model files are byte-equal, and so are the results, the evaluations and the logs (timing aside)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("halcon_script", Path(__file__).parents[1] / "tools" / "halcon_script.py")
    script = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    settings = dict(images=64, size=16, num_epochs=3, display=False)
    resumed = script.run(tmp_path / "resumed", interrupt_after=7, **settings)
    straight = script.run(tmp_path / "straight", interrupt_after=0, **settings)
    assert resumed["interrupted"] and not straight["interrupted"]
    for name in ("model_final.onnx", "model_best.onnx"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert resumed["train_results"] == straight["train_results"] and len(straight["train_results"]) == 15  # 44 train images: 5 batches of 8 an epoch
    assert repr(resumed["evaluation_infos"]) == repr(straight["evaluation_infos"])
    assert repr(resumed["test"]) == repr(straight["test"])
    assert _log(tmp_path / "resumed") == _log(tmp_path / "straight")


def test_a_preprocessed_dataset_is_read_with_read_dl_samples(dataset: dict, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """HALCON trains on the samples preprocess_dl_dataset wrote: the loop reads them, not the images."""
    import copy

    from onnx_dl import halcon_preprocess

    data, model = copy.deepcopy(dataset), _model(dataset)
    dl.preprocess_dl_dataset(data, tmp_path / "prep", dl.create_dl_preprocess_param_from_model(model))
    read: list[int] = []
    real = halcon_preprocess.read_dl_samples
    monkeypatch.setattr(halcon_preprocess, "read_dl_samples", lambda d, indices: read.extend(indices) or real(d, indices))
    monkeypatch.setattr(D, "gen_dl_samples", None)  # the images are not read again
    param = create_dl_train_param(model, 1, 1, False, 1, "serialize", {"type": "final", "basename": str(tmp_path / "f")})
    results, _, evaluations = training.train_dl_model(data, model, param)
    train, validation = set(D.split_indices(data, "train")), set(D.split_indices(data, "validation"))
    assert len(results) == 4 and validation <= set(read) and len(set(read) & train) == 32  # 4 batches of 8
    assert math.isfinite(evaluations[-1]["result"]["top1_error"])


def test_schedules_become_change_strategies() -> None:
    """train_dl_model's 'step' / 'cosine' schedules as HALCON change strategies: the strategy's value at
    every iteration's epoch is the schedule's."""
    for name, settings in [("step", {"step_epochs": 2, "gamma": 0.5}), ("cosine", {"minimum": 0.001})]:
        strategy = training.schedule_change_strategy(name, 0.1, 5, 4, **settings)
        rate = training.schedule_function(name, 0.1, 5, **settings)
        assert [TP.strategy_value(strategy, k / 4) for k in range(20)] == [rate(k / 4) for k in range(20)]
    assert training.schedule_change_strategy("step", 0.1, 5, 4, step_epochs=2, gamma=0.5)["epochs"] == [2.0, 4.0]


def test_a_batch_size_strategy_recounts_the_iterations(dataset: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any settable parameter can be changed; a new batch size recounts as HALCON does: floor(36 / 4) = 9
    iterations an epoch from epoch 1 on, continuing at iteration floor(1.0 * 9) of the same stream."""
    model = _model(dataset)
    sizes: list[int] = []
    monkeypatch.setattr(training, "train_dl_model_batch",
                        lambda m, samples: sizes.append(len(samples)) or {"total_loss": 1.0})
    param = create_dl_train_param(model, 3, 0, False, 1, "change",
                                  {"model_param": "batch_size", "epochs": [1], "values": [4]})
    param["serialization_strategies"] = []
    results, _, _ = training.train_dl_model(model, dataset, param)
    assert sizes == [8] * 4 + [4] * (27 - 9) and len(results) == 22


def test_evaluate_before_train(dataset: dict, tmp_path: Path) -> None:
    """evaluate_before_train: one more evaluation, of the untrained model, recorded at iteration 0, epoch 0;
    the last after the 4 steps of the epoch, at epoch 1."""
    model = _model(dataset)
    untrained = dl.evaluation.evaluate_dl_model(model, dataset)["top1_error"]
    param = create_dl_train_param(model, 1, 1, False, 1, "serialize", {"type": "best", "basename": str(tmp_path / "b")})
    param["evaluate_before_train"], param["update_interval_seconds"] = True, 1e9  # infos: the first, evaluations, the last
    _, infos, evaluations = training.train_dl_model(model, dataset, param)
    assert [(e["iteration"], e["epoch"]) for e in evaluations] == [(0, 0.0), (3, 1.0)]
    assert evaluations[0]["result"]["top1_error"] == untrained and [i["iteration"] for i in infos] == [0, 3]
