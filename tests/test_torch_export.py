"""onnx_dl.export_torch: the training recipe, written without touching the module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch_parity as tp
from onnx import numpy_helper

import onnx_dl as dl

SIZE = 16


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 4))
    with torch.no_grad():  # statistics a trace in training mode would move
        for layer in (net[1], net[4]):
            layer.running_mean.uniform_(-1.0, 1.0)
            layer.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_writes_batch_norm_and_dynamic_batch_and_leaves_the_module_alone(tmp_path: Path) -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    path = dl.export_torch(net, tmp_path / "net.onnx", SIZE)
    assert not net.training
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["image"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert model.graph.output[0].name == "scores"
    assert not [n for n in model.graph.node if n.op_type == "Identity"]
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 2
    assert sum(n.op_type == "Dropout" for n in model.graph.node) == 1
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for name, value in before.items():
        if name.endswith(("running_mean", "running_var", "weight", "bias")):
            np.testing.assert_array_equal(inits[name], value.numpy(), err_msg=name)


def test_read_model_matches_pytorch_train_mode_and_keeps_dropout(tmp_path: Path) -> None:
    net = _net()
    model = dl.read_dl_model(dl.export_torch(net, tmp_path / "net.onnx", (SIZE, SIZE)), type="classification")
    assert dl.get_dl_model_param(model, "image_dimensions") == [SIZE, SIZE, 3]
    data, _, _ = tp.samples(4, SIZE, 4)
    dl.set_dl_model_param(model, "batch_size", 4)
    first = dl.apply_dl_model(model, data)
    assert first == dl.apply_dl_model(model, data)  # Dropout off in apply
    quiet = tp.without_dropout(net)
    result = tp.compare(quiet, dl.export_torch(quiet, tmp_path / "quiet.onnx", SIZE), SIZE, classes=4)
    assert result["losses"][-1] < result["losses"][0]


def test_bad_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(dl.DLParamError, match="image size"):
        dl.export_torch(_net(), tmp_path / "net.onnx", (0, SIZE))


class _TokenNet(nn.Module):
    """A learned token concatenated to the features, as ViT's class token: Concat(Expand(token), x)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.token = nn.Parameter(torch.randn(1, 1, 4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x).flatten(2).transpose(1, 2)  # (N, L, 4)
        tokens = torch.cat([self.token.expand(x.shape[0], -1, -1), features], dim=1)
        return self.fc(tokens.mean(dim=1) + tokens[:, 0])


def test_a_learned_token_in_a_concat_is_trained(tmp_path: Path) -> None:
    net = _TokenNet()
    model = dl.read_dl_model(dl.export_torch(net, tmp_path / "token.onnx", SIZE), type="classification")
    assert dl.get_dl_model_param(model, "num_trainable_params") == sum(p.numel() for p in net.parameters())
    dl.set_dl_model_param(model, "batch_size", 2)
    rng = np.random.default_rng(0)
    dl.train_dl_model_batch(model, [{"image": rng.normal(0, 1, (SIZE, SIZE, 3)).astype(np.float32),
                                     "image_label_id": i} for i in (0, 1)])
    token = next(numpy_helper.to_array(i) for i in model.network().graph.initializer if i.name == "token")
    assert not np.allclose(token, net.token.detach().numpy())
