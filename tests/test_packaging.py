"""Packaging: the bundled networks live in the top-level models/, the wheel ships them as
onnx_dl/models, an installed copy loads them, and tools/build_models.py rebuilds them byte for byte.

The wheel is built from a copy of the sources without build isolation and without an index, so the
test needs no network: it takes setuptools from the running interpreter (the test extra has it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import onnx_dl as dl

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
BUNDLED = sorted(p.name for p in MODELS.glob("*.onnx"))
SETUPTOOLS_MIN = 77  # pyproject.toml's [build-system] requires


def _setuptools_major() -> int | None:
    try:
        return int(metadata.version("setuptools").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built offline from a copy of pyproject.toml, README.md, onnx_dl/ and models/."""
    major = _setuptools_major()  # the test extra installs it: a missing one is a broken install, not a skip
    assert major is not None and major >= SETUPTOOLS_MIN, (
        f"building the wheel offline needs setuptools>={SETUPTOOLS_MIN} in this interpreter (found {major}); "
        f"install the test extra")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "onnx_dl", source / "onnx_dl", ignore=ignore)
    shutil.copytree(MODELS, source / "models", ignore=ignore)
    out = work / "dist"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "-q", "-w", str(out), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=work)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    wheels = list(out.glob("onnx_dl-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_bundled_networks_come_from_models_folder() -> None:
    assert BUNDLED == ["classifier_compact.onnx", "ocr_recognition_compact.onnx", "segmentation_compact.onnx"]
    assert not (ROOT / "onnx_dl" / "models").exists(), "the bundled networks live in the top-level models/"
    assert dl.bundled_models() == [name[:-5] for name in BUNDLED]


def test_wheel_ships_the_bundled_networks_and_every_module(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in BUNDLED:
            assert archive.read(f"onnx_dl/models/{name}") == (MODELS / name).read_bytes(), name
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"onnx_dl"}, tops  # no top-level models/
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "onnx_dl").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules - names == set(), "packages missing from pyproject.toml's [tool.setuptools] packages"
    assert "onnx_dl/py.typed" in names


def test_installed_wheel_loads_a_bundled_network(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    script = textwrap.dedent(f"""
        from pathlib import Path
        import onnx_dl as dl
        assert Path(dl.__file__).resolve().is_relative_to(Path({str(site.resolve())!r})), dl.__file__
        assert dl.bundled_models() == {[name[:-5] for name in BUNDLED]!r}, dl.bundled_models()
        model = dl.read_dl_model("classifier_compact")
        assert dl.get_dl_model_param(model, "image_dimensions") == [224, 224, 3]
        print("ok")
    """)
    # onnx_dl from the unpacked wheel only; its dependencies from this interpreter's site-packages
    env = {**os.environ, "PYTHONPATH": str(site)}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=outside, env=env)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), f"{done.stdout}\n{done.stderr}"


def test_build_models_rebuilds_the_bundled_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """models/ is what tools/build_models.py writes: rerun it after changing onnx_dl/nets.py."""
    spec = importlib.util.spec_from_file_location("build_models", ROOT / "tools" / "build_models.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.MODELS == MODELS
    monkeypatch.setattr(tool, "MODELS", tmp_path)
    tool.main()
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == BUNDLED
    for name in BUNDLED:
        assert (tmp_path / name).read_bytes() == (MODELS / name).read_bytes(), \
            f"{name} differs from a fresh build: run python tools/build_models.py"
