"""Average pooling trains (the engine's AveragePoolGrad killed the process), checked against PyTorch.

densenet121's transitions average-pool; before the rewrite in :mod:`onnx_dl.pool_gradients` its
first training step died with SIGFPE, or (with constant folding) failed in a broadcast.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from zoo_helpers import (export, images, nn, random_batchnorm, samples, sgd_model, torch, torch_train_loss, train,
                         written_probabilities_match_apply)

torchvision = pytest.importorskip("torchvision")

POOLS = [  # kernel, stride, padding, ceil_mode, count_include_pad
    (2, 2, 0, False, True),
    (3, 2, 1, False, True),
    (3, 2, 1, False, False),
    (3, 2, 1, True, False),
    (3, 2, 1, True, True),
    (3, 2, 0, True, True),
    (3, 1, 1, False, False),
]


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode, include_pad", POOLS)
def test_average_pool_gradient_matches_torch(tmp_path, kernel, stride, padding, ceil_mode, include_pad):
    """Loss and the gradient reaching the conv below the pool (one SGD step, lr 1) equal torch's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d(kernel, stride, padding, ceil_mode, include_pad),
                        nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    size = 9
    net(torch.zeros(1, 3, size, size))
    path = export(net, tmp_path / "pool.onnx", size)
    model = sgd_model(path, 2, learning_rate=1.0, class_ids=[0, 1, 2])
    x, labels = images(2, size), [0, 2]
    loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x).permute(0, 3, 1, 2)), torch.tensor(labels))
    loss.backward()
    before = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    assert train(model, samples(x, labels), 1)[0] == pytest.approx(float(loss), rel=1e-5)
    after = {i.name: onnx.numpy_helper.to_array(i) for i in model.network().graph.initializer}
    for name in ("0.weight", "0.bias"):
        grad = dict(net.named_parameters())[name].grad.numpy()
        np.testing.assert_allclose(before[name] - after[name], grad, rtol=1e-5, atol=1e-6)
    assert "AveragePool" in {n.op_type for n in model.network().graph.node}  # the written graph keeps its pool


def _tiny_densenet():
    """torchvision's DenseNet (dense blocks, transitions with AvgPool), with few, thin layers."""
    torch.manual_seed(0)
    return random_batchnorm(torchvision.models.DenseNet(growth_rate=4, block_config=(2, 2, 2), num_init_features=8,
                                                        bn_size=2, num_classes=3))


def test_tiny_densenet_matches_torch_train_and_trains(tmp_path):
    """Training-mode export: first loss equals torch train() to 1e-5, the loss falls over 6 steps,
    and the written file gives apply_dl_model's confidences."""
    net = _tiny_densenet()
    path = export(net, tmp_path / "densenet.onnx", 32)
    model = sgd_model(path, 2, learning_rate=0.05)
    x, labels = images(2, 32), [0, 2]
    expected = torch_train_loss(net, x, labels)
    losses = train(model, samples(x, labels), 6)
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.7 * losses[0]
    written_probabilities_match_apply(model, tmp_path / "written.onnx", x)


@pytest.mark.parametrize("recipe", ["folded", "dynamo"])
def test_tiny_densenet_other_recipes_train(tmp_path, recipe):
    """Constant folding (the ReluGrad rewrite met the pool gradient's batch-0 tensor there) and dynamo."""
    path = export(_tiny_densenet(), tmp_path / "densenet.onnx", 32, recipe)
    model = sgd_model(path, 2, learning_rate=0.05)
    losses = train(model, samples(images(2, 32), [0, 2]), 6)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
def test_densenet121_matches_torch_train(tmp_path):
    """torchvision densenet121 at 64x64, batch 2: first loss equals torch train() to 1e-5, 5 finite steps.

    (At 32x32 the last block sees 1x1 maps: BN over two values per channel makes the loss
    ill-conditioned, torch's own float32 and float64 losses differ by 19 %.)
    """
    torch.manual_seed(0)
    net = random_batchnorm(torchvision.models.densenet121(weights=None, num_classes=3))
    path = export(net, tmp_path / "densenet121.onnx", 64)
    model = sgd_model(path, 2)
    x, labels = images(2, 64), [0, 2]
    expected = torch_train_loss(net, x, labels)
    losses = train(model, samples(x, labels), 5)
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    assert all(math.isfinite(v) for v in losses)
