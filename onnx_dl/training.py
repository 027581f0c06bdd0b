"""The epoch loop around ``train_dl_model_batch`` (HALCON's ``train_dl_model``): batches from the
training split, a learning-rate schedule, evaluation on the validation split, the best model on
disk, a CSV log, a progress bar and a plot.

Interrupting a run (Ctrl-C) ends it cleanly: the step that was running changes nothing (see
``train_dl_model_batch``), the best model written so far and the log stay intact, and the result
says ``interrupted``.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import dataset as ds
from . import system
from . import train_param as TP
from .errors import DLParamError
from .evaluation import evaluate_dl_model, main_measure
from .model import DLModel
from .operators import get_dl_model_param, set_dl_model_param, train_dl_model_batch
from .preprocess import sample_kind
from .serialization import write_dl_model

LOG_COLUMNS = ["epoch", "step", "learning_rate", "total_loss", "images_per_second", "validation_measure"]
# ... then one column per loss part of the model (loss_cross_entropy, loss_weight_prior, ...)


def step_schedule(base: float, epoch: float, step_epochs: float = 10.0, gamma: float = 0.1) -> float:
    """Step decay: lr = base * gamma ** floor(epoch / step_epochs) (``epoch`` counts from 0, fractional)."""
    return base * gamma ** math.floor(epoch / step_epochs)


def cosine_schedule(base: float, epoch: float, epochs: float, minimum: float = 0.0) -> float:
    """Cosine decay from ``base`` at epoch 0 to ``minimum`` at ``epochs``:
    lr = minimum + (base - minimum) * (1 + cos(pi * epoch / epochs)) / 2."""
    return minimum + (base - minimum) * 0.5 * (1.0 + math.cos(math.pi * min(epoch / epochs, 1.0)))


def schedule_function(name: str | None, base: float, epochs: int, **settings: float) -> Callable[[float], float]:
    """The learning rate as a function of the (fractional) epoch for schedule ``name``."""
    if name is None:
        return lambda epoch: base
    if name == "step":
        return lambda epoch: step_schedule(base, epoch, **settings)
    if name == "cosine":
        return lambda epoch: cosine_schedule(base, epoch, epochs, **settings)
    raise DLParamError(f"schedule: expected None, 'step' or 'cosine', got {name!r}")


def schedule_change_strategy(schedule: str, base: float, num_epochs: float, steps_per_epoch: int,
                             **settings: float) -> dict[str, Any]:
    """A HALCON change strategy of ``learning_rate`` that follows ``schedule`` ('step' or 'cosine', see
    :func:`schedule_function`) from ``base``: a value at every iteration's epoch ``k / steps_per_epoch``
    where the rate changes (for ``create_dl_train_param(..., 'change', strategy)``)."""
    rate = schedule_function(schedule, base, num_epochs, **settings)  # type: ignore[arg-type]
    epochs, values, last = [], [], base
    for k in range(1, math.ceil(num_epochs * steps_per_epoch)):
        value = rate(k / steps_per_epoch)
        if value != last:
            epochs.append(k / steps_per_epoch)
            values.append(value)
            last = value
    return {"model_param": "learning_rate", "initial_value": base, "epochs": epochs, "values": values}


def train_step(model: DLModel, runner: Any, dataset: dict[str, Any], samples: _Samples, indices: list[int],
               augmentation: dict[str, Any] | None, seed: Any) -> dict[str, float]:
    """One training step of both loops on the dataset entries ``indices``: their preprocessed samples,
    augmented with ``augmentation`` (seeded by ``seed``), trained by ``runner`` or the operator. A runner
    whose workers read ``dataset`` themselves (``DataParallel(..., dataset=dataset)``) gets the indices
    only, so the driver never loads an image; its workers do not augment, so augmentation is refused."""
    if runner is not None and getattr(runner, "dataset", None) is not None:
        if runner.dataset is not dataset:
            raise DLParamError("train_dl_model: the runner's workers read another dataset than the one given "
                               "(pass the same dataset to DataParallel(..., dataset=...) and train_dl_model)")
        if augmentation is not None:
            raise DLParamError("train_dl_model: a runner whose workers read the dataset themselves does not augment; "
                               "train without augmentation or give the runner no dataset (the driver then loads, "
                               "augments and sends the samples)")
        return runner.train_dataset_batch(indices)
    batch = samples.get(indices)
    if augmentation is not None:
        from .preprocess import augment_dl_samples

        batch = augment_dl_samples(batch, augmentation, seed)
    return runner.train_dl_model_batch(batch) if runner is not None else train_dl_model_batch(model, batch)


@dataclass
class TrainResult:
    """What a run of :func:`train_dl_model` did."""

    output_dir: Path | None
    best_measure: float | None = None  # the type's main measure of the best model (see evaluation.main_measure)
    best_epoch: int | None = None
    steps: int = 0
    interrupted: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per evaluation


class _Samples:
    """Preprocessed samples of dataset entries, read once and kept in memory: those ``preprocess_dl_dataset``
    wrote when the dataset has its ``dlsample_dir``, else the images preprocessed for the model."""

    def __init__(self, dataset: dict[str, Any], model: DLModel) -> None:
        self.dataset, self.model = dataset, model
        self.cache: dict[int, dict[str, Any]] = {}

    def get(self, indices: list[int]) -> list[dict[str, Any]]:
        missing = [i for i in indices if i not in self.cache]
        if missing:
            self.cache.update(zip(missing, prepared_samples(self.dataset, missing, self.model.params)))
        return [self.cache[i] for i in indices]


def prepared_samples(dataset: dict[str, Any], indices: list[int], params: dict[str, Any]) -> list[dict[str, Any]]:
    """The training samples of the dataset entries ``indices``: those ``preprocess_dl_dataset`` wrote when the
    dataset has its ``dlsample_dir`` (HALCON's ``read_dl_samples``), else the entries read and preprocessed for
    a model with ``params`` (the rule of both training loops and of data-parallel workers)."""
    if "dlsample_dir" in dataset:
        from .halcon_preprocess import read_dl_samples

        return read_dl_samples(dataset, indices)
    from .preprocess import preprocess_dl_samples

    return preprocess_dl_samples(ds.gen_dl_samples(dataset, indices), params)


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)


# ``train_dl_model(..., augment=True)``: HALCON ``augment_dl_samples`` keys (all methods are off by default
# there). ``crop_percentage`` is left out for models other than classification (HALCON crops
# classification samples only).
TRAINING_AUGMENTATION: dict[str, Any] = {"augmentation_percentage": 50, "mirror": "rc", "rotate": 90,
                                         "brightness_variation": 20, "contrast_variation": 0.2,
                                         "crop_percentage": 80}


WORD_AUGMENTATION = ("augmentation_percentage", "brightness_variation", "contrast_variation")
"""The methods of :data:`TRAINING_AUGMENTATION` that keep a word image readable (no mirror, turn or crop)."""


def training_augmentation(augment: bool | dict[str, Any] | None, classification: bool,
                          words: bool = False) -> dict[str, Any] | None:
    """The ``augment_dl_samples`` gen_param that ``train_dl_model(augment=...)`` uses (None: no augmentation).

    False: none; True: :data:`TRAINING_AUGMENTATION` (without the classification-only methods unless
    ``classification``: the samples carry image labels, :func:`onnx_dl.preprocess.sample_kind`; only
    :data:`WORD_AUGMENTATION` for ``words``, OCR samples); a dict: HALCON keys as given (checked here).
    """
    from .preprocess import AUGMENT_CLASSIFICATION_ONLY, check_augment_param

    if augment is None or augment is False:
        return None
    if augment is True:
        return {k: v for k, v in TRAINING_AUGMENTATION.items()
                if (k in WORD_AUGMENTATION if words else classification or k not in AUGMENT_CLASSIFICATION_ONLY)}
    if not isinstance(augment, dict):
        raise DLParamError(f"train_dl_model, augment: expected False, True or a dict of augment_dl_samples keys, "
                           f"got {augment!r} ({type(augment).__name__})")
    check_augment_param(augment)
    return dict(augment)


def train_dl_model(model: DLModel, dataset: dict[str, Any], train_param: dict[str, Any] | None = None,
                   start_epoch: float | str = 0, *, epochs: int | None = None, evaluate_every: int = 1,
                   schedule: str | None = None, schedule_settings: dict[str, float] | None = None,
                   augment: bool | dict[str, Any] = False, output_dir: str | Path | None = None, seed: int | None = None,
                   progress: bool = True, runner: Any = None) -> Any:
    """Train ``model`` on the 'train' split of ``dataset``: HALCON's form with a train param, or ours with ``epochs``.

    ``train_dl_model(model, dataset, train_param, start_epoch=0)`` (``train_param`` from
    :func:`onnx_dl.train_param.create_dl_train_param`; HALCON's argument order ``(dataset, model, ...)``
    is accepted too) runs HALCON's loop, :func:`train_with_param`, and returns HALCON's
    ``(TrainResults, TrainInfos, EvaluationInfos)``. ``start_epoch`` is 0, an epoch to start at, or
    ``'resume'``.

    ``train_dl_model(model, dataset, epochs=...)``, described below, returns a :class:`TrainResult`.

    Each epoch shuffles the training samples (seeded) and runs ``train_dl_model_batch`` on
    batches of ``batch_size * batch_size_multiplier`` (a last partial batch is left out). The
    learning rate follows ``schedule`` ('step': ``step_epochs``, ``gamma``; 'cosine':
    ``minimum``) from the model's learning rate at the start. Every ``evaluate_every`` epochs
    (and after the last) the model is evaluated on the 'validation' split (the training split
    when there is none; a detector on all detections down to
    ``evaluation.EVALUATION_MIN_CONFIDENCE``, whatever its ``min_confidence``, see
    :func:`~onnx_dl.evaluation.evaluate_dl_model`) and, if its main measure is the best so far, written to
    ``output_dir/best_model.onnx``. ``output_dir`` also gets ``log.csv`` (one row per step with the
    learning rate, the total loss and each loss part, flushed; one per evaluation) and, with matplotlib
    installed, ``training.png`` (the losses, the validation measure and the learning rate per step).

    ``augment`` augments each batch with :func:`~onnx_dl.preprocess.augment_dl_samples` (seeded from
    ``seed``): False none, True :data:`TRAINING_AUGMENTATION` (mirror 'rc', rotate 90, brightness 20,
    contrast 0.2 and, for classification models only, crop 80 %), or a dict of HALCON's
    ``augment_dl_samples`` keys (methods not named are off), see :func:`training_augmentation`.

    ``seed`` seeds the shuffling and the augmentation; None (the default) uses
    ``get_system('seed_rand')`` (42 unless set; the former default was ``seed=0``: pass it for the
    runs of earlier versions).

    ``runner``: something with ``train_dl_model_batch(samples)`` that trains this ``model`` (e.g.
    :class:`onnx_dl.distributed.DataParallel`): it runs every step instead of the operator; evaluation, the
    best model and the log stay here, on the driver.
    """
    if isinstance(model, dict) and isinstance(dataset, DLModel):  # HALCON's order: (DLDataset, DLModelHandle, ...)
        model, dataset = dataset, model
    if train_param is not None:
        if epochs is not None:
            raise DLParamError("train_dl_model: give a train param or epochs=..., not both")
        return train_with_param(model, dataset, train_param, start_epoch, runner=runner)
    if epochs is None:
        raise DLParamError("train_dl_model: expected a train param (create_dl_train_param) or epochs=...")
    seed = system.seed(seed)
    if epochs < 1 or evaluate_every < 1:
        raise DLParamError(f"epochs and evaluate_every: expected >= 1, got {epochs} and {evaluate_every}")
    train = ds.split_indices(dataset, "train")
    if not train:
        raise DLParamError("train_dl_model: the dataset has no 'train' samples; call split_dl_dataset first")
    validation = ds.split_indices(dataset, "validation") or train
    kind = sample_kind(dataset["samples"][train[0]])
    augmentation = training_augmentation(augment, kind == "classification", kind == "ocr_recognition")
    params = model.params
    batch = params["batch_size"] * params["batch_size_multiplier"]
    per_epoch = len(train) // batch
    if per_epoch == 0:
        raise DLParamError(f"train_dl_model: {len(train)} training samples make no batch of {batch}")
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    learning_rate = schedule_function(schedule, params["learning_rate"], epochs, **(schedule_settings or {}))
    name, better = main_measure(params["type"])
    samples, rng, result = _Samples(dataset, model), np.random.default_rng(seed), TrainResult(out)
    log_file = open(out / "log.csv", "w", newline="") if out is not None else None  # noqa: SIM115
    log = csv.writer(log_file) if log_file is not None else None
    parts: list[str] | None = None  # the loss parts, known from the first step's losses
    bar = _progress(epochs * per_epoch, progress)
    try:
        for epoch in range(epochs):
            order = rng.permutation(train)
            for position in range(per_epoch):
                lr = learning_rate(epoch + position / per_epoch)
                set_dl_model_param(model, "learning_rate", lr)
                chosen = [int(i) for i in order[position * batch:(position + 1) * batch]]
                start = time.perf_counter()
                losses = train_step(model, runner, dataset, samples, chosen, augmentation, rng)
                loss = losses["total_loss"]
                speed = batch / (time.perf_counter() - start)
                result.steps += 1
                if log is not None and log_file is not None:
                    if parts is None:
                        parts = [name for name in losses if name != "total_loss"]
                        log.writerow(LOG_COLUMNS + parts)
                    log.writerow([epoch + 1, result.steps, f"{lr:.6g}", f"{loss:.6f}", f"{speed:.1f}", "",
                                  *(f"{losses[name]:.6f}" for name in parts)])
                    log_file.flush()
                if bar is not None:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}", img_s=f"{speed:.0f}")
                    bar.update(1)
            if (epoch + 1) % evaluate_every == 0 or epoch + 1 == epochs:
                _evaluate(model, dataset, validation, samples, epoch + 1, name, better, result, log, log_file)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
        set_dl_model_param(model, "learning_rate", learning_rate(0.0))
    if out is not None:
        plot_training(out / "log.csv", out / "training.png", name)
    return result


def _evaluate(model: DLModel, dataset: dict[str, Any], validation: list[int], samples: _Samples, epoch: int,
              name: str, better: Callable[[float, float], bool], result: TrainResult, log: Any, log_file: Any) -> None:
    """Evaluate, log, and keep the model if it is the best so far."""
    measures = evaluate_dl_model(model, dataset, samples=samples.get(validation))
    value = float(measures[name])
    result.history.append({"epoch": epoch, "step": result.steps, name: value})
    if log is not None:
        log.writerow([epoch, result.steps, "", "", "", f"{value:.6f}"])
        log_file.flush()
    if result.best_measure is None or better(value, result.best_measure):
        result.best_measure, result.best_epoch = value, epoch
        if result.output_dir is not None:
            write_dl_model(model, result.output_dir / "best_model.onnx")


# -- HALCON's loop: train_dl_model(model, dataset, train_param, start_epoch) ---------------------------

@dataclass
class _RunState:
    """What a checkpoint of HALCON's loop holds besides the model: where the run stands (``phase`` of
    iteration ``next_iteration``: 'start', 'applied' after its change strategies, 'stepped' after its
    training step), the results and infos so far, the best comparison value, a momentum to restore and,
    when 'stepped', the step's losses and timing not yet recorded (``pending_step``: its train result,
    log row, evaluation, info and files all run after the checkpoint, again on a resume)."""

    next_iteration: int = 0
    phase: str = "start"
    train_results: list[dict[str, float]] = field(default_factory=list)
    train_infos: list[dict[str, Any]] = field(default_factory=list)
    evaluation_infos: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    momentum_to_restore: float | None = None
    log_rows: int = 0  # rows of log.csv (header aside) written so far
    pending_step: dict[str, Any] | None = None  # {'losses', 'images', 'seconds'} of the step taken, to record

    def saved(self, run: str, next_iteration: int, phase: str) -> dict[str, Any]:
        """The checkpoint's JSON state at ``next_iteration`` / ``phase``."""
        return {"run": run, "next_iteration": next_iteration, "phase": phase,
                "step_done": int(phase == "stepped"), "train_results": self.train_results,
                "train_infos": self.train_infos, "evaluation_infos": self.evaluation_infos, "best": self.best,
                "momentum_to_restore": self.momentum_to_restore, "log_rows": self.log_rows,
                "pending_step": self.pending_step if phase == "stepped" else None}

    def mark(self) -> tuple[int, int, int, float | None, int]:
        """What :meth:`roll_back` returns to: the results, the infos, the best value and the log rows now."""
        return len(self.train_results), len(self.train_infos), len(self.evaluation_infos), self.best, self.log_rows

    def roll_back(self, mark: tuple[int, int, int, float | None, int]) -> None:
        """Forget what an interrupted record / evaluation / info / serialisation step added."""
        del self.train_results[mark[0]:], self.train_infos[mark[1]:], self.evaluation_infos[mark[2]:]
        self.best, self.log_rows = mark[3], mark[4]


