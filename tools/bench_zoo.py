"""Training-step time on the networks users bring: torchvision models through onnx_dl against the same
module in PyTorch eager, same weights, same batch, same thread count.

    python tools/bench_zoo.py [--networks resnet18,mobilenet_v2] [--threads 1,2] [--blocks 6] [--steps 3]
                              [--processes 3] [--markdown results.md]

Needs the test extra (torch, torchvision). Per network the parent exports the module with
``onnx_dl.export_torch`` (batch norm kept), then two worker processes, one per engine, train on the
same fixed batch (SGD, momentum 0.9, no weight decay; classification cross-entropy, segmentation
per-pixel cross-entropy on the ``out`` head). A detector (``detector_resnet18``) is onnx_dl's
``create_dl_model_detection`` on the exported backbone; there both sides are ``tools/bench.py``'s and
train onnx_dl's training graph (focal and Huber losses, weight prior 1e-4; PyTorch through
``tools/onnx_to_torch.py``), after checking that their first losses agree. The parent alternates blocks of ``--steps`` steps between
them, flipping the order every block, with a pause between blocks so one engine's spinning threads do
not slow the other (worker processes and interleaving: ``tools/benchlib/workers.py``, shared with
``tools/bench.py``). Each network and thread count gets ``--processes`` fresh pairs of workers, which share
the ``--blocks`` (see ``benchlib.workers.block_shares``). Reported: median ms per step of each side, the ratio
onnx_dl / PyTorch (median over paired blocks) and each side's largest peak RSS, for each thread count.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchlib.report import paired_ratios
from benchlib.workers import Worker, block_shares, close_all, interleave, peak_rss_mb, serve, timed_steps

# network: (task, image size, batch)
NETWORKS: dict[str, tuple[str, int, int]] = {
    "resnet18": ("classification", 128, 8),
    "mobilenet_v2": ("classification", 128, 8),
    "efficientnet_b0": ("classification", 128, 8),
    "shufflenet_v2_x0_5": ("classification", 128, 8),
    "regnet_x_400mf": ("classification", 128, 8),
    "lraspp_mobilenet_v3_large": ("segmentation", 128, 4),
    "detector_resnet18": ("detection", 128, 4),
}
BACKBONES = {"detector_resnet18": "resnet18"}  # detectors: onnx_dl's create_dl_model_detection on this backbone
CLASSES = 4


def build(name: str) -> Any:
    """The torchvision module with fixed random weights (the same in every process)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    task = NETWORKS[name][0]
    if task == "detection":
        return getattr(torchvision.models, BACKBONES[name])(num_classes=CLASSES)
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

    def setup(self, name: str, path: str, threads: int) -> dict[str, Any]:
        """Read the file, set the solver, build the fixed samples and run the first step (sessions, allocation)."""
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
        self.step()
        return {}

    def step(self) -> float:
        """One training step; its total loss."""
        return self.dl.train_dl_model_batch(self.model, self.samples)["total_loss"]

    def run(self, steps: int) -> dict[str, Any]:
        """``steps`` timed steps."""
        return timed_steps(self.step, steps)

    def finish(self) -> dict[str, Any]:
        """This worker's peak RSS."""
        return {"peak_rss_mb": peak_rss_mb()}


