"""Changing ``class_ids`` replaces the classification layer of real torchvision / timm exports.

Each case: the new layer (its weights copied into the PyTorch module) gives PyTorch's loss, the
model trains on a fixed batch, and the written file gives ``apply_dl_model``'s confidences.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

import onnx_dl as dl
from zoo_helpers import (export, images, nn, random_batchnorm, samples, sgd_model, torch, torch_train_loss, train,
                         written_probabilities_match_apply)

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

NEW_CLASSES = [0, 1, 2]


def _new_layer(model: dl.DLModel, weight: str) -> tuple[np.ndarray, np.ndarray]:
    """The replaced layer's weight and bias (a bias the exporter dropped is added, named after the weight)."""
    network = model.network()
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in network.graph.initializer}
    layer = next(n for n in network.graph.node if len(n.input) > 1 and n.input[1] == weight)
    return inits[weight], inits[layer.input[2]]


def _install(layer: nn.Module, weight: np.ndarray, bias: np.ndarray, transpose: bool = False) -> None:
    """Put the new layer's values into a fresh PyTorch layer of the same shape."""
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight.T.copy() if transpose else weight))
        layer.bias.copy_(torch.from_numpy(bias))


def _check(tmp_path, model, net, x, labels, steps=6, factor=0.9):
    """First loss equals PyTorch's (train mode, dropout off) to 1e-5; the loss falls; written = applied."""
    expected = torch_train_loss(net, x, labels)
    losses = train(model, samples(x, labels), steps)
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < factor * losses[0], losses
    written_probabilities_match_apply(model, tmp_path / "written.onnx", x)


@pytest.mark.parametrize("recipe", ["folded", "dynamo"])
def test_squeezenet_conv_relu_pool_head(tmp_path, recipe):
    """Conv 1x1 -> ReLU -> GlobalAveragePool -> Flatten (dynamo: ReduceMean -> Reshape(x, [-1, K]), no bias)."""
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(weights=None, num_classes=10)
    path = export(net, tmp_path / "squeezenet.onnx", 64, recipe)
    model = sgd_model(path, 2, learning_rate=0.001)
    dl.set_dl_model_param(model, "class_ids", NEW_CLASSES)
    weight, bias = _new_layer(model, "classifier.1.weight")
    assert weight.shape == (3, 512, 1, 1) and bias.shape == (3,) and not bias.any()
    assert 0.005 < weight.std() < 0.015  # Normal(0, 0.01), as for any new classifier
    net.classifier[1] = nn.Conv2d(512, 3, 1)
    _install(net.classifier[1], weight, bias)
    _check(tmp_path, model, net.eval(), images(2, 64), [0, 2], factor=0.99)


def test_mobilenet_v2_dropout_linear_head(tmp_path):
    """Dropout -> Linear (torchvision mobilenet / efficientnet / vgg classifiers), training-mode export."""
    torch.manual_seed(0)
    net = random_batchnorm(torchvision.models.mobilenet_v2(weights=None, num_classes=10))
    net.classifier[0].p = 0.0  # dropout off, so PyTorch's loss is deterministic
    path = export(net, tmp_path / "mobilenet.onnx", 64)
    model = sgd_model(path, 2, learning_rate=0.01)
    dl.set_dl_model_param(model, "class_ids", NEW_CLASSES)
    net.classifier[1] = nn.Linear(1280, 3)
    _install(net.classifier[1], *_new_layer(model, "classifier.1.weight"))
    _check(tmp_path, model, net, images(2, 64), [0, 2])


@pytest.mark.parametrize("name, head", [
    ("resnet18", "fc"), ("efficientnet_b0", "classifier"),
    ("mobilenetv3_small_100", "classifier"),  # pool -> conv_head -> HardSwish -> Linear
])
def test_timm_pool_flatten_linear_head(tmp_path, name, head):
    """timm's SelectAdaptivePool2d (GlobalAveragePool -> Flatten) -> Linear (mobilenetv3: with a conv_head
    and HardSwish between the pool and the Linear)."""
    torch.manual_seed(0)
    net = random_batchnorm(timm.create_model(name, pretrained=False, num_classes=10))
    path = export(net, tmp_path / f"{name}.onnx", 64)
    model = sgd_model(path, 2, learning_rate=0.01)
    dl.set_dl_model_param(model, "class_ids", NEW_CLASSES)
    layer = getattr(net, head)
    setattr(net, head, nn.Linear(layer.in_features, 3))
    _install(getattr(net, head), *_new_layer(model, f"{head}.weight"))
    _check(tmp_path, model, net, images(2, 64), [0, 2])


def test_head_with_channel_mixing_after_it_is_refused(tmp_path):
    """A node the search does not walk through (here a MaxPool between the last Conv and the pooled
    scores) is refused with its name; the model keeps its classes."""
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()
    model = sgd_model(export(net, tmp_path / "plain.onnx", 8, "folded"), 2)
    dl.set_dl_model_param(model, "class_ids", NEW_CLASSES)  # the Gemm is the head: accepted
    net2 = nn.Sequential(nn.Conv2d(3, 5, 1), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    model2 = sgd_model(export(net2, tmp_path / "pool.onnx", 8, "folded"), 2)
    with pytest.raises(dl.DLModelFileError, match="MaxPool"):
        dl.set_dl_model_param(model2, "class_ids", NEW_CLASSES)
    assert len(dl.get_dl_model_param(model2, "class_ids")) == 5
