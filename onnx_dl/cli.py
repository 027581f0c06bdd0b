"""The ``onnx-dl`` command: train, evaluate, apply, export and info.

``onnx-dl train`` with no arguments writes a generated dataset of coloured shapes, trains the
bundled classifier on it and writes ``runs/<timestamp>/`` (best model, log, plot). Every command
exits with 2 and a one-line reason on bad arguments or on an error the library reports.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import box_types, model_type
from . import dataset as ds
from .errors import DLError
from .evaluation import evaluate_with_results
from .model import DLModel
from .operators import (apply_dl_model, create_dl_model_detection, create_dl_model_multi_label_classification,
                        get_dl_model_param, set_dl_model_param)
from .reports import format_report, write_report
from .serialization import read_dl_model, write_dl_model
from .solvers import SOLVERS

INFO_PARAMS = ["type", "image_dimensions", "image_range_min", "image_range_max", "num_classes", "class_ids",
               "class_names", "num_trainable_params", "solver_type", "learning_rate", "momentum", "batch_size",
               "weight_prior", "runtime"]


def _dataset(args: argparse.Namespace, run: Path) -> dict[str, Any]:
    """The dataset of ``--dataset`` (images in ``--image-dir``, or found), or a generated one written into the
    run folder; every file checked; split if needed."""
    if args.dataset is None:
        if args.image_dir is not None:
            raise ds.DLDatasetError("--image-dir needs --dataset: the generated dataset writes its own images")
        kind = args.type or model_type.names()[0]
        size = args.image_size or model_type.get(kind).CLI_IMAGE_SIZE
        print(f"generating {args.samples} {kind} samples of {size} px into {run / 'dataset'}", flush=True)
        source = ds.write_synthetic_dataset(kind, run / "dataset", args.samples, size, args.seed)
    else:
        source = args.dataset
    dataset = ds.read_dl_dataset(source, type=args.type, image_dir=args.image_dir)
    if not ds.split_indices(dataset, "train"):
        ds.split_dl_dataset(dataset, args.train_percent, args.validation_percent, args.seed)
    return dataset


def _model_for(dataset: dict[str, Any], args: argparse.Namespace) -> DLModel:
    """The model to train: read (or, for detection and multi-label classification, built on a classifier
    backbone) and fitted to the dataset."""
    kind = ds.dataset_type(dataset)
    bundled = [t.CLI_NETWORK for t in model_type.registered()]
    source = args.model or model_type.get(kind).CLI_NETWORK
    size = args.image_size or model_type.get(kind).CLI_IMAGE_SIZE
    if kind == "detection":  # a detector is built on a classifier backbone
        model = create_dl_model_detection(source, len(dataset["class_ids"]), {
            "image_width": size, "image_height": size, "class_ids": dataset["class_ids"],
            "class_names": dataset["class_names"], **_oriented_settings(dataset)})
    elif kind == "ocr_recognition":  # the dataset's alphabet; word images size x size // 4
        model = read_dl_model(source, type=None if source in bundled else kind)
        set_dl_model_param(model, "alphabet", dataset["alphabet"])
        if args.image_size or source in bundled:
            channels = get_dl_model_param(model, "image_num_channels")
            set_dl_model_param(model, "image_dimensions", [size, size // 4, channels])
    elif kind == "multi_label_classification":
        model = create_dl_model_multi_label_classification(source, dataset["class_ids"], {
            "class_names": dataset["class_names"], "image_dimensions": [size, size, 3]})
    else:
        model = read_dl_model(source, type=None if source in bundled else kind)
        set_dl_model_param(model, "class_ids", dataset["class_ids"])
        set_dl_model_param(model, "class_names", dataset["class_names"])
        if args.image_size or source in bundled:
            channels = get_dl_model_param(model, "image_num_channels")
            set_dl_model_param(model, "image_dimensions", [size, size, channels])
    for name, value in [("batch_size", args.batch_size), ("solver_type", args.solver),
                        ("learning_rate", args.learning_rate), ("runtime", args.runtime)]:
        set_dl_model_param(model, name, value)
    return model


def _oriented_settings(dataset: dict[str, Any]) -> dict[str, Any]:
    """Detector parameters for a dataset of oriented boxes (``instance_type`` 'rectangle2', e.g. DOTA):
    anchors every 30 degrees over half a turn with ``ignore_direction``, else every 45 degrees over a whole
    turn, aspect ratios (length1 / length2) 1 and 2; nothing for axis-parallel boxes."""
    first = dataset["samples"][0] if dataset.get("samples") else {}
    if dataset.get("instance_type") != "rectangle2" and "bbox_phi" not in first:
        return {}
    ignore = bool(dataset.get("ignore_direction", False))
    angles = [k * math.pi / 6 for k in range(-2, 4)] if ignore else [k * math.pi / 4 for k in range(-3, 5)]
    return {"instance_type": "rectangle2", "ignore_direction": ignore, "anchor_angles": angles,
            "anchor_aspect_ratios": [1.0, 2.0]}


def _runner(model: DLModel, args: argparse.Namespace) -> Any:
    """With ``--workers K``: a data-parallel runner over K Ray workers, each step K chunks of
    ``--batch-size`` (``batch_size_multiplier`` K), one per worker."""
    if args.workers is None:
        return None
    from .distributed import DataParallel

    set_dl_model_param(model, "batch_size_multiplier", args.workers)
    return DataParallel(model, args.workers, args.ray_address)


def train(args: argparse.Namespace) -> int:
    """Train on a dataset (default: generated shapes); keep the best model by the validation measure."""
    from .training import train_dl_model

    run = Path(args.output) / datetime.now().strftime("%Y%m%d-%H%M%S")
    dataset = _dataset(args, run)  # a bad dataset stops here, before the run folder exists
    model = _model_for(dataset, args)
    run.mkdir(parents=True, exist_ok=True)
    print(f"training {model!r} on {len(ds.split_indices(dataset, 'train'))} samples for {args.epochs} epochs; "
          f"writing {run}", flush=True)
    runner = _runner(model, args)  # None: this process trains alone
    try:
        result = train_dl_model(model, dataset, epochs=args.epochs, schedule=args.schedule, augment=args.augment,
                                output_dir=run, seed=args.seed, progress=not args.quiet, runner=runner)
    finally:
        if runner is not None:
            runner.shutdown()
    for row in result.history:
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    state = "interrupted; " if result.interrupted else ""
    print(f"{state}best validation {model.kind.MAIN_MEASURE} {result.best_measure} "
          f"(epoch {result.best_epoch}); model: {run / 'best_model.onnx'}; log: {run / 'log.csv'}")
    if (run / "best_model.onnx").exists():  # the best model's report beside training.png
        best = read_dl_model(run / "best_model.onnx")
        split = "validation" if ds.split_indices(dataset, "validation") else "train"
        written = write_report(run, *_evaluation(best, dataset, split))
        print(f"report of the best model on the {split} split: {', '.join(p.name for p in written)}")
    return 130 if result.interrupted else 0


def _evaluation(model: DLModel, dataset: dict[str, Any], split: str) -> tuple[Any, ...]:
    """(measures, params, results, samples) of ``model`` on the ``split`` of ``dataset``."""
    measures, results, samples = evaluate_with_results(model, dataset, split)
    return measures, model.params, results, samples


def evaluate(args: argparse.Namespace) -> int:
    """Print a model's report on a dataset split (``--json``: the measures as JSON); ``--output``: write
    the report's files (evaluation.json, report.txt, pictures)."""
    model = read_dl_model(args.model, type=args.type)
    dataset = ds.read_dl_dataset(args.dataset, image_dir=args.image_dir)
    if not ds.split_indices(dataset, args.split):
        ds.split_dl_dataset(dataset, 70, 15, 42)
    measures, params, results, samples = _evaluation(model, dataset, args.split)
    print(json.dumps(ds.jsonable(measures), indent=1) if args.json else format_report(measures, params))
    if args.output:
        written = write_report(args.output, measures, params, results, samples)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def apply(args: argparse.Namespace) -> int:
    """Run a model on image files; print the results, optionally draw them into PNGs."""
    from .preprocess import preprocess_dl_samples

    model = read_dl_model(args.model, type=args.type)
    raw = [{"image": ds.read_image(path)} for path in args.images]
    samples = preprocess_dl_samples(raw, model.params)
    results = apply_dl_model(model, samples)
    for path, result in zip(args.images, results):
        print(json.dumps({"image": str(path), **_summary(result, model.params)}))
    if args.draw:
        folder = Path(args.draw)
        folder.mkdir(parents=True, exist_ok=True)
        for path, sample, result in zip(args.images, raw, results):
            draw_result(sample["image"], result, model.params, folder / f"{Path(path).stem}_result.png")
    return 0


