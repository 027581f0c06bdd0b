"""Batch norm folded by the exporter is reported at read time, and only then.

Alarms: torchvision networks exported from eval() with constant folding (TorchScript) and by the
dynamo exporter. No alarm: squeezenet1_1 (no batch norm) through both exporters, the recipes that
keep batch norm, the library's bundled networks and the hand-written exporter-style test models.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest
import torch
import torchvision
import torch_parity as tp
from foreign_models import dropout_style, keras_style, torch_segmentation, torch_style

import onnx_dl as dl

SIZE = 32


def _export(arch: str, recipe: str, path: Path) -> Path:
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    if recipe == "dynamo":
        torch.onnx.export(net, (torch.zeros(2, 3, SIZE, SIZE),), str(path), dynamo=True, input_names=["image"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        return path
    return tp.export(net, path, recipe, SIZE)


def _read_quietly(path: Path | str, model_type: str | None = "classification") -> dl.DLModel:
    """Read with DLFoldedBatchNormWarning turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", dl.DLFoldedBatchNormWarning)
        return dl.read_dl_model(path, type=model_type) if model_type else dl.read_dl_model(path)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["eval_fold", "dynamo"])
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_folded_exports_warn_with_the_recipe(tmp_path: Path, arch: str, recipe: str) -> None:
    path = _export(arch, recipe, tmp_path / f"{arch}.onnx")
    assert not [n for n in onnx.load(path).graph.node if n.op_type == "BatchNormalization"]
    with pytest.warns(dl.DLFoldedBatchNormWarning, match=r"export_torch.*TrainingMode.TRAINING"):
        model = dl.read_dl_model(path, type="classification")
    assert dl.get_dl_model_param(model, "num_classes") == 1000  # still read: inference or a frozen backbone


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["eval_fold", "dynamo", "eval_nofold", "training"])
def test_squeezenet_and_kept_batch_norm_do_not_warn(tmp_path: Path, recipe: str) -> None:
    _read_quietly(_export("squeezenet1_1", recipe, tmp_path / "squeezenet.onnx"))
    if recipe in ("eval_nofold", "training"):
        _read_quietly(_export("resnet18", recipe, tmp_path / "resnet18.onnx"))


def test_small_folded_export_warns_and_kept_one_does_not(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 3))
    with pytest.warns(dl.DLFoldedBatchNormWarning, match="'/0/Conv'"):
        dl.read_dl_model(tp.export(net, tmp_path / "folded.onnx", "eval_fold", 16), type="classification")
    _read_quietly(tp.export(net, tmp_path / "kept.onnx", "training", 16))


@pytest.mark.parametrize("name", dl.bundled_models())
def test_bundled_networks_do_not_warn(name: str) -> None:
    _read_quietly(name, None)


@pytest.mark.parametrize("make, model_type", [(torch_style, "classification"), (keras_style, "classification"),
                                              (dropout_style, "classification"),
                                              (torch_segmentation, "segmentation")])
def test_exporter_style_test_models_do_not_warn(tmp_path: Path, make, model_type: str) -> None:
    path = tmp_path / "net.onnx"
    onnx.save(make(), path)
    _read_quietly(path, model_type)
