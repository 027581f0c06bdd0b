"""The ``onnx-dl`` command: train, evaluate, apply, export and info.

``onnx-dl train`` with no arguments writes a generated dataset of coloured shapes, trains the
bundled classifier on it and writes ``runs/<timestamp>/`` (best model, log, plot). Every command
exits with 2 and a one-line reason on bad arguments or on an error the library reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import dataset as ds
from . import model_type
from .boxes import BOX_KEYS
from .errors import DLError
from .evaluation import evaluate_dl_model
from .model import DLModel
from .operators import (apply_dl_model, create_dl_model_detection, create_dl_model_multi_label_classification,
                        get_dl_model_param, set_dl_model_param)
from .serialization import read_dl_model, write_dl_model
from .solvers import SOLVERS

INFO_PARAMS = ["type", "image_dimensions", "image_range_min", "image_range_max", "num_classes", "class_ids",
               "class_names", "num_trainable_params", "solver_type", "learning_rate", "momentum", "batch_size",
               "weight_prior", "runtime"]


def _dataset(args: argparse.Namespace, run: Path) -> dict[str, Any]:
    """The dataset of ``--dataset``, or a generated one written into the run folder; split if needed."""
    if args.dataset is None:
        kind = args.type or model_type.names()[0]
        size = args.image_size or model_type.get(kind).CLI_IMAGE_SIZE
        print(f"generating {args.samples} {kind} samples of {size} px into {run / 'dataset'}", flush=True)
        source = ds.write_synthetic_dataset(kind, run / "dataset", args.samples, size, args.seed)
    else:
        source = args.dataset
    dataset = ds.read_dl_dataset(source, type=args.type)
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
            "class_names": dataset["class_names"]})
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


def train(args: argparse.Namespace) -> int:
    """Train on a dataset (default: generated shapes); keep the best model by the validation measure."""
    from .training import train_dl_model

    run = Path(args.output) / datetime.now().strftime("%Y%m%d-%H%M%S")
    run.mkdir(parents=True, exist_ok=True)
    dataset = _dataset(args, run)
    model = _model_for(dataset, args)
    print(f"training {model!r} on {len(ds.split_indices(dataset, 'train'))} samples for {args.epochs} epochs; "
          f"writing {run}", flush=True)
    result = train_dl_model(model, dataset, epochs=args.epochs, schedule=args.schedule, augment=args.augment,
                            output_dir=run, seed=args.seed, progress=not args.quiet)
    for row in result.history:
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    state = "interrupted; " if result.interrupted else ""
    print(f"{state}best validation {model.kind.MAIN_MEASURE} {result.best_measure} "
          f"(epoch {result.best_epoch}); model: {run / 'best_model.onnx'}; log: {run / 'log.csv'}")
    return 130 if result.interrupted else 0


def evaluate(args: argparse.Namespace) -> int:
    """Print the measures of a model on a dataset split as JSON."""
    model = read_dl_model(args.model, type=args.type)
    dataset = ds.read_dl_dataset(args.dataset)
    if not ds.split_indices(dataset, args.split):
        ds.split_dl_dataset(dataset, 70, 15, 42)
    print(json.dumps(ds.jsonable(evaluate_dl_model(model, dataset, args.split)), indent=1))
    return 0


def apply(args: argparse.Namespace) -> int:
    """Run a model on image files; print the results, optionally draw them into PNGs."""
    from .preprocess import preprocess_dl_samples

    model = read_dl_model(args.model, type=args.type)
    raw = [{"image": ds.read_image(path)} for path in args.images]
    samples = preprocess_dl_samples(raw, model.params)
    results = apply_dl_model(model, samples)
    for path, result in zip(args.images, results):
        print(json.dumps({"image": str(path), **_summary(result)}))
    if args.draw:
        folder = Path(args.draw)
        folder.mkdir(parents=True, exist_ok=True)
        for path, sample, result in zip(args.images, raw, results):
            draw_result(sample["image"], result, model.params, folder / f"{Path(path).stem}_result.png")
    return 0


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """A printable result: the best class, a histogram of a label image, or the boxes."""
    if "classification_all_confidences" in result:  # multi-label: every class present
        return {"class_ids": result["classification_class_ids"], "class_names": result["classification_class_names"],
                "confidences": [round(c, 4) for c in result["classification_confidences"]]}
    if "classification_class_ids" in result:
        return {"class_id": result["classification_class_ids"][0], "class_name": result["classification_class_names"][0],
                "confidence": round(result["classification_confidences"][0], 4)}
    if "segmentation_image" in result:
        ids, counts = np.unique(result["segmentation_image"], return_counts=True)
        return {"pixels_per_class": {int(i): int(c) for i, c in zip(ids, counts)}}
    keys = (*BOX_KEYS, "bbox_class_id", "bbox_confidence")
    return {"boxes": [dict(zip(keys, (round(float(v), 2) for v in values)))
                      for values in zip(*(result[k] for k in keys))]}


def draw_result(image: np.ndarray, result: dict[str, Any], params: dict[str, Any], path: Path) -> None:
    """Write ``image`` (as read) with the result drawn on it, at the model's input size."""
    from PIL import Image, ImageDraw

    height, width = params["image_height"], params["image_width"]
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8).squeeze()).convert("RGB").resize((width, height))
    colours = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    draw = ImageDraw.Draw(picture)
    if "segmentation_image" in result:
        labels = np.asarray(result["segmentation_image"])
        overlay = np.zeros((height, width, 3), np.uint8)
        for index, cid in enumerate(params["class_ids"][1:], start=1):
            overlay[labels == cid] = colours[index % len(colours)]
        picture = Image.blend(picture, Image.fromarray(overlay), 0.45)
    elif "bbox_row1" in result:
        for r1, c1, r2, c2, cid, conf in zip(*(result[k] for k in (*BOX_KEYS, "bbox_class_id", "bbox_confidence"))):
            colour = colours[params["class_ids"].index(int(cid)) % len(colours)]
            draw.rectangle([c1 + 0.5, r1 + 0.5, c2 - 0.5, r2 - 0.5], outline=colour)
            draw.text((c1 + 1.5, r1 + 0.5), f"{int(cid)} {conf:.2f}", fill=colour)
    else:  # classes best first; a multi-label result lists every class present (maybe none)
        lines = [f"{name} {confidence:.2f}" for name, confidence in
                 zip(result["classification_class_names"], result["classification_confidences"])]
        draw.text((2, 2), "\n".join(lines[:1] if "classification_all_confidences" not in result else lines) or "-",
                  fill=(255, 255, 0))
    picture.save(path)


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
    t.add_argument("--dataset", default=None, help="class-folder tree, COCO JSON or DLDataset JSON "
                                                   "(default: generated shapes)")
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
    t.set_defaults(run=train)
    e = commands.add_parser("evaluate", help="print a model's measures on a dataset split")
    e.add_argument("model")
    e.add_argument("dataset")
    e.add_argument("--split", choices=list(ds.SPLITS), default="validation")
    e.add_argument("--type", default=None, help="model type of a foreign .onnx file")
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