class TorchSide:
    """PyTorch eager training the module."""

    def setup(self, name: str, path: str, threads: int) -> dict[str, Any]:
        """Build the module and the fixed batch and run the first step (``path``, the export, is onnx_dl's)."""
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        self.task = NETWORKS[name][0]
        self.net = build(name).train()
        images, labels = batch(name)
        self.images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        self.labels = torch.from_numpy(labels).long()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
        self.step()
        return {}

    def step(self) -> float:
        """One training step; its loss."""
        output = self.net(self.images)
        if self.task == "segmentation":
            output = output["out"]
        loss = self.torch.nn.functional.cross_entropy(output, self.labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def run(self, steps: int) -> dict[str, Any]:
        """``steps`` timed steps."""
        return timed_steps(self.step, steps)

    def finish(self) -> dict[str, Any]:
        """This worker's peak RSS."""
        return {"peak_rss_mb": peak_rss_mb()}


SIDES = {"onnx_dl": OnnxDlSide, "torch": TorchSide}


def detection_case(path: Path, name: str) -> dict[str, Any]:
    """The ``tools/bench.py`` case of a detector built by onnx_dl on the exported backbone ``path``: both sides
    train onnx_dl's training graph (PyTorch through ``tools/onnx_to_torch.py``), SGD with momentum 0.9."""
    _, size, count = NETWORKS[name]
    return {"model_type": "detection", "source": str(path), "size": size, "batch": count, "samples": "detection_samples",
            "steps_per_block": 3, "params": {"min_level": 3, "max_level": 5}, "create": "create_dl_model_detection",
            "num_classes": 3, "class_weights": False}


def _start(name: str, path: Path, threads: int) -> dict[str, Worker]:
    """Both sides' workers, set up (a detector's through ``tools/bench.py``, whose losses must agree first)."""
    if NETWORKS[name][0] != "detection":
        sides = {side: Worker(__file__, side) for side in SIDES}
        for side in sides.values():
            side.call("setup", name=name, path=str(path), threads=threads)
        return sides
    from benchlib.cases import check_losses

    sides = {side: Worker(Path(__file__).with_name("bench.py"), side) for side in SIDES}
    setup = {side: w.call("setup", case=detection_case(path, name), solver="sgd", threads=threads)
             for side, w in sides.items()}
    check_losses(setup["onnx_dl"]["losses"], setup["torch"]["losses"], name)
    return sides


def bench(name: str, threads: int, blocks: int, steps: int, folder: Path, processes: int = 1) -> dict[str, Any]:
    """Median ms per step of both engines and their ratio (median over paired blocks), the blocks shared by
    ``processes`` fresh pairs of workers."""
    path = folder / f"{name}.onnx"
    if not path.exists():
        import warnings

        import onnx_dl as dl

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dl.export_torch(build(name), path, NETWORKS[name][1])
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    rss = dict.fromkeys(SIDES, 0.0)
    for share in block_shares(blocks, processes):
        sides: dict[str, Worker] = {}
        try:
            sides = _start(name, path, threads)
            for side, replies in interleave(sides, share, steps).items():
                runs[side] += replies
            for side, worker in sides.items():
                rss[side] = max(rss[side], worker.call("finish")["peak_rss_mb"])
        finally:
            close_all(list(sides.values()))
    ours, theirs = (1000 * statistics.median([t for block in runs[s] for t in block["times"]]) for s in ("onnx_dl", "torch"))
    return {"network": name, "threads": threads, "onnx_dl_ms": ours, "torch_ms": theirs,
            "ratio": statistics.median(paired_ratios(runs)), "onnx_dl_rss_mb": rss["onnx_dl"], "torch_rss_mb": rss["torch"]}


def main() -> None:
    """Run the benchmark and print (or write) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--processes", type=int, default=3, help="fresh worker pairs per row, sharing the blocks")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.worker:
        serve(SIDES[args.worker]())
        return
    lines = ["| network | task, image, batch | threads | onnx_dl ms | PyTorch ms | ratio | peak RSS MB onnx_dl / PyTorch |",
             "|---|---|---|---|---|---|---|"]
    print(*lines, sep="\n", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.networks.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                r = bench(name, threads, args.blocks, args.steps, Path(folder), args.processes)
                task, size, count = NETWORKS[name]
                lines.append(f"| {name} | {task}, {size} x {size}, {count} | {threads} | {r['onnx_dl_ms']:.0f} | "
                             f"{r['torch_ms']:.0f} | {r['ratio']:.2f} | {r['onnx_dl_rss_mb']:.0f} / {r['torch_rss_mb']:.0f} |")
                print(lines[-1], flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
