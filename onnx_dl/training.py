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
from .errors import DLParamError
from .evaluation import evaluate_dl_model, main_measure
from .model import DLModel
from .operators import set_dl_model_param, train_dl_model_batch
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
    """Preprocessed samples of dataset entries, read once and kept in memory."""

    def __init__(self, dataset: dict[str, Any], model: DLModel) -> None:
        self.dataset, self.model = dataset, model
        self.cache: dict[int, dict[str, Any]] = {}

    def get(self, indices: list[int]) -> list[dict[str, Any]]:
        from .preprocess import preprocess_dl_samples

        missing = [i for i in indices if i not in self.cache]
        if missing:
            for index, sample in zip(missing, preprocess_dl_samples(ds.gen_dl_samples(self.dataset, missing),
                                                                    self.model.params)):
                self.cache[index] = sample
        return [self.cache[i] for i in indices]


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


def training_augmentation(augment: bool | dict[str, Any] | None, classification: bool) -> dict[str, Any] | None:
    """The ``augment_dl_samples`` gen_param that ``train_dl_model(augment=...)`` uses (None: no augmentation).

    False: none; True: :data:`TRAINING_AUGMENTATION` (without the classification-only methods unless
    ``classification``: the samples carry image labels, :func:`onnx_dl.preprocess.sample_kind`); a dict:
    HALCON keys as given (checked here).
    """
    from .preprocess import AUGMENT_CLASSIFICATION_ONLY, check_augment_param

    if augment is None or augment is False:
        return None
    if augment is True:
        return {k: v for k, v in TRAINING_AUGMENTATION.items()
                if classification or k not in AUGMENT_CLASSIFICATION_ONLY}
    if not isinstance(augment, dict):
        raise DLParamError(f"train_dl_model, augment: expected False, True or a dict of augment_dl_samples keys, "
                           f"got {augment!r} ({type(augment).__name__})")
    check_augment_param(augment)
    return dict(augment)


def train_dl_model(model: DLModel, dataset: dict[str, Any], *, epochs: int, evaluate_every: int = 1,
                   schedule: str | None = None, schedule_settings: dict[str, float] | None = None,
                   augment: bool | dict[str, Any] = False, output_dir: str | Path | None = None, seed: int | None = None,
                   progress: bool = True) -> TrainResult:
    """Train ``model`` for ``epochs`` epochs on the 'train' split of ``dataset``.

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
    """
    seed = system.seed(seed)
    if epochs < 1 or evaluate_every < 1:
        raise DLParamError(f"epochs and evaluate_every: expected >= 1, got {epochs} and {evaluate_every}")
    train = ds.split_indices(dataset, "train")
    if not train:
        raise DLParamError("train_dl_model: the dataset has no 'train' samples; call split_dl_dataset first")
    validation = ds.split_indices(dataset, "validation") or train
    augmentation = training_augmentation(augment, sample_kind(dataset["samples"][train[0]]) == "classification")
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
                batch_samples = samples.get(chosen)
                if augmentation is not None:
                    from .preprocess import augment_dl_samples

                    batch_samples = augment_dl_samples(batch_samples, augmentation, rng)
                start = time.perf_counter()
                losses = train_dl_model_batch(model, batch_samples)
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
