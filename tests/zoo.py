"""The torchvision zoo through onnx_dl: real architectures, real exporters (test side only).

One *case* is a network (``NETWORKS``) exported by one recipe (``RECIPES``) and taken through what a
user does with it: read it, train one step and compare the loss with PyTorch's ``train()`` loss on the
same batch (dropout off), compare how much one SGD step lowers the loss with how much PyTorch's same step
lowers it, count the trained parameters against PyTorch's, train four more steps, write the model and run
the written file in plain onnxruntime against ``apply_dl_model``.

The step size is chosen from PyTorch's gradient so that the step lowers the loss by ``STEP_DECREASE`` of
itself to first order (lr = STEP_DECREASE * loss / |g|^2): small enough that the loss after it is a smooth
function of the gradient (at a fixed 0.01 deep networks overshoot and float32 noise decides the next loss),
large enough that an untrained layer or a wrong gradient changes the decrease by its share of |g|^2.

``run_case`` returns what it measured as a :class:`CaseResult`; the tests (``test_zoo.py``) state the
promises, and ``tools/zoo_matrix.py`` prints the whole matrix with step-time ratios.

Networks are randomly initialised (no download), small images, batch 2. BatchNorm parameters and
running statistics are randomised before export, parameters PyTorch initialises to zero get small random
values, and every other parameter is scaled by 1 + 5 % noise, as pretrained weights would be: with PyTorch's initial values
every batch norm looks the same (which hides wrong wiring), the dynamo exporter drops all-zero biases, and
both exporters merge parameters of equal value. The ``eval_nofold`` recipe keeps PyTorch's initial values,
so that it meets the TorchScript exporter's merging of equal tensors through ``Identity`` nodes at scale.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_parity

import onnx_dl as dl
from onnx_dl.engine import runtime

BATCH = 2


@dataclass(frozen=True)
class Network:
    """A zoo network: how to build it, its model type and the image side it runs at."""

    build: Callable[[], nn.Module]
    model_type: str  # "classification" or "segmentation"
    size: int
    classes: int
    has_batch_norm: bool


class SegmentationOut(nn.Module):
    """torchvision's segmentation models return {'out': ...}; ONNX wants the tensor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def _tv(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)
    return build


def _tv_seg(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return SegmentationOut(getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None,
                                                                                **kwargs))
    return build


NETWORKS: dict[str, Network] = {
    "resnet18": Network(_tv("resnet18", num_classes=4), "classification", 64, 4, True),
    "resnet50": Network(_tv("resnet50", num_classes=4), "classification", 64, 4, True),
    "mobilenet_v2": Network(_tv("mobilenet_v2", num_classes=4), "classification", 64, 4, True),
    "mobilenet_v3_small": Network(_tv("mobilenet_v3_small", num_classes=4), "classification", 64, 4, True),
    "efficientnet_b0": Network(_tv("efficientnet_b0", num_classes=4), "classification", 64, 4, True),
    "shufflenet_v2_x0_5": Network(_tv("shufflenet_v2_x0_5", num_classes=4), "classification", 64, 4, True),
    "regnet_x_400mf": Network(_tv("regnet_x_400mf", num_classes=4), "classification", 64, 4, True),
    "densenet121": Network(_tv("densenet121", num_classes=4), "classification", 64, 4, True),
    "squeezenet1_1": Network(_tv("squeezenet1_1", num_classes=4), "classification", 64, 4, False),
    "convnext_tiny": Network(_tv("convnext_tiny", num_classes=4), "classification", 32, 4, False),
    "vit_b_16": Network(_tv("vit_b_16", num_classes=4, image_size=32), "classification", 32, 4, False),
    "fcn_resnet50": Network(_tv_seg("fcn_resnet50", num_classes=3), "segmentation", 32, 3, True),
    "deeplabv3_mobilenet_v3_large": Network(_tv_seg("deeplabv3_mobilenet_v3_large", num_classes=3), "segmentation",
                                            32, 3, True),
    "lraspp_mobilenet_v3_large": Network(_tv_seg("lraspp_mobilenet_v3_large", num_classes=3), "segmentation", 32, 3,
                                         True),
}


def network(name: str, seed: int = 0, pretrained_like: bool = True) -> nn.Module:
    """``name`` built with seed ``seed``, dropout and stochastic depth off; ``pretrained_like``: its tensors
    randomised as in the module docstring, else PyTorch's initial values."""
    torch.manual_seed(seed)
    net = NETWORKS[name].build()
    generator = torch.Generator().manual_seed(seed + 1)
    for module in net.modules():
        if isinstance(module, nn.Dropout) or type(module).__name__ == "StochasticDepth":
            module.p = 0.0
    if not pretrained_like:
        return net
    with torch.no_grad():
        for parameter in net.parameters():  # no two tensors equal and none zero, as in pretrained weights
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.any():
                parameter.mul_(1.0 + 0.05 * noise)
            else:  # zero-initialised biases and heads (ViT's): zero scores would make every loss log(K)
                parameter.copy_(0.01 * noise)
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
    return net


