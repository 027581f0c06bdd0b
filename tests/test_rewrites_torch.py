"""Networks exported by torch.onnx.export that need the training rewrites (onnx_dl.rewrites): read,
the first training loss equals PyTorch's train() loss, the trained-parameter count equals
PyTorch's, five steps stay finite, and the written file (original operators) run by plain
onnxruntime equals apply_dl_model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import onnx_dl as dl
from onnx_dl.engine import runtime
from zoo import SegmentationOut

BATCH = 2
LEARNING_RATE = 0.05


class _LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _TinySegmenter(nn.Module):
    """Down (stride-2 conv), LayerNorm + tanh-GELU + Hardswish + Hardsigmoid gate, up by two
    ConvTransposes, and F.interpolate (bilinear and nearest) back to the input size."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = _LayerNorm2d(8)
        self.deeper = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(12, 8, 2, stride=2)
        self.up3 = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
        self.skip = nn.Conv2d(8, 6, 1)
        self.head = nn.Conv2d(6, classes, 1)
        self.coarse = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        a = F.gelu(self.norm(self.down(x)), approximate="tanh")
        b = F.hardswish(self.deeper(a))
        up = self.up2(b) * F.hardsigmoid(a)
        wide = self.up3(up) + F.interpolate(self.skip(a), scale_factor=2.0, mode="nearest")
        coarse = F.interpolate(self.coarse(F.relu(up)), size=size, mode="bilinear",
                               align_corners=False)
        return self.head(wide) + coarse


def _no_randomness(net: nn.Module) -> nn.Module:
    """Dropout and stochastic depth off (the comparison is with train() otherwise)."""
    for module in net.modules():
        if isinstance(module, nn.Dropout) or type(module).__name__ == "StochasticDepth":
            module.p = 0.0
    return net.train()


def _export(net: nn.Module, path: Path, size: int, dynamo: bool) -> None:
    example = torch.zeros(BATCH, 3, size, size)
    if dynamo:
        torch.onnx.export(net, (example,), str(path), dynamo=True, input_names=["image"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        torch.onnx.export(net, example, str(path), dynamo=False, opset_version=17, input_names=["image"],
                          training=torch.onnx.TrainingMode.TRAINING, dynamic_axes={"image": {0: "N"}})


def _torch_losses(net: nn.Module, batch: torch.Tensor, labels: torch.Tensor, steps: int,
                  dtype: torch.dtype, learning_rate: float = LEARNING_RATE) -> list[float]:
    """PyTorch's train() losses of ``steps`` SGD steps on a copy of ``net`` in ``dtype`` (the first step
    of the library's SGD, v = mu*v - lr*g, w += v, is torch's: w -= lr*g)."""
    net = copy.deepcopy(net).to(dtype)
    solver = torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=0.9)
    losses = []
    for _ in range(steps):
        solver.zero_grad()
        loss = F.cross_entropy(net(batch.to(dtype)), labels)
        loss.backward()
        solver.step()
        losses.append(loss.item())
    return losses


def _check_trains_like_torch(net: nn.Module, path: Path, size: int, segmentation: bool, dynamo: bool = False,
                             rewritten: tuple[str, ...] = (), learning_rate: float = LEARNING_RATE) -> None:
    torch.manual_seed(0)
    _export(net, path, size, dynamo)
    exported = {n.op_type for n in onnx.load(path).graph.node}
    assert set(rewritten) <= exported, f"the export lacks {set(rewritten) - exported}"
    model = dl.read_dl_model(path, type="segmentation" if segmentation else "classification")
    assert dl.get_dl_model_param(model, "num_trainable_params") == sum(p.numel() for p in net.parameters())
    dl.set_dl_model_param(model, "batch_size", BATCH)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((BATCH, size, size, 3)).astype(np.float32)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    if segmentation:
        labels = rng.integers(0, 3, (BATCH, size, size))
        samples = [{"image": images[i], "segmentation_image": labels[i].astype(np.uint8)} for i in range(BATCH)]
    else:
        labels = np.arange(BATCH)
        samples = [{"image": images[i], "image_label_id": int(labels[i])} for i in range(BATCH)]
    dl.set_dl_model_param(model, "learning_rate", learning_rate)
    losses = [dl.train_dl_model_batch(model, samples)["total_loss"] for _ in range(5)]
    expected = _torch_losses(net, batch, torch.from_numpy(labels), 2, torch.float32, learning_rate)
    exact = _torch_losses(net, batch, torch.from_numpy(labels), 2, torch.float64, learning_rate)
    assert losses[0] == pytest.approx(expected[0], rel=1e-5)
    # One SGD step later the loss tests the gradients through the rewrites. Against float64 torch, within
    # 10 times torch's own float32 error (batch norm over few values amplifies rounding) or 1e-5; the
    # setting must be well conditioned (torch's float32 within 1e-4) and the step must move the loss.
    assert abs(expected[1] - exact[1]) <= 1e-4 * abs(exact[1])
    tolerance = max(1e-5 * abs(exact[1]), 10 * abs(expected[1] - exact[1]))
    assert abs(exact[1] - exact[0]) > 10 * tolerance
    assert abs(losses[1] - exact[1]) <= tolerance
    assert np.all(np.isfinite(losses))
    written = path.with_name(f"{path.stem}_written.onnx")
    dl.write_dl_model(model, written)
    kept = onnx.load(written)
    assert set(rewritten) <= {n.op_type for n in kept.graph.node}  # the original operators, not the rewrites
    assert not [n for n in kept.graph.node if any(o.startswith("train_rewrite/") for o in n.output)]
    session = runtime.ort().InferenceSession(str(written), providers=["CPUExecutionProvider"])
    plain = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(batch.numpy())})[0]
    results = dl.apply_dl_model(model, [{"image": images[i]} for i in range(BATCH)])
    if segmentation:
        ours, plain = np.stack([r["segmentation_confidence"] for r in results]), plain.max(axis=1)
    else:
        ours, plain = np.stack([r["classification_confidences"] for r in results]), -np.sort(-plain, axis=1)
    np.testing.assert_allclose(plain, ours, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_tiny_segmenter_with_resize_conv_transpose_layernorm_and_hard_activations(tmp_path: Path,
                                                                                 dynamo: bool) -> None:
    torch.manual_seed(0)
    net = _no_randomness(_TinySegmenter())
    _check_trains_like_torch(net, tmp_path / "tiny.onnx", 32, True, dynamo,
                             ("Resize", "ConvTranspose", "LayerNormalization", "HardSwish", "HardSigmoid"))


@pytest.mark.slow
def test_mobilenet_v3_small(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _no_randomness(torchvision.models.mobilenet_v3_small(weights=None, num_classes=5))
    _check_trains_like_torch(net, tmp_path / "mobilenet_v3_small.onnx", 64, False,
                             rewritten=("HardSwish", "HardSigmoid"))


@pytest.mark.slow
def test_convnext_tiny(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _no_randomness(torchvision.models.convnext_tiny(weights=None, num_classes=5))
    _check_trains_like_torch(net, tmp_path / "convnext_tiny.onnx", 32, False, rewritten=("LayerNormalization",),
                             learning_rate=0.002)


@pytest.mark.slow
def test_lraspp_mobilenet_v3_large(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _no_randomness(SegmentationOut(torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3)))
    _check_trains_like_torch(net, tmp_path / "lraspp.onnx", 64, True, rewritten=("Resize", "HardSwish", "HardSigmoid"))
