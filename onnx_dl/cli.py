"""The ``onnx-dl`` command: ``train`` (bundled classifier on generated shapes by default) and ``info``."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from . import apply_dl_model, get_dl_model_param, read_dl_model, set_dl_model_param, train_dl_model_batch, write_dl_model
from .errors import DLError
from .synthetic import classification_samples


def _accuracy(model, samples) -> float:
    predictions = apply_dl_model(model, samples, outputs=["classification_class_ids"])
    return float(np.mean([p["classification_class_ids"][0] == s["image_label_id"] for p, s in zip(predictions, samples)]))


def train(args: argparse.Namespace) -> int:
    """Train on generated shapes, keep the best model by validation accuracy, log every step."""
    model = read_dl_model(args.model, type=args.type)
    size = args.image_size
    for name, value in [("class_ids", [0, 1, 2, 3]), ("image_dimensions", [size, size, 3]),
                        ("batch_size", args.batch_size), ("solver_type", args.solver),
                        ("learning_rate", args.learning_rate), ("runtime", args.runtime)]:
        set_dl_model_param(model, name, value)
    train_set = classification_samples(args.train_samples, size, seed=args.seed)
    validation = classification_samples(max(args.train_samples // 8, 32), size, seed=args.seed + 1)
    out = Path(args.output) / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    best, step, start = -1.0, 0, time.perf_counter()
    print(f"training {args.model} on {len(train_set)} generated {size}x{size} shapes, writing {out}")
    with open(out / "log.csv", "w", newline="") as log_file:
        log = csv.writer(log_file)
        log.writerow(["epoch", "step", "total_loss", "validation_accuracy", "seconds"])
        try:
            for epoch in range(1, args.epochs + 1):
                order = rng.permutation(len(train_set))
                for first in range(0, len(order) - args.batch_size + 1, args.batch_size):
                    batch = [train_set[i] for i in order[first:first + args.batch_size]]
                    loss = train_dl_model_batch(model, batch)["total_loss"]
                    step += 1
                    log.writerow([epoch, step, f"{loss:.6f}", "", f"{time.perf_counter() - start:.2f}"])
                accuracy = _accuracy(model, validation)
                log.writerow([epoch, step, f"{loss:.6f}", f"{accuracy:.4f}", f"{time.perf_counter() - start:.2f}"])
                log_file.flush()
                print(f"epoch {epoch}/{args.epochs}  step {step}  loss {loss:.4f}  validation accuracy {accuracy:.3f}  "
                      f"{time.perf_counter() - start:.1f} s", flush=True)
                if accuracy > best:
                    best = accuracy
                    write_dl_model(model, out / "best_model.onnx")
        except KeyboardInterrupt:
            print(f"interrupted; the best model so far is in {out / 'best_model.onnx'}")
            return 130
    print(f"best validation accuracy {best:.3f}; model: {out / 'best_model.onnx'}; log: {out / 'log.csv'}")
    return 0


def info(args: argparse.Namespace) -> int:
    """Print the model's parameters."""
    model = read_dl_model(args.model, type=args.type)
    for name in ["type", "image_dimensions", "image_range_min", "image_range_max", "num_classes", "class_ids",
                 "class_names", "num_trainable_params", "solver_type", "learning_rate", "momentum", "batch_size",
                 "weight_prior", "runtime"]:
        print(f"{name:22} {get_dl_model_param(model, name)}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``onnx-dl``."""
    main = argparse.ArgumentParser(prog="onnx-dl", description="HALCON-style deep-learning training of ONNX models")
    commands = main.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train a classifier (default: the bundled one on generated shapes)")
    t.add_argument("--model", default="classifier_compact", help="bundled model name or .onnx path")
    t.add_argument("--type", default=None, help="model type of a foreign .onnx file")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--solver", choices=["sgd", "adam"], default="adam")
    t.add_argument("--learning-rate", type=float, default=0.003)
    t.add_argument("--runtime", choices=["cpu", "gpu"], default="cpu")
    t.add_argument("--image-size", type=int, default=32)
    t.add_argument("--train-samples", type=int, default=3200)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--output", default="runs", help="folder for runs/<timestamp>/")
    t.set_defaults(run=train)
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
        print(f"onnx-dl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
