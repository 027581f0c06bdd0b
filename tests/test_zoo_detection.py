"""create_dl_model_detection on torchvision exports: docks on the backbone's levels 2..4 and trains."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

import onnx_dl as dl
from onnx_dl import graph as g
from zoo_helpers import export, random_batchnorm, torch

torchvision = pytest.importorskip("torchvision")

SIZE = 64


def _batch() -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"image": rng.standard_normal((SIZE, SIZE, 3)).astype(np.float32),
             "bbox_row1": np.array([4.0, 20.0]), "bbox_col1": np.array([6.0, 30.0]),
             "bbox_row2": np.array([30.0, 50.0]), "bbox_col2": np.array([28.0, 60.0]),
             "bbox_label_id": np.array([0, 1])} for _ in range(2)]


@pytest.mark.parametrize("name", [
    "resnet18", "mobilenet_v2",
    "efficientnet_b0",  # SiLU and squeeze-and-excitation gates (GlobalAveragePool inside every block)
    "convnext_tiny",  # LayerNormalization (trained through its rewrite)
])
def test_zoo_backbone_docks_on_its_levels_and_trains(tmp_path, name):
    torch.manual_seed(0)
    path = export(random_batchnorm(getattr(torchvision.models, name)(weights=None, num_classes=10)),
                  tmp_path / f"{name}.onnx", SIZE)
    model = dl.create_dl_model_detection(str(path), 2, {"image_width": SIZE, "image_height": SIZE,
                                                        "capacity": "low", "batch_size": 2, "learning_rate": 0.001})
    docking = dl.get_dl_model_param(model, "backbone_docking_layers")
    shapes = g.tensor_shapes(g.with_input_shape(onnx.load(path), [1, 3, SIZE, SIZE]))
    assert [shapes[t][2] for t in docking] == [SIZE // 4, SIZE // 8, SIZE // 16]  # levels 2, 3, 4 of the backbone
    assert all(shapes[t][1] > 16 for t in docking)  # not the stem
    losses = [float(dl.train_dl_model_batch(model, _batch())["total_loss"]) for _ in range(8)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.9 * losses[0], losses
