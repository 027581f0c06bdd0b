"""A HALCON training script (HDevelop), ported line by line to onnx_dl.

It reads the bundled classifier, creates the train param with a learning-rate change strategy and
'best' / 'final' / 'interrupted' serialisation, trains, is interrupted (a Ctrl-C, simulated after
``--interrupt-after`` steps), resumes from the written files and evaluates the best model on the test
split. The resumed run ends with the weights the uninterrupted run ends with, byte for byte
(``--interrupt-after 0`` runs it uninterrupted; ``tests/test_train_param.py`` compares the two).

    python tools/halcon_script.py --folder runs/halcon

Each block starts with the HDevelop line it ports (``*`` comments as in HDevelop).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx_dl as dl
from onnx_dl import training
from onnx_dl.dataset import read_dl_dataset, split_dl_dataset, write_synthetic_dataset
from onnx_dl.train_param import latest_checkpoint


@contextlib.contextmanager
def ctrl_c_after(steps: int) -> Iterator[None]:
    """A Ctrl-C (KeyboardInterrupt) in training step ``steps + 1`` (0: none)."""
    real, calls = training.train_dl_model_batch, [0]

    def step(model: dl.DLModel, samples: list[dict[str, Any]]) -> dict[str, float]:
        calls[0] += 1
        if calls[0] == steps + 1:
            raise KeyboardInterrupt
        return real(model, samples)

    if steps > 0:
        training.train_dl_model_batch = step  # type: ignore[assignment]
    try:
        yield
    finally:
        training.train_dl_model_batch = real  # type: ignore[assignment]


def run(folder: Path, interrupt_after: int = 25, images: int = 240, size: int = 32, num_epochs: float = 8,
        display: bool = True) -> dict[str, Any]:
    """The script; returns its outputs (the train results and infos, the test measures, the file names)."""
    folder.mkdir(parents=True, exist_ok=True)
    # * set_system ('seed_rand', 42)
    dl.set_system("seed_rand", 42)
    # * read_dl_dataset_classification (ImageDir, 'last_folder', DLDataset)
    # * split_dl_dataset (DLDataset, 70, 15, [])
    dataset = read_dl_dataset(write_synthetic_dataset("classification", folder / "data", images, size, seed=2))
    split_dl_dataset(dataset, 70, 15)
    # * read_dl_model ('pretrained_dl_classifier_compact.hdl', DLModelHandle)
    model = dl.read_dl_model("classifier_compact")
    # * set_dl_model_param (DLModelHandle, 'class_ids', ClassIDs) ... 'image_dimensions', 'batch_size', 'learning_rate'
    dl.set_dl_model_param(model, "class_ids", dataset["class_ids"])
    dl.set_dl_model_param(model, "image_dimensions", [size, size, 3])
    dl.set_dl_model_param(model, "batch_size", 8)
    dl.set_dl_model_param(model, "learning_rate", 0.05)
    # * ChangeStrategy := dict{model_param: 'learning_rate', initial_value: 0.05, epochs: [6], values: [0.005]}
    change = {"model_param": "learning_rate", "initial_value": 0.05, "epochs": [num_epochs * 0.75], "values": [0.005],
              "scale_momentum_threshold": 2.0}
    # * SerializationStrategy := dict{type: 'best', basename: ...}  (and 'final'; 'interrupted' is onnx_dl's)
    strategies = [{"type": kind, "basename": str(folder / f"model_{kind}")} for kind in ("best", "final", "interrupted")]
    # * create_dl_train_param (DLModelHandle, NumEpochs, EvaluationIntervalEpochs, EnableDisplay, SeedRand,
    # *                        GenParamName, GenParamValue, TrainParam)
    train_param = dl.create_dl_train_param(model, num_epochs, 1, display, 42,
                                           ["change", "serialize", "serialize", "serialize", "display"],
                                           [change, *strategies, {"log_dir": str(folder)}])
    # * train_dl_model (DLDataset, DLModelHandle, TrainParam, 0, TrainResults, TrainInfos, EvaluationInfos)
    try:
        with ctrl_c_after(interrupt_after):
            train_results, train_infos, evaluation_infos = dl.train_dl_model(dataset, model, train_param, 0)
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
        # * read_dl_model (the latest serialised model, DLModelHandle)
        # * train_dl_model (DLDataset, DLModelHandle, TrainParam, 'resume', TrainResults, TrainInfos, EvaluationInfos)
        print(f"interrupted; resuming from {latest_checkpoint(train_param)}", flush=True)
        model = dl.read_dl_model(latest_checkpoint(train_param))
        train_results, train_infos, evaluation_infos = dl.train_dl_model(dataset, model, train_param, "resume")
    # * read_dl_model (BestModelFile, DLModelHandle)
    # * evaluate_dl_model (DLDataset, DLModelHandle, 'split', 'test', GenParamEval, EvaluationResult, EvalParams)
    best = dl.read_dl_model(folder / "model_best.onnx")
    evaluation = dl.evaluate_dl_model(best, dataset, "test")
    print(f"{'resumed' if interrupted else 'uninterrupted'} run: {len(train_results)} iterations, final mean_loss "
          f"{train_infos[-1]['mean_loss']:.4f}, validation top1_error per evaluation "
          f"{[round(e['result']['top1_error'], 4) for e in evaluation_infos]}, best model's test top1_error "
          f"{evaluation['top1_error']:.4f}")
    return {"interrupted": interrupted, "train_results": train_results, "train_infos": train_infos,
            "evaluation_infos": evaluation_infos, "test": evaluation, "model": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("runs/halcon"))
    parser.add_argument("--interrupt-after", type=int, default=25, help="steps before the simulated Ctrl-C (0: none)")
    args = parser.parse_args()
    run(args.folder, args.interrupt_after)


if __name__ == "__main__":
    main()
