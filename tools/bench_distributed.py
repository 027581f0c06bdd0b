"""Data-parallel training on Ray (onnx_dl.distributed): throughput of 1 and 2 workers, the communication
time per step, and a paper estimate of scaling to 8 and 32 machines.

    python tools/bench_distributed.py [--steps 8] [--markdown tools/distributed-results.md]

Needs the ray extra (and torch + torchvision from the test extra for the resnet18-sized network). On one
machine a local Ray cluster (3 logical CPUs: the 1- and 2-worker runners live side by side) runs the workers, one engine thread each; the driver updates with
one thread. Cases:

- throughput: the bundled classifier at 64 x 64, steps of 2 chunks of 16 images (batch_size_multiplier 2):
  the operator in one process with 1 and 2 threads, then DataParallel with 1 worker (both chunks on it) and with
  2 workers (one chunk each), interleaved in 3 blocks of ``--steps`` steps (each after a warm-up step); the
  median over the blocks of the median seconds per step.
- communication: for the classifier and for torchvision's resnet18 (11.7 M parameters, 128 x 128,
  chunks of 8), the step's parts with 2 workers (``DataParallel.timing``): the slowest worker's compute,
  the weights' broadcast, the wait beyond the compute (gradients coming back, scheduling), the gradient
  sum and the update.
- the estimate: with K machines, one chunk each, a step costs compute + update + communication, where the
  driver (a star through Ray's object store) sends the weights to and receives a gradient from every
  worker: 2 K S / B over the driver's link (S the parameter bytes, B the bandwidth) plus the measured
  per-worker overhead times K; a ring all-reduce would move 2 S (K - 1) / K per machine instead.
  Efficiency = compute / step time; speed-up = K x efficiency (images per second against one machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib.host import machine  # noqa: E402

import onnx_dl as dl  # noqa: E402
from onnx_dl.distributed import DataParallel  # noqa: E402
from onnx_dl.synthetic import classification_samples  # noqa: E402

BANDWIDTH = 10e9 / 8  # bytes per second: a 10 Gbit/s link (assumed; not measured here)


def classifier(size: int = 64, batch: int = 16) -> dl.DLModel:
    model = dl.read_dl_model("classifier_compact")
    for name, value in [("class_ids", [0, 1, 2, 3]), ("image_dimensions", [size, size, 3]), ("batch_size", batch),
                        ("batch_size_multiplier", 2), ("solver_type", "sgd"), ("learning_rate", 0.01)]:
        dl.set_dl_model_param(model, name, value)
    return model


def resnet18(folder: Path, size: int = 128, batch: int = 8) -> dl.DLModel:
    import torch
    import torchvision

    torch.manual_seed(0)
    path = dl.export_torch(torchvision.models.resnet18(num_classes=4), folder / "resnet18.onnx", size)
    model = dl.read_dl_model(path, type="classification")
    for name, value in [("class_ids", [0, 1, 2, 3]), ("batch_size", batch), ("batch_size_multiplier", 2),
                        ("solver_type", "sgd"), ("learning_rate", 0.01)]:
        dl.set_dl_model_param(model, name, value)
    return model


def batches(model: dl.DLModel, steps: int) -> list[list[dict[str, Any]]]:
    p = model.params
    step = p["batch_size"] * p["batch_size_multiplier"]
    samples = classification_samples(step * (steps + 1), size=p["image_width"], seed=1)
    return [samples[i:i + step] for i in range(0, len(samples), step)]


def timed(train: Any, data: list[list[dict[str, Any]]], runner: DataParallel | None = None) -> dict[str, Any]:
    """Median seconds per step after one warm-up step, and (with a runner) the median of each timing part."""
    train(data[0])
    seconds, parts = [], []
    for batch in data[1:]:
        start = time.perf_counter()
        train(batch)
        seconds.append(time.perf_counter() - start)
        if runner is not None:
            parts.append(runner.timing)
    found: dict[str, Any] = {"step": statistics.median(seconds)}
    for name in ("compute", "broadcast", "wait", "reduce", "update"):
        if parts:
            found[name] = statistics.median(getattr(t, name) for t in parts)
    if parts:
        found["communication"] = statistics.median(t.communication for t in parts)
    return found


def parameter_bytes(model: dl.DLModel) -> int:
    return 4 * int(dl.get_dl_model_param(model, "num_trainable_params"))


def throughput(steps: int, blocks: int = 3) -> list[str]:
    """Images per second of each configuration, interleaved in ``blocks`` blocks of ``steps`` steps (the
    machine is shared: interleaving spreads the other users' load over all configurations alike)."""
    configurations: dict[str, tuple[Any, Any]] = {}
    for threads in (1, 2):
        model = classifier()
        configurations[f"one process, {threads} thread{'s' if threads > 1 else ''} (operator)"] = (
            threads, lambda b, m=model: dl.train_dl_model_batch(m, b))
    runners = [DataParallel(classifier(), num_workers=workers) for workers in (1, 2)]
    for runner in runners:
        configurations[f"DataParallel, {runner.num_workers} worker{'s' if runner.num_workers > 1 else ''} x 1 "
                       f"thread"] = (1, runner.train_dl_model_batch)
    data = batches(runners[0].model, steps)
    seconds: dict[str, list[float]] = {name: [] for name in configurations}
    for _ in range(blocks):
        for name, (threads, train) in configurations.items():
            dl.set_system("thread_num", threads)
            seconds[name].append(timed(train, data)["step"])
    dl.set_system("thread_num", 1)
    for runner in runners:
        runner.shutdown()
    images = len(data[0])
    rows = ["| configuration | s / step (median of blocks) | images / s |", "|---|---|---|"]
    for name, values in seconds.items():
        step = statistics.median(values)
        rows.append(f"| {name} | {step:.3f} | {images / step:.0f} |")
    return rows


def communication(steps: int, folder: Path) -> tuple[list[str], list[tuple[str, int, dict[str, Any]]]]:
    rows = ["| network | parameters | chunk | s / step | compute | broadcast | wait - compute | reduce | update | "
            "communication |", "|---|---|---|---|---|---|---|---|---|---|"]
    measured = []
    for name, build, count in [("classifier_compact", classifier, steps), ("resnet18", lambda: resnet18(folder),
                                                                            max(steps // 2, 3))]:
        model = build()
        data = batches(model, count)
        with DataParallel(model, num_workers=2) as runner:
            r = timed(runner.train_dl_model_batch, data, runner)
        size = parameter_bytes(model)
        p = model.params
        rows.append(f"| {name} | {size // 4:,} | {p['batch_size']} x {p['image_width']}^2 | {r['step']:.3f} | "
                    f"{r['compute']:.3f} | {r['broadcast'] * 1e3:.1f} ms | {(r['wait'] - r['compute']) * 1e3:.1f} ms | "
                    f"{r['reduce'] * 1e3:.1f} ms | {r['update'] * 1e3:.1f} ms | {r['communication'] * 1e3:.1f} ms |")
        measured.append((name, size, r))
    return rows, measured


def estimate(measured: list[tuple[str, int, dict[str, Any]]]) -> list[str]:
    """Efficiency and speed-up at K machines from the measured parts of a 2-worker step."""
    rows = ["| network | K | star: comm. per step | star: efficiency / speed-up | ring all-reduce: comm. | "
            "ring: efficiency / speed-up |", "|---|---|---|---|---|---|"]
    for name, size, r in measured:
        overhead = r["communication"] / 2  # per worker, measured through shared memory (no network)
        for k in (2, 8, 32):
            star = 2 * k * size / BANDWIDTH + overhead * k
            ring = 2 * size * (k - 1) / k / BANDWIDTH + overhead * 2
            cells = []
            for comm in (star, ring):
                efficiency = r["compute"] / (r["compute"] + r["update"] + comm)
                cells += [f"{comm * 1e3:.0f} ms", f"{efficiency:.2f} / {k * efficiency:.1f}x"]
            rows.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = parser.parse_args()
    import ray

    dl.set_system("thread_num", 1)  # the single-process baseline and the driver's update
    root = str(Path(dl.__file__).resolve().parent.parent)
    ray.init(num_cpus=3, include_dashboard=False, logging_level="warning",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}})
    lines = [f"Machine: {machine()}; load average before: {os.getloadavg()[0]:.1f}", "",
             "Throughput, bundled classifier, 64 x 64, steps of 2 chunks x 16 images:", ""]
    lines += throughput(args.steps)
    with tempfile.TemporaryDirectory() as folder:
        rows, measured = communication(args.steps, Path(folder))
    lines += ["", "Parts of a step with 2 workers (medians):", ""] + rows
    lines += ["", f"Estimate at K machines (one chunk each, {BANDWIDTH * 8 / 1e9:.0f} Gbit/s links):", ""]
    lines += estimate(measured)
    lines += ["", f"load average after: {os.getloadavg()[0]:.1f}"]
    ray.shutdown()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