# recipe (torch_parity.export) -> whether it keeps what PyTorch trains (batch norm above all)
RECIPES: dict[str, bool] = {
    "training": True,  # onnx_dl.export_torch, the README's recipe: every BN kept, no tensor shared
    "eval_nofold": True,  # eval mode without constant folding: BN kept, equal tensors shared through Identity
    "dynamo": False,  # the dynamo exporter (torch's default), dynamic batch: folds BN into the convolutions
    "dynamo_static": False,  # the same with the batch baked in
}


@dataclass
class CaseResult:
    """What one (network, recipe) case measured."""

    network: str
    recipe: str
    stage: str = "export"  # the last stage reached: export, read, train, steps, write, done
    warned: list[str] = field(default_factory=list)  # warnings at read time
    refused: str = ""  # a DLError's message, where onnx_dl refused
    loss_onnx_dl: float = float("nan")
    loss_torch: float = float("nan")
    loss_torch64: float = float("nan")  # the same step in float64: how far float32 itself is off
    second_loss_torch: float = float("nan")  # PyTorch's loss after one SGD step (the gradients, end to end)
    second_loss_torch64: float = float("nan")  # the same in float64, the same step size
    learning_rate: float = float("nan")  # the step size of every step (module docstring)
    params_onnx_dl: int = -1
    params_torch: int = -1
    losses: list[float] = field(default_factory=list)
    written_vs_apply: float = float("nan")
    ms_onnx_dl: float = float("nan")
    ms_torch: float = float("nan")

    @property
    def loss_rel_diff(self) -> float:
        """|loss_onnx_dl - loss_torch| / |loss_torch|."""
        return abs(self.loss_onnx_dl - self.loss_torch) / abs(self.loss_torch)

    @property
    def loss_rel_diff64(self) -> float:
        """onnx_dl's first loss against PyTorch's in float64."""
        return abs(self.loss_onnx_dl - self.loss_torch64) / abs(self.loss_torch64)

    @property
    def torch_float32_error(self) -> float:
        """PyTorch's own float32 loss against its float64 loss (relative)."""
        return abs(self.loss_torch - self.loss_torch64) / abs(self.loss_torch64)

    @property
    def step_decrease_rel_diff(self) -> float:
        """How much onnx_dl's first step lowered the loss against how much PyTorch's lowered it (relative to
        PyTorch's decrease): the gradients compared end to end, every layer by its share of |g|^2."""
        ours = self.loss_onnx_dl - self.losses[1]
        theirs = self.loss_torch - self.second_loss_torch
        return abs(ours - theirs) / abs(theirs)

    @property
    def step_decrease_rel_diff64(self) -> float:
        """onnx_dl's first decrease against PyTorch's in float64."""
        return abs(self.loss_onnx_dl - self.losses[1] - self._decrease64) / abs(self._decrease64)

    @property
    def torch_float32_step_error(self) -> float:
        """PyTorch's own float32 decrease against its float64 decrease (relative): large where the gradient
        is ill-conditioned (batch norm over two values, as at 1 x 1 feature maps in batch 2)."""
        return abs(self.loss_torch - self.second_loss_torch - self._decrease64) / abs(self._decrease64)

    @property
    def _decrease64(self) -> float:
        return self.loss_torch64 - self.second_loss_torch64

    @property
    def step_matches(self) -> bool:
        """The first step lowers the loss as PyTorch's does, to 1 %, or as close to the float64 decrease as
        PyTorch's float32 step comes, within a factor 5."""
        return self.step_decrease_rel_diff <= 1e-2 or \
            self.step_decrease_rel_diff64 <= max(1e-2, 5 * self.torch_float32_step_error)

    @property
    def loss_matches(self) -> bool:
        """The first loss equals PyTorch's to 1e-5, or is as close to the float64 loss as PyTorch's float32
        loss is, within a factor 10 (deep networks at batch 2: float32 itself is off by more than 1e-5)."""
        return self.loss_rel_diff <= 1e-5 or self.loss_rel_diff64 <= max(1e-5, 10 * self.torch_float32_error)


def samples(name: str, seed: int = 0) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]:
    """A batch for ``name``: the sample dicts, and the same images (NCHW) and labels for PyTorch."""
    spec = NETWORKS[name]
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 1.0, (BATCH, spec.size, spec.size, 3)).astype(np.float32)
    if spec.model_type == "classification":
        labels = np.arange(BATCH) % spec.classes
        batch = [{"image": images[i], "image_label_id": int(labels[i])} for i in range(BATCH)]
    else:
        labels = rng.integers(0, spec.classes, (BATCH, spec.size, spec.size))
        batch = [{"image": images[i], "segmentation_image": labels[i].astype(np.uint8)} for i in range(BATCH)]
    return batch, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels).long()


STEP_DECREASE = 0.02  # the share of the loss one step removes to first order (module docstring)


