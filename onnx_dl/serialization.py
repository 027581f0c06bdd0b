"""Reading and writing model files: ordinary ONNX with the parameters as JSON metadata.

``write_dl_model`` writes a temporary file in the target folder and renames it over the target,
so a crash mid-write leaves the previous file intact. Metadata is parsed as JSON, never evaluated.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .errors import DLModelFileError, DLParamError
from .model import DLModel, from_network
from .params import FORMAT_VERSION, RESERVED_METADATA_PREFIX, training_state
from .tasks import detection_postprocess
from .version import VERSION

MAX_FILE_SIZE = 2**31  # bytes read without explicit consent (max_file_size=None)
METADATA_KEY = "onnx_dl"  # this key and SOLVER_KEY start with RESERVED_METADATA_PREFIX: never user meta_data
SOLVER_KEY = "onnx_dl.solver_state"  # base64 of a NumPy .npz archive: "<parameter>/<state>" -> array


def bundled_folder() -> Path | None:
    """The folder holding the bundled ``*.onnx`` networks, or None when none is found.

    The files live in the repository's top-level ``models/``. A wheel (and an editable install)
    ships them as the package data ``onnx_dl.models`` (pyproject.toml maps that package to
    ``models/``), so an installed package has them in ``onnx_dl/models``. A source checkout
    imported straight from the repository (PYTHONPATH, or pytest run from the repository root as
    CI does after installing) has no ``onnx_dl/models``: there the folder is ``models/`` beside
    the package, taken only when ``pyproject.toml`` marks that folder as this repository.
    """
    package = Path(__file__).resolve().parent
    candidates = [package / "models"]
    if (package.parent / "pyproject.toml").is_file():
        candidates.append(package.parent / "models")
    return next((folder for folder in candidates if any(folder.glob("*.onnx"))), None)


def bundled_models() -> list[str]:
    """Names of the networks shipped with the package."""
    folder = bundled_folder()
    return [] if folder is None else sorted(p.stem for p in folder.glob("*.onnx"))


def resolve(source: str | os.PathLike[str]) -> Path:
    """The file behind ``source``: a path, or the name of a bundled model."""
    path = Path(source)
    if path.exists():
        return path
    name = str(source)
    if os.sep not in name and "/" not in name and not name.endswith(".onnx"):
        folder = bundled_folder()
        if folder is not None and (folder / f"{name}.onnx").is_file():
            return folder / f"{name}.onnx"
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


def encode_solver_state(state: dict[str, dict[str, np.ndarray]]) -> str:
    """The solver state as base64 text of an .npz archive (keys "<parameter>/<state>")."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{name}/{kind}": value for name, kinds in state.items() for kind, value in kinds.items()})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_solver_state(text: str) -> dict[str, dict[str, np.ndarray]]:
    """Inverse of :func:`encode_solver_state`; never unpickles."""
    try:
        archive = np.load(io.BytesIO(base64.b64decode(text, validate=True)), allow_pickle=False)
        state: dict[str, dict[str, np.ndarray]] = {}
        for key in archive.files:
            name, _, kind = key.rpartition("/")
            state.setdefault(name, {})[kind] = np.asarray(archive[key], np.float32)
        return state
    except Exception as exc:
        raise DLModelFileError(f"metadata {SOLVER_KEY!r} is not a valid solver state: {exc}") from exc


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


def user_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The parameter ``meta_data``: every entry of the ONNX ``metadata_props`` but the library's own (keys
    starting with ``onnx_dl``), so a foreign file's metadata is read as well."""
    return {prop.key: prop.value for prop in model.metadata_props if not prop.key.startswith(RESERVED_METADATA_PREFIX)}


def _inside(path: Path, folder: Path) -> bool:
    resolved = path.resolve()
    return resolved == folder or folder in resolved.parents


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Load tensors stored beside the model, refusing any location outside the model's folder."""
    folder = path.parent.resolve()
    # the same tensors load_external_data_for_model walks, subgraphs included (onnx is pinned < 1.18)
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = folder / location
        if not location or os.path.isabs(location) or ".." in Path(location).parts or not _inside(target, folder):
            raise DLModelFileError(f"{str(path)!r}: tensor {tensor.name!r} refers to external data {location!r} "
                                   f"outside the model's folder; refused")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(folder))
    except (OSError, ValueError) as exc:
        raise DLModelFileError(f"{str(path)!r}: cannot read its external data: {exc}") from exc