def _summary(result: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A printable result with class ids (ints) and names: the best class (classification), the classes
    present (multi-label), the pixels per class (segmentation, keys ``"<id> <name>"``), the boxes
    (detection, in the result's order; coordinates to 2 decimals, confidences to 4) or the word and its
    confidence (word recognition)."""
    from . import drawing

    kind, _ = drawing.annotation_kind(result, params)
    if kind == "ocr_recognition":
        return {"word": result["word"], "word_confidence": round(float(result["word_confidence"]), 4)}
    if kind == "multi_label_classification":  # every class at or above min_confidence, best first
        return {"classes": [{"id": int(i), "name": str(n), "confidence": round(float(c), 4)} for i, n, c in
                            zip(result["classification_class_ids"], result["classification_class_names"],
                                result["classification_confidences"])]}
    if kind == "classification":
        return {"class_id": int(result["classification_class_ids"][0]),
                "class_name": str(result["classification_class_names"][0]),
                "confidence": round(float(result["classification_confidences"][0]), 4)}
    if kind == "segmentation":
        ids, counts = np.unique(np.asarray(result["segmentation_image"]), return_counts=True)
        return {"pixels_per_class": {f"{int(i)} {drawing.class_name(int(i), params)}": int(c)
                                     for i, c in zip(ids, counts)}}
    names = result.get("bbox_class_name")
    boxes = []
    for k, (cid, confidence) in enumerate(zip(result["bbox_class_id"], result["bbox_confidence"])):
        box = {"class_id": int(cid),
               "class_name": str(names[k]) if names is not None else drawing.class_name(int(cid), params),
               "confidence": round(float(confidence), 4)}
        keys = box_types.of_params(params).keys
        boxes.append({**box, **{key.removeprefix("bbox_"): round(float(result[key][k]), 4 if key == "bbox_phi" else 2)
                                for key in keys}})
    return {"boxes": boxes}


def draw_result(image: np.ndarray, result: dict[str, Any], params: dict[str, Any], path: Path) -> None:
    """Write ``image`` (as read) with the result drawn on it (:func:`onnx_dl.drawing.draw`)."""
    from . import drawing

    drawing.draw(image, result, params).save(path)


def export(args: argparse.Namespace) -> int:
    """Write the deployable ONNX (a detector: ending in NMS-filtered boxes), without solver state."""
    model = read_dl_model(args.model, type=args.type)
    detection = model.params["type"] == "detection"
    write_dl_model(model, args.out, include_solver_state=False, **({"postprocess": True} if detection else {}))
    print(f"wrote {args.out}")
    return 0


def info(args: argparse.Namespace) -> int:
    """Print the model's parameters."""
    model = read_dl_model(args.model, type=args.type)
    for name in INFO_PARAMS:
        print(f"{name:22} {get_dl_model_param(model, name)}")
    return 0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (with a pointer to ``--help``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``onnx-dl``."""
    main = _Parser(prog="onnx-dl", description="HALCON-style deep-learning training of ONNX models")
    commands = main.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train a model (default: the bundled classifier on generated shapes)")
    t.add_argument("--model", default=None, help="bundled model name or .onnx path (detection: the backbone)")
    t.add_argument("--dataset", default=None, help="class-folder tree, COCO JSON, multi-label CSV or DLDataset "
                                                   "JSON (default: generated shapes)")
    t.add_argument("--image-dir", default=None, metavar="DIR",
                   help="folder the dataset's image file names are relative to (COCO JSON, CSV, DLDataset JSON; "
                        "default: a DLDataset's own, else the file's folder; for COCO's "
                        "annotations/instances_X.json the first of ../X/, "
                        "../images/, ../train2017/, ../val2017/ holding the first image)")
    t.add_argument("--type", choices=model_type.names(), default=None,
                   help="model type (default: what the dataset annotates; classification for generated data)")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--solver", choices=list(SOLVERS), default="adam")
    t.add_argument("--learning-rate", type=float, default=0.003)
    t.add_argument("--schedule", choices=["step", "cosine"], default=None)
    t.add_argument("--augment", action="store_true", help="mirror, rotate and vary brightness/contrast")
    t.add_argument("--runtime", choices=["cpu", "gpu"], default="cpu")
    t.add_argument("--image-size", type=int, default=None, help="square input size (default 32 / 64 / 128 by type)")
    t.add_argument("--samples", type=int, default=3200, help="size of the generated dataset")
    t.add_argument("--train-percent", type=float, default=80.0)
    t.add_argument("--validation-percent", type=float, default=20.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--output", default="runs", help="folder for runs/<timestamp>/")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--workers", type=int, default=None, metavar="K",
                   help="data-parallel on K Ray workers: each step K chunks of --batch-size (needs onnx_dl[ray])")
    t.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join (default: the running one, else a local one)")
    t.set_defaults(run=train)
    e = commands.add_parser("evaluate", help="report a model's measures on a dataset split")
    e.add_argument("model")
    e.add_argument("dataset", help="class-folder tree, COCO JSON, multi-label CSV or DLDataset JSON")
    e.add_argument("--image-dir", default=None, metavar="DIR",
                   help="folder the dataset's image file names are relative to (as for train)")
    e.add_argument("--split", choices=list(ds.SPLITS), default="validation")
    e.add_argument("--type", default=None, help="model type of a foreign .onnx file")
    e.add_argument("--output", default=None, metavar="DIR", help="write evaluation.json, report.txt and pictures")
    e.add_argument("--json", action="store_true", help="print the measures as JSON instead of the report")
    e.set_defaults(run=evaluate)
    a = commands.add_parser("apply", help="run a model on image files")
    a.add_argument("model")
    a.add_argument("images", nargs="+")
    a.add_argument("--draw", default=None, metavar="OUTDIR", help="write the images with results drawn")
    a.add_argument("--type", default=None, help="model type of a foreign .onnx file")
    a.set_defaults(run=apply)
    x = commands.add_parser("export", help="write the deployable ONNX file")
    x.add_argument("model")
    x.add_argument("out")
    x.add_argument("--type", default=None, help="model type of a foreign .onnx file")
    x.set_defaults(run=export)
    i = commands.add_parser("info", help="print a model's parameters")
    i.add_argument("model", help="bundled model name or .onnx path")
    i.add_argument("--type", default=None)
    i.set_defaults(run=info)
    return main


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``onnx-dl`` console script."""
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except DLError as exc:
        print(f"onnx-dl {args.command}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