def torch_step(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float | None = None
               ) -> tuple[float, float]:
    """One PyTorch training step (train mode, mean cross-entropy, SGD momentum 0.9) with step size ``lr``, by
    default the one that lowers the loss by ``STEP_DECREASE`` of itself to first order; the loss before the
    step and the step size."""
    net.train()
    loss = F.cross_entropy(net(images), labels)
    net.zero_grad()
    loss.backward()
    if lr is None:
        squared_norm = sum(float((p.grad.double() ** 2).sum()) for p in net.parameters() if p.grad is not None)
        lr = STEP_DECREASE * float(loss.detach()) / squared_norm
    torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, dampening=0.0).step()
    return float(loss.detach()), lr


def _loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """PyTorch's train-mode loss on the batch, without a step."""
    with torch.no_grad():
        return float(F.cross_entropy(net.train()(images), labels))


def _scores(model: dl.DLModel, batch: list[dict[str, Any]]) -> np.ndarray:
    """apply_dl_model's per-class confidences in class order (classification), or each pixel's best
    confidence (segmentation)."""
    results = dl.apply_dl_model(model, batch)
    if "classification_confidences" in results[0]:
        classes = dl.get_dl_model_param(model, "class_ids")
        return np.array([[r["classification_confidences"][r["classification_class_ids"].index(c)] for c in classes]
                         for r in results])
    return np.stack([r["segmentation_confidence"] for r in results])


def _as_confidences(output: np.ndarray, ours: np.ndarray) -> np.ndarray:
    """The written file's output in the form of ``_scores``: a softmax where it gives logits, and each
    pixel's best probability for (N, K, H, W) maps."""
    probabilities = output
    if not np.allclose(output.sum(axis=1), 1.0, atol=1e-4):
        shifted = np.exp(output - output.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    return probabilities.max(axis=1) if ours.ndim == 3 else probabilities


def _plain_runtime(path: Path, batch: list[dict[str, Any]]) -> np.ndarray:
    session = runtime.ort().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.stack([s["image"].transpose(2, 0, 1) for s in batch]).astype(np.float32)
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def run_case(name: str, recipe: str, folder: Path, steps: int = 5, timed: int = 0) -> CaseResult:
    """Take network ``name`` through ``recipe`` (module docstring); ``timed`` > 0 also times that many steps of
    each engine (interleaved, after the measured ones)."""
    spec = NETWORKS[name]
    result = CaseResult(name, recipe)
    pretrained_like = recipe != "eval_nofold"
    net = network(name, pretrained_like=pretrained_like)
    result.params_torch = sum(p.numel() for p in net.parameters())
    path = folder / f"{name}_{recipe}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_parity.export(net, path, recipe, spec.size)
    net = network(name, pretrained_like=pretrained_like)  # the exporter may have run the module: a fresh copy for the reference
    batch, images, labels = samples(name)
    reference = copy.deepcopy(net).double()
    result.loss_torch, lr = torch_step(net, images, labels)
    result.learning_rate = lr
    result.loss_torch64, result.second_loss_torch64 = torch_step(reference, images.double(), labels, lr)[0], \
        _loss(reference, images.double(), labels)
    result.second_loss_torch = _loss(net, images, labels)
    result.stage = "read"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = dl.read_dl_model(path, type=spec.model_type)
        result.warned = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        for key, value in [("batch_size", BATCH), ("learning_rate", lr), ("momentum", 0.9), ("weight_prior", 0.0)]:
            dl.set_dl_model_param(model, key, value)
        result.params_onnx_dl = dl.get_dl_model_param(model, "num_trainable_params")
        result.stage = "train"
        first = dl.train_dl_model_batch(model, batch)
        result.loss_onnx_dl = first["total_loss"]
        result.stage = "steps"
        result.losses = [first["total_loss"]] + [dl.train_dl_model_batch(model, batch)["total_loss"]
                                                 for _ in range(steps - 1)]
        result.stage = "write"
        written = folder / f"{name}_{recipe}_trained.onnx"
        dl.write_dl_model(model, written)
        onnx.checker.check_model(onnx.load(written), full_check=True)
        ours = _scores(model, batch)
        plain = _as_confidences(_plain_runtime(written, batch), ours)
        result.written_vs_apply = float(np.max(np.abs(plain - ours)))
        result.stage = "done"
        if timed:
            result.ms_onnx_dl, result.ms_torch = _time_steps(model, batch, net, images, labels, lr, timed)
    except dl.DLError as error:
        result.refused = f"{type(error).__name__}: {error}"
    return result


def _time_steps(model: dl.DLModel, batch: list[dict[str, Any]], net: nn.Module, images: torch.Tensor,
                labels: torch.Tensor, lr: float, count: int) -> tuple[float, float]:
    """Median ms per step of onnx_dl and of PyTorch eager, steps interleaved (same host state)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    ours, theirs = [], []
    for _ in range(count):
        start = time.perf_counter()
        dl.train_dl_model_batch(model, batch)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        theirs.append(time.perf_counter() - start)
    return 1000 * float(np.median(ours)), 1000 * float(np.median(theirs))
