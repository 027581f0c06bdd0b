"""Training-step time on the networks users bring: torchvision models through onnx_dl against the same
module in PyTorch eager, same weights, same batch, same thread count.

    python tools/bench_zoo.py [--networks resnet18,mobilenet_v2] [--threads 1,2] [--blocks 6] [--steps 3]
                              [--markdown results.md]

Needs the test extra (torch, torchvision). Per network the parent exports the module with
``onnx_dl.export_torch`` (batch norm kept), then two worker processes, one per engine, train on the
same fixed batch (SGD, momentum 0.9, no weight decay; classification cross-entropy, segmentation
per-pixel cross-entropy on the ``out`` head). The parent alternates blocks of ``--steps`` steps between
them, flipping the order every block, with a pause between blocks so one engine's spinning threads do
not slow the other. Reported: median ms per step of each side and the ratio onnx_dl / PyTorch (median
over paired blocks), for each thread count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BLOCK_GAP_S = 0.25
# network: (task, image size, batch)
NETWORKS: dict[str, tuple[str, int, int]] = {
    "resnet18": ("classification", 128, 8),
    "mobilenet_v2": ("classification", 128, 8),
    "efficientnet_b0": ("classification", 128, 8),
    "shufflenet_v2_x0_5": ("classification", 128, 8),
    "regnet_x_400mf": ("classification", 128, 8),
    "lraspp_mobilenet_v3_large": ("segmentation", 128, 4),
}
CLASSES = 4


def build(name: str) -> Any:
    """The torchvision module with fixed random weights (the same in every process)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    task = NETWORKS[name][0]
    if task == "segmentation":
        return getattr(torchvision.models.segmentation, name)(num_classes=CLASSES, weights=None,
                                                             weights_backbone=None)
    return getattr(torchvision.models, name)(num_classes=CLASSES)


def batch(name: str) -> tuple[Any, Any]:
    """The fixed training batch: NHWC float32 images and labels (class ids or label images)."""
    import numpy as np

    task, size, count = NETWORKS[name]
    rng = np.random.default_rng(7)
    images = rng.normal(0.0, 1.0, (count, size, size, 3)).astype(np.float32)
    labels = (rng.integers(0, CLASSES, (count, size, size)) if task == "segmentation"
              else np.arange(count) % CLASSES)
    return images, labels


class OnnxDlSide:
    """onnx_dl training the exported file."""

    def __init__(self, name: str, path: str, threads: int) -> None:
        import onnx_dl as dl

        self.dl = dl
        dl.set_system("thread_num", threads)
        task, _, count = NETWORKS[name]
        self.model = dl.read_dl_model(path, type=task)
        for key, value in [("batch_size", count), ("learning_rate", 0.01), ("momentum", 0.9), ("weight_prior", 0.0)]:
            dl.set_dl_model_param(self.model, key, value)
        images, labels = batch(name)
        key = "segmentation_image" if task == "segmentation" else "image_label_id"
        self.samples = [{"image": images[i], key: labels[i].astype("uint8") if task == "segmentation" else int(labels[i])}
                        for i in range(count)]

    def step(self) -> float:
        return self.dl.train_dl_model_batch(self.model, self.samples)["total_loss"]


class TorchSide:
    """PyTorch eager training the module."""

    def __init__(self, name: str, path: str, threads: int) -> None:
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        self.task = NETWORKS[name][0]
        self.net = build(name).train()
        images, labels = batch(name)
        self.images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        self.labels = torch.from_numpy(labels).long()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)

    def step(self) -> float:
        output = self.net(self.images)
        if self.task == "segmentation":
            output = output["out"]
        loss = self.torch.nn.functional.cross_entropy(output, self.labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss)


def worker(side: str, name: str, path: str, threads: int) -> None:
    """Serve ``run N`` commands on stdin with the step times (s) on stdout, one JSON line each."""
    engine = (OnnxDlSide if side == "onnx_dl" else TorchSide)(name, path, threads)
    engine.step()  # the first step builds sessions and allocates
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line.split()[1])):
            start = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - start)
        print(json.dumps(times), flush=True)


class Worker:
    """One engine in a child process."""

    def __init__(self, side: str, name: str, path: str, threads: int) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", side, name, path, str(threads)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        json.loads(self.process.stdout.readline())

    def run(self, steps: int) -> list[float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"run {steps}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def bench(name: str, threads: int, blocks: int, steps: int, folder: Path) -> dict[str, Any]:
    """Median ms per step of both engines and their ratio (median over paired blocks)."""
    path = folder / f"{name}.onnx"
    if not path.exists():
        import warnings

        import onnx_dl as dl

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dl.export_torch(build(name), path, NETWORKS[name][1])
    sides = {side: Worker(side, name, str(path), threads) for side in ("onnx_dl", "torch")}
    times: dict[str, list[float]] = {side: [] for side in sides}
    ratios = []
    try:
        for block in range(blocks):
            order = list(sides) if block % 2 == 0 else list(reversed(sides))
            medians = {}
            for side in order:
                time.sleep(BLOCK_GAP_S)
                block_times = sides[side].run(steps)
                times[side] += block_times
                medians[side] = statistics.median(block_times)
            ratios.append(medians["onnx_dl"] / medians["torch"])
    finally:
        for side in sides.values():
            side.close()
    ours, theirs = (1000 * statistics.median(times[s]) for s in ("onnx_dl", "torch"))
    return {"network": name, "threads": threads, "onnx_dl_ms": ours, "torch_ms": theirs,
            "ratio": statistics.median(ratios)}


def main() -> None:
    """Run the benchmark and print (or write) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.worker:
        side, name, path, threads = args.worker
        worker(side, name, path, int(threads))
        return
    lines = ["| network | task, image, batch | threads | onnx_dl ms | PyTorch ms | ratio |", "|---|---|---|---|---|---|"]
    print(*lines, sep="\n", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.networks.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                r = bench(name, threads, args.blocks, args.steps, Path(folder))
                task, size, count = NETWORKS[name]
                lines.append(f"| {name} | {task}, {size} x {size}, {count} | {threads} | {r['onnx_dl_ms']:.0f} | "
                             f"{r['torch_ms']:.0f} | {r['ratio']:.2f} |")
                print(lines[-1], flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