class _HalconRun:
    """One run of HALCON's loop: the fixed inputs, the state, and the log / progress bar."""

    def __init__(self, model: DLModel, dataset: dict[str, Any], param: dict[str, Any], runner: Any) -> None:
        TP.check_train_param(param, model)
        self.model, self.dataset, self.param, self.runner = model, dataset, param, runner
        self.train = ds.split_indices(dataset, "train")
        if not self.train:
            raise DLParamError("train_dl_model: the dataset has no 'train' samples; call split_dl_dataset first")
        self.validation = ds.split_indices(dataset, "validation") or self.train
        self.seed = system.seed(param["seed_rand"])
        self.stream, self.seeds = TP.index_stream(self.train, param["num_epochs"], self.seed)
        self.run = TP.fingerprint(self.stream, self.seeds, param)
        self.batch = 0
        self.per_epoch = self.num_iterations = 0
        self._read_batch()
        self.keys = list(param["evaluation_comparison_keys"])
        self.lower_is_better = TP.lower_is_better(self.keys, model)
        self.samples = _Samples(dataset, model)
        self.state = _RunState()
        self.start_epoch: float | str = 0
        self.started = time.perf_counter()
        self.last_update = -math.inf
        self.log: Any = None
        self.log_file: Any = None
        self.parts: list[str] | None = None
        self.mark = self.state.mark()

    def _read_batch(self) -> bool:
        """Read B = batch_size * batch_size_multiplier again [P]; True when it changed."""
        batch = self.model.params["batch_size"] * self.model.params["batch_size_multiplier"]
        if batch == self.batch:
            return False
        self.batch = batch
        self.per_epoch, self.num_iterations = TP.iterations(len(self.train), batch, self.param["num_epochs"])
        if self.per_epoch == 0:
            raise DLParamError(f"train_dl_model: {len(self.train)} training samples make no batch of {batch}")
        return True

    # -- start and resume ---------------------------------------------------------------------
    def restore(self, start_epoch: float | str) -> None:
        """Where to start: 0; an epoch (HALCON: the model is the one of that epoch; the infos come from a
        checkpoint of this run at that iteration when one exists); or 'resume' (the latest checkpoint)."""
        self.start_epoch = start_epoch
        if start_epoch == "resume":
            path = TP.latest_checkpoint(self.param, self.run)
            if path is None:
                raise DLParamError("train_dl_model(start_epoch='resume'): no checkpoint of this run among the files of "
                                   "the serialization strategies")
            self._load(TP.info_path_of(path), path)
            self.start_epoch = self.state.next_iteration / self.per_epoch  # HALCON records the epoch restored
            return
        if isinstance(start_epoch, bool) or not TP.is_number(start_epoch) or start_epoch < 0:
            raise DLParamError(f"train_dl_model: start_epoch expected 0, an epoch >= 0 or 'resume', got {start_epoch!r}")
        iteration = math.floor(start_epoch * self.per_epoch)
        self.state.next_iteration = iteration
        for info_path in TP.checkpoint_files(self.param["serialization_strategies"]) if iteration else []:
            info = TP.read_checkpoint(info_path)
            if info.get("run") == self.run and info["next_iteration"] == iteration and info["phase"] == "start":
                self._load(info_path, None)
                return

    def _load(self, info_path: Path, model_path: Path | None) -> None:
        info = TP.read_checkpoint(info_path)
        steps = self.model.solver_steps()
        if model_path is not None and steps != info["solver_steps"]:
            raise DLParamError(f"train_dl_model(start_epoch='resume'): the model has taken {steps} solver steps, the "
                               f"checkpoint {str(model_path)!r} {info['solver_steps']}; read the model from that file")
        self.state = _RunState(info["next_iteration"], info["phase"], info["train_results"], info["train_infos"],
                               info["evaluation_infos"], info["best"], info["momentum_to_restore"], info["log_rows"],
                               info["pending_step"])

    # -- the loop -----------------------------------------------------------------------------
    def run_loop(self) -> None:
        """Iterations from the state's on; a Ctrl-C writes the 'interrupted' checkpoints and is raised again.

        What an iteration recorded since its start (``self.mark``) is rolled back before the checkpoint is
        written, so that it holds the model and the state of one phase exactly: 'start' (the change
        strategies not applied), 'applied' (the step not taken) or 'stepped' (the step taken, its losses
        pending, nothing of it recorded)."""
        state = self.state
        i, phase = state.next_iteration, state.phase
        bar = _progress(self.num_iterations, bool(self.param["display_param"]["enabled"]))
        if bar is not None:
            bar.update(min(i, self.num_iterations))
        try:
            self.mark = state.mark()
            if i == 0 and phase == "start" and self.param.get("evaluate_before_train") and not state.evaluation_infos:
                self._after_step(-1, evaluate=True)
            while i < self.num_iterations:
                self.mark = state.mark()
                if phase == "start":
                    i = self._apply_change_strategies(i)
                    phase = "applied"
                    if i >= self.num_iterations:
                        break
                if phase == "applied":  # marked 'stepped' as soon as the model has stepped, before any recording
                    state.pending_step, phase = self._step(i), "stepped"
                self._record_step(i, bar)
                self._after_step(i, evaluate=TP.evaluation_due(i, self.per_epoch, self.num_iterations,
                                                               self.param["evaluation_interval_epochs"]))
                i, phase, state.pending_step = i + 1, "start", None
        except KeyboardInterrupt:
            state.roll_back(self.mark)
            for basename in TP.interrupt_basenames(self.param["serialization_strategies"]):
                TP.write_checkpoint(self.model, basename, state.saved(self.run, i, phase))
            raise
        finally:
            if bar is not None:
                bar.close()
            if state.momentum_to_restore is not None and phase == "start":  # the last iteration's scaled momentum
                set_dl_model_param(self.model, "momentum", state.momentum_to_restore)
                state.momentum_to_restore = None

    def _apply_change_strategies(self, i: int) -> int:
        """The change strategies before iteration ``i`` [P]; returns ``i``, recounted when they changed the
        batch size. On any exception (a Ctrl-C too) the model's parameters, the momentum to restore and the
        batch are left as they were, so that a 'start' checkpoint applies them again on a resume."""
        state, strategies, epoch = self.state, self.param["change_strategies"], i / self.per_epoch
        names = dict.fromkeys([*(s["model_param"] for s in strategies), "momentum"])
        before = {name: get_dl_model_param(self.model, name) for name in names}
        restore = state.momentum_to_restore
        try:
            state.momentum_to_restore = TP.apply_change_strategies(self.model, strategies, epoch, restore)
            if self._read_batch():  # a strategy changed the batch size: HALCON recounts [P]
                i = math.floor(epoch * self.per_epoch)
        except BaseException:
            for name, value in before.items():
                if not np.array_equal(np.asarray(get_dl_model_param(self.model, name)), np.asarray(value)):
                    set_dl_model_param(self.model, name, value)
            state.momentum_to_restore = restore
            self._read_batch()
            raise
        return i

    def _step(self, i: int) -> dict[str, Any]:
        """Train batch ``i`` of the stream with the augmentation seeded from the batch's last seed [P];
        returns ``{losses, images, seconds}`` of the step, for :meth:`_record_step` (after the step
        only the clock is read, so that the caller marks it taken at once)."""
        end = (i + 1) * self.batch
        chosen = [int(k) for k in self.stream[i * self.batch:end]]
        start = time.perf_counter()
        losses = train_step(self.model, self.runner, self.dataset, self.samples, chosen,
                            self.param["augmentation_param"] or None, int(self.seeds[end - 1]))
        return {"losses": losses, "images": len(chosen), "seconds": time.perf_counter() - start}

    def _record_step(self, i: int, bar: Any) -> None:
        """The pending step's train result, log row and progress."""
        pending = self.state.pending_step
        losses = {k: float(v) for k, v in pending["losses"].items()}
        self.state.train_results.append(losses)
        self._log_step(i, losses, pending["images"] / pending["seconds"])
        if bar is not None:
            bar.set_postfix(epoch=f"{(i + 1) / self.per_epoch:.2f}", loss=f"{losses['total_loss']:.4f}")
            bar.update(1)

    def _after_step(self, i: int, evaluate: bool) -> None:
        """HALCON's order after a step: the evaluation, a train info, the serialisation strategies."""
        state, improved = self.state, False
        if evaluate:
            info = self._evaluation(i)
            state.evaluation_infos.append(info)
            value = TP.comparison_value(info["result"], self.keys)
            self._log_evaluation(i, value)
            if not math.isnan(value) and (state.best is None or (value < state.best if self.lower_is_better
                                                                 else value > state.best)):
                state.best, improved = value, True
        now = time.perf_counter()
        if i >= 0 and (now - self.last_update >= self.param["update_interval_seconds"] or evaluate
                       or i == self.num_iterations - 1):
            self.last_update = now
            state.train_infos.append(self._train_info(i, now))
        names = TP.due_serializations(self.param["serialization_strategies"], i, self.num_iterations, self.per_epoch,
                                      improved)
        for basename in names:
            TP.write_checkpoint(self.model, basename, state.saved(self.run, i + 1, "start"))

    def _evaluation(self, i: int) -> dict[str, Any]:
        """HALCON's evaluation info: the validation split's measures and, with
        ``selected_percentage_train_samples``, those of a random share of the train split."""
        gen_param = self.param["evaluation_param"] or None
        result = evaluate_dl_model(self.model, self.dataset, samples=self.samples.get(self.validation),
                                   gen_param=gen_param)
        count = int(self.param["display_param"]["selected_percentage_train_samples"] / 100 * len(self.train))
        result_train: dict[str, Any] = {}
        if count > 0:
            chosen = np.random.default_rng([self.seed, i + 1]).permutation(self.train)[:count]
            result_train = evaluate_dl_model(self.model, self.dataset, samples=self.samples.get([int(k) for k in chosen]),
                                             gen_param=gen_param)
        return {"epoch": (i + 1) / self.per_epoch if i >= 0 else 0.0, "iteration": max(i, 0), "result": result,
                "result_train": result_train}

    def _train_info(self, i: int, now: float) -> dict[str, Any]:
        """HALCON's train info after iteration ``i``."""
        params = self.model.params
        return {"epoch": (i + 1) / self.per_epoch, "iteration": i, "num_iterations": self.num_iterations,
                "num_iterations_per_epoch": self.per_epoch, "num_epochs": self.param["num_epochs"],
                "mean_loss": TP.mean_loss(self.state.train_results, self.param["num_samples_mean_loss"], self.batch),
                "model_params": {name: params[name] for name in INFO_MODEL_PARAMS if name in params},
                "start_epoch": self.start_epoch, "time_elapsed": now - self.started}

    # -- log ----------------------------------------------------------------------------------
    def open_log(self) -> None:
        """``log.csv`` in ``display_param['log_dir']``: the rows up to where the run stands are kept."""
        folder = self.param["display_param"]["log_dir"]
        if folder is None:
            return
        path = Path(folder) / "log.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = self.state.log_rows
        rows = []
        if kept and path.exists():
            with open(path, newline="") as stream:
                rows = list(csv.reader(stream))[:1 + kept]
            self.parts = rows[0][len(LOG_COLUMNS):] if rows else None
        self.log_file = open(path, "w", newline="")  # noqa: SIM115
        self.log = csv.writer(self.log_file)
        self.log.writerows(rows)
        self.log_file.flush()

    def _log_step(self, i: int, losses: dict[str, float], speed: float) -> None:
        if self.log is None:
            return
        if self.parts is None:
            self.parts = [name for name in losses if name != "total_loss"]
            self.log.writerow(LOG_COLUMNS + self.parts)
        self.log.writerow([f"{(i + 1) / self.per_epoch:.6g}", len(self.state.train_results),
                           f"{self.model.params['learning_rate']:.6g}", f"{losses['total_loss']:.6f}", f"{speed:.1f}",
                           "", *(f"{losses[name]:.6f}" for name in self.parts)])
        self.log_file.flush()
        self.state.log_rows += 1

    def _log_evaluation(self, i: int, value: float) -> None:
        if self.log is not None:
            epoch = (i + 1) / self.per_epoch if i >= 0 else 0.0  # the train info's epoch of the same model
            self.log.writerow([f"{epoch:.6g}", len(self.state.train_results), "", "", "",
                               f"{value:.6f}"])
            self.log_file.flush()
            self.state.log_rows += 1

    def close_log(self) -> None:
        """Close the log and plot it."""
        if self.log_file is None:
            return
        self.log_file.close()
        folder = Path(self.param["display_param"]["log_dir"])
        if self.parts is not None:
            plot_training(folder / "log.csv", folder / "training.png", "/".join(self.keys))


