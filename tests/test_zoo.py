"""The torchvision zoo through every common export recipe (tests/zoo.py): where the exported graph
keeps what PyTorch trains, onnx_dl trains it like PyTorch; where the exporter folded batch norm away,
the user is told when the model is read; nothing ends in a crash or an engine error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import zoo

import onnx_dl as dl

CASES = [(name, recipe) for name in zoo.NETWORKS for recipe in zoo.RECIPES]


def _trains_like_pytorch(result: zoo.CaseResult) -> None:
    assert result.stage == "done", (result.stage, result.refused)
    assert not result.warned, result.warned
    assert result.params_onnx_dl == result.params_torch
    assert result.loss_matches, (result.loss_onnx_dl, result.loss_torch, result.loss_torch64)
    assert all(math.isfinite(loss) for loss in result.losses), result.losses
    # the step lowers the loss as PyTorch's does (zoo.STEP_DECREASE): an untrained layer or a wrong gradient
    # moves the decrease by its share of |g|^2, float32 noise by far less (the exact numbers: tools/zoo_matrix.py)
    assert result.step_matches, (result.step_decrease_rel_diff, result.step_decrease_rel_diff64,
                                 result.torch_float32_step_error)
    assert result.written_vs_apply <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("name", "recipe"), CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_zoo(tmp_path: Path, name: str, recipe: str) -> None:
    result = zoo.run_case(name, recipe, tmp_path)
    assert "DLRuntimeError" not in result.refused, result.refused  # never an engine error
    keeps_everything = zoo.RECIPES[recipe] or not zoo.NETWORKS[name].has_batch_norm
    if recipe == "dynamo_static" and result.stage == "read" and result.refused:
        # a batch the exporter baked in that onnx_dl cannot prove free: refused when the batch size is set
        assert result.stage == "read" and result.refused.startswith("DLParamError"), result.refused
        assert "batch" in result.refused
        return
    if keeps_everything:
        _trains_like_pytorch(result)
    else:  # batch norm folded into the convolutions: a different network, and the user is told so
        assert result.stage != "export"
        assert any("batch norm" in w.lower() and "export_torch" in w for w in result.warned), result.warned


def test_folded_batch_norm_warning_is_a_user_warning() -> None:
    assert issubclass(dl.DLFoldedBatchNormWarning, UserWarning)
