"""Word recognition: onnx_dl (ONNX Runtime training) against PyTorch on the same network and data.

The bundled ``ocr_recognition_compact`` is converted to PyTorch by ``tools/onnx_to_torch.py``'s layer
mapping written out here for this one network (Conv, BatchNorm, ReLU, mean over the rows, 1 x 3 and 1 x 1
convolutions), with the same initial weights; both train the same batches of generated words with Adam
and the CTC loss (PyTorch: ``ctc_loss(reduction='sum') / N``, the same definition), the learning rate
falling to a fifth after 70 % of the steps. Reported: the median step time over the run (after 5 warm-up
steps) and the word accuracy on 200 held-out words, best path decoded.

    python tools/bench_ocr.py --steps 1300 --threads 1 --seed 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnx
from onnx import numpy_helper

import onnx_dl as dl
from onnx_dl import ctc, synthetic
from onnx_dl.evaluation import evaluate_dl_model


def torch_network(torch: object, model: onnx.ModelProto) -> object:
    """The bundled network's layers as a torch module with its weights (eval-mode BN: running stats)."""
    nn = torch.nn  # type: ignore[attr-defined]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]

    class Net(nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList()
            for node in convs:
                weight = inits[node.input[1]]
                attrs = {a.name: list(a.ints) for a in node.attribute}
                pads = attrs.get("pads", [0, 0, 0, 0])
                conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], stride=attrs.get("strides", [1, 1]),
                                 padding=(pads[0], pads[1]), bias=len(node.input) > 2)
                conv.weight.data = torch.tensor(weight)  # type: ignore[attr-defined]
                if len(node.input) > 2:
                    conv.bias.data = torch.tensor(inits[node.input[2]])  # type: ignore[attr-defined]
                prefix = node.input[1].rsplit(".weight", 1)[0]
                if f"{prefix}.bn.scale" in inits:
                    bn = nn.BatchNorm2d(weight.shape[0], eps=1e-5, momentum=0.1)
                    bn.weight.data = torch.tensor(inits[f"{prefix}.bn.scale"])  # type: ignore[attr-defined]
                    bn.bias.data = torch.tensor(inits[f"{prefix}.bn.bias"])  # type: ignore[attr-defined]
                    self.layers.append(nn.Sequential(conv, bn, nn.ReLU()))
                elif prefix == "context":
                    self.layers.append(nn.Sequential(conv, nn.ReLU()))
                else:
                    self.layers.append(conv)

        def forward(self, x: object) -> object:
            x = x * (1.0 / 128.0)  # type: ignore[operator]
            for index, layer in enumerate(self.layers):
                if index == len(self.layers) - 2:
                    x = x.mean(dim=2, keepdim=True)  # type: ignore[attr-defined]
                x = layer(x)
            return x[:, :, 0, :]  # type: ignore[index]

    return Net()


def batches(seed: int, steps: int, width: int, height: int) -> tuple[list[list[dict]], list[dict]]:
    pool = synthetic.word_samples(4000, width, height, seed=seed)
    held_out = synthetic.word_samples(200, width, height, seed=seed + 1000)
    return [[pool[(16 * i + j) * 7919 % len(pool)] for j in range(16)] for i in range(steps)], held_out


def run_onnx_dl(steps: list[list[dict]], held_out: list[dict], lr: float, threads: int) -> dict[str, float]:
    dl.set_system("thread_num", threads)
    model = dl.read_dl_model("ocr_recognition_compact")
    dl.set_dl_model_param(model, "learning_rate", lr)
    times = []
    for i, batch in enumerate(steps):
        if i == int(0.7 * len(steps)):
            dl.set_dl_model_param(model, "learning_rate", lr / 5)
        start = time.perf_counter()
        dl.train_dl_model_batch(model, batch)
        times.append(time.perf_counter() - start)
    accuracy = evaluate_dl_model(model, samples=held_out)["word_accuracy"]
    return {"step_ms": 1000 * statistics.median(times[5:]), "word_accuracy": accuracy}


def run_torch(steps: list[list[dict]], held_out: list[dict], lr: float, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    alphabet = synthetic.WORD_ALPHABET
    net = torch_network(torch, onnx.load(dl.serialization.resolve("ocr_recognition_compact")))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    times = []
    net.train()
    for i, batch in enumerate(steps):
        if i == int(0.7 * len(steps)):
            for group in optimizer.param_groups:
                group["lr"] = lr / 5
        start = time.perf_counter()
        images = torch.tensor(np.stack([s["image"].transpose(2, 0, 1) for s in batch]))
        targets = torch.tensor([alphabet.index(c) + 1 for s in batch for c in s["word"]], dtype=torch.long)
        scores = net(images)
        log_probs = torch.log_softmax(scores, dim=1).permute(2, 0, 1)
        loss = torch.nn.functional.ctc_loss(log_probs, targets, torch.full((len(batch),), scores.shape[2]),
                                            torch.tensor([len(s["word"]) for s in batch]), reduction="sum") / len(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    net.eval()
    with torch.no_grad():
        images = torch.tensor(np.stack([s["image"].transpose(2, 0, 1) for s in held_out]))
        probabilities = torch.softmax(net(images), dim=1).numpy()
    words = ["".join(alphabet[k - 1] for k in ctc.best_path(p)[0]) for p in probabilities]
    accuracy = float(np.mean([w == s["word"] for w, s in zip(words, held_out)]))
    return {"step_ms": 1000 * statistics.median(times[5:]), "word_accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.003)
    args = parser.parse_args()
    steps, held_out = batches(args.seed, args.steps, 128, 32)
    report = {"steps": args.steps, "threads": args.threads, "seed": args.seed,
              "onnx_dl": run_onnx_dl(steps, held_out, args.lr, args.threads),
              "torch": run_torch(steps, held_out, args.lr, args.threads)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
