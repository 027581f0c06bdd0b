"""The benchmarks' PyTorch peer (``tools/onnx_to_torch.py`` through ``tools/benchlib``) translates every
training graph onnx_dl builds for the cases of ``tools/bench.py`` and computes the same losses over the
checked steps (an operator the peer cannot translate would otherwise first show as a benchmark that
dies in its setup)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

import onnx_dl as dl

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from benchlib.cases import CASES, LOSS_TOLERANCE, check_losses  # noqa: E402
from benchlib.onnx_dl_side import OnnxDLSide  # noqa: E402
from benchlib.torch_side import TorchSide  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_threads():
    """The sides set both engines' thread counts process-wide: put them back for the other tests."""
    ours, theirs = dl.get_system("thread_num"), torch.get_num_threads()
    yield
    dl.set_system("thread_num", ours)
    torch.set_num_threads(theirs)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_peer_computes_onnx_dls_losses(name: str, solver: str) -> None:
    case = dataclasses.asdict(dataclasses.replace(CASES[name], size=64, batch=2))
    ours = OnnxDLSide().setup(case, solver, threads=1)
    theirs = TorchSide().setup(case, solver, threads=1)
    assert len(ours["losses"]) == len(theirs["losses"]) >= 2
    assert set(ours["losses"][0]) == set(theirs["losses"][0])
    assert check_losses(ours["losses"], theirs["losses"], name) <= LOSS_TOLERANCE
