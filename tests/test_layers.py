"""The package's layers (README, "Architecture"): a module imports only from its own layer or below."""

from __future__ import annotations

import ast
from pathlib import Path

import onnx_dl

# lowest first; a sub-package counts as one module
LAYERS = [
    ["errors", "onnx_builder", "_ort", "system"],
    ["solvers"],
    ["params"],
    ["graph"],
    ["losses", "rewrites", "canonical", "batch_axis", "folded_batchnorm", "foreign", "boxes", "anchors",
     "pool_gradients", "fast_gradients", "samples"],
    ["training_graph"],
    ["classification", "segmentation", "detection", "detection_export"],
    ["backend"],
    ["optimizers"],
    ["trainer"],
    ["freezing"],
    ["model"],
    ["nets", "serialization", "torch_export"],
    ["detector"],
    ["operators"],
    ["evaluation", "dataset", "synthetic", "training", "preprocess"],
    ["cli", "__init__", "__main__"],
]
RANK = {module: rank for rank, modules in enumerate(LAYERS) for module in modules}
PACKAGE = Path(onnx_dl.__file__).parent


def _module(path: Path) -> str:
    return path.stem if path.parent == PACKAGE else path.relative_to(PACKAGE).parts[0]


def test_every_module_has_a_layer() -> None:
    missing = sorted({_module(p) for p in PACKAGE.rglob("*.py")} - set(RANK))
    assert not missing, f"add these modules to a layer: {missing}"


def test_no_import_reaches_up_a_layer() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = _module(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level >= 1):
                continue
            if node.level == 1 and path.parent != PACKAGE:
                continue  # inside a sub-package: its own modules
            names = [node.module.split(".")[0]] if node.module else [alias.name for alias in node.names]
            upward += [f"{path.relative_to(PACKAGE)} imports {name}" for name in names
                       if name in RANK and RANK[name] > RANK[module]]
    assert not upward, upward
