"""The package's layers (README, "Architecture"): a module imports only from its own layer or below."""

from __future__ import annotations

import ast
from pathlib import Path

import onnx_dl

# lowest first; a sub-package counts as one module unless its modules are named (engine.*)
LAYERS = [
    ["errors", "onnx_builder", "system", "version", "engine", "engine.runtime", "model_type", "synthetic"],
    ["solvers"],
    ["params"],
    ["graph"],
    ["losses", "rewrites", "canonical", "batch_axis", "folded_batchnorm", "foreign", "boxes", "rotated_boxes",
     "box_types", "anchors", "pool_gradients", "fast_gradients", "nchwc", "samples", "measures", "score_head", "summary", "ctc"],
    ["training_graph"],
    ["tasks"],  # the model types (tasks/classification.py, ...), registered by tasks/__init__.py
    ["engine.session"],
    ["engine.solver"],
    ["trainer"],
    ["freezing"],
    ["model"],
    ["nets", "serialization", "torch_export"],
    ["tasks.detection_builder", "tasks.multi_label_builder"],
    ["operators"],
    ["evaluation", "dataset", "training", "preprocess", "segmentation", "drawing", "reports",
     "detection_params", "heatmap", "halcon_preprocess", "train_param",
     "distributed"],
    ["cli", "__init__", "__main__"],
]
RANK = {module: rank for rank, modules in enumerate(LAYERS) for module in modules}
PACKAGE = Path(onnx_dl.__file__).parent


def _layer_name(parts: list[str]) -> str | None:
    """The LAYERS entry that module ``parts`` (relative to the package) belongs to: the longest named prefix."""
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in RANK:
            return ".".join(parts[:end])
    return None


def _parts(path: Path) -> list[str]:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts


def _module(path: Path) -> str:
    return _layer_name(_parts(path)) or ".".join(_parts(path))


def _imported(path: Path, node: ast.ImportFrom) -> list[list[str]]:
    """The package-relative modules a relative import names (``from .a import b``: a.b if it is a module, else a)."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
    target = base + (node.module.split(".") if node.module else [])
    found = []
    for alias in node.names:
        candidate = target + [alias.name]
        is_module = (PACKAGE.joinpath(*candidate).with_suffix(".py").exists()
                     or PACKAGE.joinpath(*candidate, "__init__.py").exists())
        found.append(candidate if is_module else target)
    return found


def test_every_module_has_a_layer() -> None:
    missing = sorted({_module(p) for p in PACKAGE.rglob("*.py")} - set(RANK))
    assert not missing, f"add these modules to a layer: {missing}"


def test_no_import_reaches_up_a_layer() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = _module(path)
        for node in ast.walk(ast.parse(path.read_text())):  # also under TYPE_CHECKING: a cycle for any reader
            if not (isinstance(node, ast.ImportFrom) and node.level >= 1):
                continue
            for parts in _imported(path, node):
                name = _layer_name(parts)
                if name is not None and name != module and RANK[name] > RANK[module]:
                    upward.append(f"{path.relative_to(PACKAGE)} imports {'.'.join(parts)}")
    assert not upward, upward


def test_only_the_engine_imports_onnxruntime() -> None:
    """The engine package is the one door to ONNX Runtime (a second engine replaces it alone)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if _parts(path)[0] == "engine":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(PACKAGE)} imports {n}" for n in names if n.split(".")[0] == "onnxruntime"]
        if "import_module(\"onnxruntime" in path.read_text():
            found.append(f"{path.relative_to(PACKAGE)} imports onnxruntime by name")
    assert not found, found


def test_no_import_cycle():
    """No chain of imports (module level or inside functions) leads from a module back to itself."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(_parts(path))
        graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                graph[module].update(".".join(parts) for parts in _imported(path, node) if ".".join(parts) != module)
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path, module, target]
            if target not in state and (cycle := visit(target, [*path, module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            assert cycle is None, " -> ".join(cycle[cycle.index(cycle[-1]):])