INFO_MODEL_PARAMS = ("learning_rate", "momentum", "solver_type", "batch_size", "batch_size_multiplier",
                     "weight_prior")
"""The model parameters a train info records (HALCON records all of them; these are those that change in training)."""


def train_with_param(model: DLModel, dataset: dict[str, Any], train_param: dict[str, Any],
                     start_epoch: float | str = 0, runner: Any = None
                     ) -> tuple[list[dict[str, float]], list[dict[str, Any]], list[dict[str, Any]]]:
    """HALCON's ``train_dl_model(DLDataset, DLModelHandle, TrainParam, StartEpoch)``; returns
    ``(TrainResults, TrainInfos, EvaluationInfos)``.

    * Batches: B = ``batch_size * batch_size_multiplier`` (read again every iteration), ``floor(N / B)``
      iterations per epoch, ``int(that * num_epochs)`` in all; batch i is ``stream[i*B:(i+1)*B]`` of
      :func:`onnx_dl.train_param.index_stream`, augmented with ``augmentation_param`` from the seed at
      the batch's last position (so the run does not depend on the process's random state).
    * Before iteration i: the change strategies at epoch ``i / per_epoch``
      (:func:`onnx_dl.train_param.apply_change_strategies`).
    * After it: the evaluation when due (:func:`onnx_dl.train_param.evaluation_due`; an info ``{epoch,
      iteration, result, result_train}``, ``epoch`` = (i + 1) / per_epoch as in the train info of the same
      model, 0 for ``evaluate_before_train``'s, ``result`` from :func:`~onnx_dl.evaluation.evaluate_dl_model`
      with ``evaluation_param``); a train info (``epoch`` = (i + 1) / per_epoch, ``iteration``,
      ``mean_loss``, the model parameters, ``time_elapsed``, ...) at most every
      ``update_interval_seconds`` (0: every iteration), after an evaluation and after the last; then the
      serialisation strategies (:func:`onnx_dl.train_param.due_serializations`; 'best' compares the mean
      of the ``evaluation_comparison_keys``).
    * Ctrl-C: the step that was running changes nothing (a step that has returned counts as taken, its
      recording runs again on a resume), nor do change strategies half applied; the 'interrupted'
      strategies write the state and the KeyboardInterrupt is raised again. ``start_epoch='resume'`` with
      the model read from :func:`onnx_dl.train_param.latest_checkpoint` continues bit for bit: weights,
      results and infos (but times) equal the uninterrupted run's. A ``start_epoch`` above ``num_epochs``
      is refused [P].
    * ``display_param``: ``enabled`` shows a progress bar; ``log_dir`` gets ``log.csv`` (one row per step
      and per evaluation; ``epoch`` fractional) and ``training.png``.
    """
    run = _HalconRun(model, dataset, train_param, runner)  # checks train_param before anything changes
    if TP.is_number(start_epoch) and start_epoch > train_param["num_epochs"]:
        raise DLParamError(f"train_dl_model: start_epoch expected at most num_epochs {train_param['num_epochs']}, "
                           f"got {start_epoch!r}")  # [P]
    if TP.is_number(start_epoch) and start_epoch == train_param["num_epochs"]:
        return [], [], []  # nothing to do [P]
    run.restore(start_epoch)
    TP.check_momentum_scaling(model, train_param["change_strategies"],
                              [i / run.per_epoch for i in range(run.state.next_iteration, run.num_iterations)])
    run.open_log()
    try:
        run.run_loop()
    finally:
        run.close_log()
    return run.state.train_results, run.state.train_infos, run.state.evaluation_infos