def file_params(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The model parameters stored in a file written by :func:`write_dl_model` (with or without
    ``postprocess``), e.g. for :func:`onnx_dl.tasks.detection_postprocess.finish_oriented`; raise
    :class:`DLModelFileError` for a file without them."""
    path = resolve(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DLModelFileError(f"cannot read model file {str(path)!r}: {exc}") from exc
    stored = metadata(parse(data, str(path)))
    if stored is None:
        raise DLModelFileError(f"{str(path)!r} holds no onnx_dl parameters (not written by write_dl_model)")
    return dict(stored["params"])


def read_dl_model(source: str | os.PathLike[str], type: str | None = None,
                  max_file_size: int | None = MAX_FILE_SIZE) -> DLModel:
    """Read a model: a path to an ``.onnx`` file or the name of a bundled model.

    A file written by ``write_dl_model`` (or a bundled model) restores all its parameters; a
    foreign ONNX network (one NCHW image input, class scores as first output) needs ``type``.
    Untrusted files are read safely: a symbolic link must stay inside its folder, external data
    must lie inside the model's folder, a file over ``max_file_size`` bytes needs
    ``max_file_size=None``; metadata is parsed as JSON and NumPy archives without pickle.
    """
    path = resolve(source)
    if path.is_symlink() and not _inside(path, path.parent.resolve()):
        raise DLModelFileError(f"{str(path)!r} is a symbolic link to {str(path.resolve())!r}, outside its folder; "
                               f"refused (pass the real path if you trust it)")
    try:
        size = path.stat().st_size
        if max_file_size is not None and size > max_file_size:
            raise DLModelFileError(f"{str(path)!r} has {size} bytes, more than max_file_size={max_file_size}; "
                                   f"pass max_file_size=None to read it anyway")
        data = path.read_bytes()
    except OSError as exc:
        raise DLModelFileError(f"cannot read model file {str(path)!r}: {exc}") from exc
    model = parse(data, str(path))
    _load_external_data(model, path)
    stored = metadata(model)
    if stored and stored.get("postprocessed"):
        raise DLModelFileError(f"{str(path)!r} holds a detector exported with postprocess=True (it ends in final "
                               f"boxes): it runs in any ONNX runtime but cannot be trained; read the file written "
                               f"without postprocess")
    params = dict(stored["params"]) if stored else {}
    stored_type = params.pop("type", None)
    if type is not None and stored_type is not None and type != stored_type:
        raise DLModelFileError(f"{str(path)!r} holds a {stored_type} model, type={type!r} was asked for")
    model_type = type or stored_type
    if model_type is None:
        raise DLModelFileError(f"{str(path)!r} is a foreign ONNX model: pass its type, "
                               f"e.g. read_dl_model(path, type='classification')")
    solver = stored.get("solver") if stored else None
    state = next((decode_solver_state(p.value) for p in model.metadata_props if p.key == SOLVER_KEY), None)
    params["meta_data"] = user_metadata(model)
    del model.metadata_props[:]
    result = from_network(model, model_type, params)
    if isinstance(solver, dict) and state is not None:
        result.resume_solver(str(solver.get("kind")), int(solver.get("steps", 0)), state)
    return result


def write_dl_model(model: DLModel, path: str | os.PathLike[str], include_solver_state: bool = True,
                   postprocess: bool = False) -> None:
    """Write ``model`` as an ordinary inference ONNX file with its parameters in the metadata.

    A classifier's or segmentation model's file ends in class probabilities, a detector's in its
    heads (class scores and box deltas per level), so any ONNX runtime gives what
    ``apply_dl_model`` computes from. Unless ``include_solver_state`` is False, the solver state
    (SGD velocity or Adam moments and step count) goes into the metadata too (key
    ``onnx_dl.solver_state``, an .npz archive in base64), so ``read_dl_model`` continues training
    exactly where it stopped; so does the training state kept as read-only parameters (a
    detector's ``positive_anchor_average``), which is left out with the solver state.

    ``postprocess=True`` (detectors only) writes instead a graph ending in the final boxes:
    decoding, ``min_confidence``, per-class and class-agnostic ``NonMaxSuppression`` and
    ``max_num_detections``, with the model's current values (outputs: see
    :mod:`onnx_dl.tasks.detection_postprocess`); its boxes match ``apply_dl_model``'s. Such a file cannot be
    read back for training. The parameter ``meta_data`` is written as ONNX ``metadata_props`` entries of
    its own (one per key), which ``read_dl_model`` reads back. Written atomically: a temporary file in the
    target folder, then a rename.
    """
    with model.lock:
        params = {k: v for k, v in model.params.items() if include_solver_state or k not in training_state(model.params["type"])}
        meta_data = params.pop("meta_data", {})  # written as metadata_props of their own
        info: dict[str, Any] = {"format": FORMAT_VERSION, "version": VERSION, "params": params}
        if postprocess:
            if model.params["type"] != "detection":
                raise DLParamError(f"write_dl_model: postprocess=True applies to detection models, not to a "
                                   f"{model.params['type']} model")
            exported = detection_postprocess.postprocess_graph(model.network(), model.params)
            info["postprocessed"] = True
            include_solver_state = False
        else:
            exported = model.inference_graph()
        solver = model.solver_state() if include_solver_state else None
        if solver is not None:
            kind, steps, state = solver
            info["solver"] = {"kind": kind, "steps": steps}
            exported.metadata_props.add(key=SOLVER_KEY, value=encode_solver_state(state))
        exported.metadata_props.add(key=METADATA_KEY, value=json.dumps(info))
        for key, value in meta_data.items():
            exported.metadata_props.add(key=key, value=value)
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
