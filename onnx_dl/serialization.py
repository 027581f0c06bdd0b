"""Reading and writing model files: ordinary ONNX with the parameters as JSON metadata.

``write_dl_model`` writes a temporary file in the target folder and renames it over the target,
so a crash mid-write leaves the previous file intact. Metadata is parsed as JSON, never evaluated.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from . import __version__
from .errors import DLModelFileError
from .model import DLModel, from_network

METADATA_KEY = "onnx_dl"
FORMAT_VERSION = 1


def bundled_models() -> list[str]:
    """Names of the networks shipped with the package."""
    folder = resources.files("onnx_dl") / "models"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".onnx"))


def resolve(source: str | os.PathLike[str]) -> Path:
    """The file behind ``source``: a path, or the name of a bundled model."""
    path = Path(source)
    if path.exists():
        return path
    name = str(source)
    if os.sep not in name and "/" not in name and not name.endswith(".onnx"):
        bundled = resources.files("onnx_dl") / "models" / f"{name}.onnx"
        if bundled.is_file():
            return Path(str(bundled))
        raise DLModelFileError(f"no model file {name!r} and no bundled model of that name; "
                               f"bundled: {bundled_models()}")
    raise DLModelFileError(f"model file {name!r} does not exist")


def parse(data: bytes, where: str) -> onnx.ModelProto:
    """An ONNX model from bytes, with a clear error for anything else."""
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise DLModelFileError(f"{where}: not an ONNX model ({exc})") from exc
    if not model.HasField("graph") or len(model.graph.node) == 0 or len(model.graph.output) == 0:
        raise DLModelFileError(f"{where}: not an ONNX model (no graph with nodes and outputs)")
    return model


def metadata(model: onnx.ModelProto) -> dict[str, Any] | None:
    """The library's metadata stored in ``model``, or None for a foreign model."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                data = json.loads(prop.value)
            except json.JSONDecodeError as exc:
                raise DLModelFileError(f"metadata {METADATA_KEY!r} is not valid JSON: {exc}") from exc
            if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
                raise DLModelFileError(f"metadata {METADATA_KEY!r}: expected an object with 'params'")
            return data
    return None


def read_dl_model(source: str | os.PathLike[str], type: str | None = None) -> DLModel:
    """Read a model: a path to an ``.onnx`` file or the name of a bundled model.

    A file written by ``write_dl_model`` (or a bundled model) restores all its parameters; a
    foreign ONNX network (one NCHW image input, class scores as first output) needs ``type``.
    """
    path = resolve(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DLModelFileError(f"cannot read model file {str(path)!r}: {exc}") from exc
    model = parse(data, str(path))
    stored = metadata(model)
    params = dict(stored["params"]) if stored else {}
    stored_type = params.pop("type", None)
    if type is not None and stored_type is not None and type != stored_type:
        raise DLModelFileError(f"{str(path)!r} holds a {stored_type} model, type={type!r} was asked for")
    model_type = type or stored_type
    if model_type is None:
        raise DLModelFileError(f"{str(path)!r} is a foreign ONNX model: pass its type, "
                               f"e.g. read_dl_model(path, type='classification')")
    del model.metadata_props[:]
    return from_network(model, model_type, params)


def write_dl_model(model: DLModel, path: str | os.PathLike[str]) -> None:
    """Write ``model`` as an ordinary inference ONNX file with its parameters in the metadata.

    The file ends in class probabilities, so any ONNX runtime gives what ``apply_dl_model``
    gives. Written atomically: a temporary file in the target folder, then a rename.
    """
    with model.lock:
        exported = model.inference_graph()
        params = {k: v for k, v in model.params.items()}
        entry = exported.metadata_props.add()
        entry.key = METADATA_KEY
        entry.value = json.dumps({"format": FORMAT_VERSION, "version": __version__, "params": params})
        write_atomically(Path(path), exported.SerializeToString())


def _file_mode(path: Path) -> int:
    """The mode a replaced file keeps, or what the umask gives a new file."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise DLModelFileError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(temporary, _file_mode(path))
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise DLModelFileError(f"cannot write {str(path)!r}: {exc}") from exc
        raise