def plot_training(log_path: Path, image_path: Path, measure: str) -> bool:
    """Plot the losses (the total and each part) and the validation measure per step, and under them the
    learning rate, from a training log into a PNG.

    Returns False (and plots nothing) when matplotlib is not installed (extra ``plot``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("onnx_dl: matplotlib is not installed (pip install 'onnx_dl[plot]'); no plot written")
        return False
    with open(log_path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    steps = [r for r in rows if r["total_loss"]]
    parts = [name for name in (rows[0] if rows else {}) if name.startswith("loss_")]
    measures = [(int(r["step"]), float(r["validation_measure"])) for r in rows if r["validation_measure"]]
    figure, (loss_axis, rate_axis) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    for name, style in [("total_loss", {"color": "tab:blue", "linewidth": 0.9}),
                        *((p, {"linewidth": 0.6, "alpha": 0.8}) for p in parts)]:
        values = [(int(r["step"]), float(r[name])) for r in steps if r.get(name)]
        if values:
            loss_axis.plot(*zip(*values), label=name.replace("_", " "), **style)
    loss_axis.set_ylabel("loss")
    if steps:
        loss_axis.legend(fontsize=8, loc="upper left")
    measure_axis = loss_axis.twinx()
    if measures:
        measure_axis.plot(*zip(*measures), "o-", color="tab:orange", label=f"validation {measure}")
    measure_axis.set_ylabel(f"validation {measure}", color="tab:orange")
    rates = [(int(r["step"]), float(r["learning_rate"])) for r in steps]
    if rates:
        rate_axis.plot(*zip(*rates), color="tab:green", linewidth=0.9)
    rate_axis.set_ylabel("learning rate")
    rate_axis.set_xlabel("step")
    figure.tight_layout()
    figure.savefig(image_path, dpi=100)
    plt.close(figure)
    return True
