"""Detection quality: mAP@0.5 of onnx_dl and of a torchvision RetinaNet of comparable size, trained on
the same generated data in the same order for the same number of steps (issue 13).

    python tools/bench_detection_quality.py [--steps 600,2000] [--size 128] [--batch 8] [--seeds 0]
        [--systems new,old,torchvision,torchvision-gn] [--out tools/detection-quality-results.md]

Systems:
  new             onnx_dl, losses divided by the running average of positive anchors (the default)
  old             onnx_dl with the per-step count max(P, 1) (NORMALIZER_MOMENTUM 0: the rule before issue 13)
  torchvision     torchvision.models.detection.RetinaNet from scratch, its default head (no normalisation)
                  trimmed to the same tower depth and width as onnx_dl's head
  torchvision-gn  the same with GroupNorm in the head towers (torchvision's RetinaNet v2 head)

Data: ``onnx_dl.synthetic.detection_samples`` (3 shape classes, 1 to 4 shapes per image) and as many
images without any object, so about half the images are background and some steps hold no object
at all. All systems use create_dl_model_detection("classifier_compact", 3) at its defaults (levels
2..4, 3 subscales x 3 aspect ratios, capacity 'medium') or its torch twin, Adam 1e-3, batch 8.
mAP@0.5 is onnx_dl.evaluation.mean_average_precision over all detections scoring >= 0.05 (the
evaluation floor of both libraries), on held-out images with the same share of background.
torch and torchvision are benchmark-only dependencies.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx_dl as dl  # noqa: E402
from onnx_dl.tasks import detection  # noqa: E402
from onnx_dl.evaluation import EVALUATION_MIN_CONFIDENCE, evaluate_dl_model, mean_average_precision  # noqa: E402
from onnx_dl.synthetic import detection_samples  # noqa: E402

CLASSES = 3
LEARNING_RATE = 1e-3
BOX_KEYS = ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2")


def data(steps: int, size: int, batch: int, seed: int) -> tuple[list[list[int]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(per step the indices into the pool, the pool, the test images): half of each without objects."""
    half = max(steps * batch // 4, 200)
    pool = detection_samples(half, size, seed=seed) + detection_samples(half, size, seed=seed + 1, min_shapes=0,
                                                                        max_shapes=0)
    test = detection_samples(100, size, seed=seed + 1000) + detection_samples(50, size, seed=seed + 1001,
                                                                              min_shapes=0, max_shapes=0)
    rng = np.random.default_rng(seed)
    order = [[int(i) for i in rng.choice(len(pool), batch, replace=False)] for _ in range(steps)]
    return order, pool, test


class OnnxDl:
    """onnx_dl's detector; ``old`` divides by the step's own positive count (momentum 0)."""

    def __init__(self, size: int, batch: int, old: bool) -> None:
        self.old = old
        self.model = dl.create_dl_model_detection("classifier_compact", CLASSES, {
            "image_width": size, "image_height": size, "batch_size": batch, "solver_type": "adam",
            "learning_rate": LEARNING_RATE})

    def step(self, samples: list[dict[str, Any]]) -> float:
        saved = detection.NORMALIZER_MOMENTUM
        detection.NORMALIZER_MOMENTUM = 0.0 if self.old else saved
        try:
            return float(dl.train_dl_model_batch(self.model, samples)["total_loss"])
        finally:
            detection.NORMALIZER_MOMENTUM = saved

    def map50(self, test: list[dict[str, Any]]) -> float:
        return float(evaluate_dl_model(self.model, samples=test)["map_50"])


def _torch_backbone(torch: Any, nn: Any) -> Any:
    """classifier_compact's layers in torch (widths 16, 32, 64, 128), returning the maps onnx_dl docks on:
    stage1.conv (stride 4), stage2.conv (stride 8), stage3.down (stride 16)."""

    def block(c_in: int, c_out: int, stride: int) -> Any:
        conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (c_in * 9)))
        return nn.Sequential(conv, nn.BatchNorm2d(c_out, momentum=0.1), nn.ReLU(inplace=True))

    class Body(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stage0 = nn.Sequential(block(3, 16, 2), block(16, 16, 1))
            self.stage1 = nn.Sequential(block(16, 32, 2), block(32, 32, 1))
            self.stage2 = nn.Sequential(block(32, 64, 2), block(64, 64, 1))
            self.stage3 = block(64, 128, 2)

        def forward(self, x: Any) -> Any:
            c2 = self.stage1(self.stage0(x))
            c3 = self.stage2(c2)
            return OrderedDict([("0", c2), ("1", c3), ("2", self.stage3(c3))])

    return Body()


class TorchRetinaNet:
    """torchvision's RetinaNet on the classifier_compact twin with an FPN and heads of onnx_dl's
    'medium' width (64) and tower depth (2), the same anchors, from scratch."""

    def __init__(self, size: int, batch: int, group_norm: bool, threads: int) -> None:
        import functools

        import torch
        import torchvision
        from torch import nn
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.retinanet import RetinaNetHead
        from torchvision.ops import FeaturePyramidNetwork

        torch.manual_seed(0)
        torch.set_num_threads(threads)
        self.torch = torch
        width, depth = 64, 2
        body = _torch_backbone(torch, nn)

        class Backbone(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body, self.fpn, self.out_channels = body, FeaturePyramidNetwork([32, 64, 128], width), width

            def forward(self, x: Any) -> Any:
                return self.fpn(self.body(x))

        sizes = tuple(tuple(4 * 2**level * 2 ** (i / 3) for i in range(3)) for level in (2, 3, 4))
        anchors = AnchorGenerator(sizes, ((1.0, 2.0, 0.5),) * 3)
        norm = functools.partial(nn.GroupNorm, 32) if group_norm else None
        head = RetinaNetHead(width, 9, CLASSES, norm_layer=norm)
        for tower in (head.classification_head.conv, head.regression_head.conv):
            del tower[depth:]
        self.model = torchvision.models.detection.RetinaNet(
            Backbone(), CLASSES, min_size=size, max_size=size, anchor_generator=anchors, head=head,
            score_thresh=EVALUATION_MIN_CONFIDENCE, nms_thresh=0.5, detections_per_img=100)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        self.batch = batch

    def _images(self, samples: list[dict[str, Any]]) -> list[Any]:
        return [self.torch.from_numpy(np.ascontiguousarray((s["image"].transpose(2, 0, 1) + 127.0) / 255.0))
                for s in samples]

    def _targets(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Boxes in torchvision's pixel-edge (x1, y1, x2, y2): HALCON's pixel-centred coordinates + 0.5."""
        found = []
        for s in samples:
            rows1, cols1, rows2, cols2 = (np.asarray(s[k], np.float32) + 0.5 for k in BOX_KEYS)
            boxes = np.stack([cols1, rows1, cols2, rows2], axis=1).reshape(-1, 4)
            found.append({"boxes": self.torch.from_numpy(boxes),
                          "labels": self.torch.from_numpy(np.asarray(s["bbox_label_id"], np.int64))})
        return found

    def step(self, samples: list[dict[str, Any]]) -> float:
        self.model.train()
        losses = self.model(self._images(samples), self._targets(samples))
        total = sum(losses.values())
        self.optimizer.zero_grad()
        total.backward()
        self.optimizer.step()
        return float(total.detach())

    def map50(self, test: list[dict[str, Any]]) -> float:
        self.model.eval()
        results = []
        with self.torch.no_grad():
            for start in range(0, len(test), self.batch):
                for found in self.model(self._images(test[start:start + self.batch])):
                    boxes = found["boxes"].numpy().astype(np.float64) - 0.5
                    results.append({"bbox_row1": boxes[:, 1], "bbox_col1": boxes[:, 0], "bbox_row2": boxes[:, 3],
                                    "bbox_col2": boxes[:, 2], "bbox_class_id": found["labels"].numpy(),
                                    "bbox_confidence": found["scores"].numpy().astype(np.float64)})
        return float(mean_average_precision(results, test, list(range(CLASSES)))["mean_ap"])


def make(system: str, size: int, batch: int, threads: int) -> Any:
    if system in ("new", "old"):
        return OnnxDl(size, batch, old=system == "old")
    if system in ("torchvision", "torchvision-gn"):
        return TorchRetinaNet(size, batch, group_norm=system == "torchvision-gn", threads=threads)
    raise SystemExit(f"unknown system {system!r}")


def run(system: str, budgets: list[int], size: int, batch: int, seed: int, threads: int) -> dict[str, Any]:
    """Train ``system`` for max(budgets) steps; mAP@0.5 at every budget and the median step time."""
    order, pool, test = data(max(budgets), size, batch, seed)
    trainer = make(system, size, batch, threads)
    times, losses, scores = [], [], {}
    for step, indices in enumerate(order, start=1):
        start = time.perf_counter()
        losses.append(trainer.step([pool[i] for i in indices]))
        times.append(time.perf_counter() - start)
        if step in budgets:
            scores[step] = trainer.map50(test)
            print(f"  {system} seed {seed}: step {step} mAP@0.5 {scores[step]:.3f} "
                  f"({statistics.median(times) * 1e3:.0f} ms/step)", flush=True)
    empty = [step for step, indices in enumerate(order) if not any(len(pool[i]["bbox_row1"]) for i in indices)]
    ratios = [losses[step] / float(np.mean(losses[step - 20:step])) for step in empty if step >= 20]
    return {"scores": scores, "ms": statistics.median(times) * 1e3, "empty_steps": len(empty),
            "worst_ratio": max(ratios, default=float("nan"))}


LABELS = {"new": "onnx_dl, running average of positives (default)", "old": "onnx_dl, per-step count max(P, 1) (before)",
          "torchvision": "torchvision RetinaNet, default head", "torchvision-gn": "torchvision RetinaNet, GroupNorm head"}


def table(rows: dict[tuple[str, int], dict[str, Any]], budgets: list[int], args: argparse.Namespace) -> str:
    import onnxruntime

    lines = [f"# Detection quality: onnx_dl vs torchvision RetinaNet (issue 13)", "",
             f"Machine: {platform.processor() or platform.machine()}, {platform.system()}, Python "
             f"{platform.python_version()}, onnxruntime {onnxruntime.__version__}; {datetime.now():%Y-%m-%d %H:%M}. "
             f"Command: `python tools/bench_detection_quality.py {' '.join(sys.argv[1:])}`.", "",
             f"Data: {args.size} x {args.size} generated images (3 shape classes, 1 to 4 shapes), half of them "
             f"without any object; batch {args.batch}, Adam {LEARNING_RATE}; the same images in the same order for "
             f"every system. mAP@0.5 on 150 held-out images (a third background), detections >= "
             f"{EVALUATION_MIN_CONFIDENCE}. ms/step: median wall time of a training step (evaluation excluded), "
             f"{args.threads} thread(s) per library, on a shared 2-core machine (other jobs running).", "",
             "| system | seed | " + " | ".join(f"mAP@0.5 {b} steps" for b in budgets)
             + " | ms/step | steps without objects | worst such step: loss / mean of the 20 before |",
             "|---|---|" + "---|" * len(budgets) + "---|---|---|"]
    for (system, seed), row in rows.items():
        scores = " | ".join(f"{row['scores'][b]:.3f}" for b in budgets)
        lines.append(f"| {LABELS[system]} | {seed} | {scores} | {row['ms']:.0f} | {row['empty_steps']} | "
                     f"{row['worst_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="600,2000", help="budgets, comma-separated; one run to the largest")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1, help="threads of both libraries (onnx_dl's thread_num, "
                        "torch.set_num_threads); 1 by default: on a shared 2-core machine torch's OpenMP with 2 "
                        "threads ran 20x slower")
    parser.add_argument("--systems", default="new,old,torchvision,torchvision-gn")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    budgets = sorted(int(b) for b in args.steps.split(","))
    dl.set_system("thread_num", args.threads)
    rows = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for system in args.systems.split(","):
            rows[(system, seed)] = run(system, budgets, args.size, args.batch, seed, args.threads)
    text = table(rows, budgets, args)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
