"""Helpers for tests on real PyTorch exports (torch, torchvision and timm are test-only dependencies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import onnx_dl as dl

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


def random_batchnorm(net: Any, seed: int = 0) -> Any:
    """Give every BN layer random scale, bias and running statistics (so no two BN tensors are equal)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 0.4 - 0.2)
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return net


def export(net: Any, path: Path, size: int, recipe: str = "training") -> Path:
    """Export ``net`` for (3, size, size) images with a dynamic batch: ``training`` (onnx_dl.export_torch),
    ``folded`` (the TorchScript exporter's defaults) or ``dynamo`` (see torch_parity.export)."""
    import torch_parity

    return torch_parity.export(net, path, {"folded": "eval_fold"}.get(recipe, recipe), size, batch=2)


def images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Random (count, size, size, 3) float32 images."""
    return np.random.default_rng(seed).standard_normal((count, size, size, 3)).astype(np.float32)


def samples(x: np.ndarray, labels: list[int]) -> list[dict[str, Any]]:
    """Classification samples of the images ``x`` (N, H, W, 3)."""
    return [{"image": x[i], "image_label_id": labels[i]} for i in range(len(x))]


def torch_train_loss(net: Any, x: np.ndarray, labels: list[int]) -> float:
    """Cross-entropy of ``net`` in train() mode (batch statistics), dropout off, on images ``x`` (N, H, W, 3)."""
    net.train()
    for module in net.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
    try:
        with torch.no_grad():
            logits = net(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
        return float(F.cross_entropy(logits, torch.tensor(labels)))
    finally:
        net.eval()


def sgd_model(path: Path, batch_size: int, **params: Any) -> dl.DLModel:
    """A classifier read from ``path`` with plain SGD (no momentum, no weight prior) unless ``params`` say else."""
    model = dl.read_dl_model(path, type="classification")
    settings = {"batch_size": batch_size, "momentum": 0.0, "weight_prior": 0.0, "learning_rate": 0.01, **params}
    for name, value in settings.items():
        dl.set_dl_model_param(model, name, value)
    return model


def train(model: dl.DLModel, batch: list[dict[str, Any]], steps: int) -> list[float]:
    """The total loss of ``steps`` training steps on the same batch."""
    return [float(dl.train_dl_model_batch(model, batch)["total_loss"]) for _ in range(steps)]


def written_probabilities_match_apply(model: dl.DLModel, path: Path, x: np.ndarray, atol: float = 1e-5) -> None:
    """The file of ``write_dl_model`` run by plain onnxruntime gives apply_dl_model's class confidences."""
    dl.write_dl_model(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    probabilities = session.run(None, {name: x.transpose(0, 3, 1, 2).copy()})[0]
    class_ids = list(dl.get_dl_model_param(model, "class_ids"))
    for i, result in enumerate(dl.apply_dl_model(model, [{"image": image} for image in x])):
        applied = np.zeros(len(class_ids), np.float32)
        for class_id, confidence in zip(result["classification_class_ids"], result["classification_confidences"]):
            applied[class_ids.index(class_id)] = confidence
        np.testing.assert_allclose(probabilities[i], applied, rtol=1e-5, atol=atol)
