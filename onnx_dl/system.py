"""``set_system`` / ``get_system``: process-wide settings of the engine (HALCON's names).

- ``'thread_num'``: intra-op threads of every session created afterwards (default: all cores
  this process may use).
- ``'cudnn_deterministic'``: deterministic kernels where the execution provider offers them
  (ORT's deterministic compute, cuDNN's default algorithm instead of a search).

Sessions already built pick a change up at their next use: the library rebuilds the sessions
(never the training artifacts) whose settings are stale.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .errors import DLParamError

_lock = threading.Lock()
_settings: dict[str, Any] = {}
_generation = 0  # bumped on every change; sessions remember the generation they were built in


def default_thread_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _check_threads(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DLParamError(f"set_system('thread_num'): expected an int >= 1, got {value!r}")
    return value


def _check_bool(value: Any) -> bool:
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    if isinstance(value, bool):
        return value
    raise DLParamError(f"set_system('cudnn_deterministic'): expected True/False or 'true'/'false', got {value!r}")


_CHECKS = {"thread_num": _check_threads, "cudnn_deterministic": _check_bool}
_DEFAULTS = {"thread_num": default_thread_count, "cudnn_deterministic": lambda: False}


def set_system(name: str, value: Any) -> None:
    """Set a process-wide setting ('thread_num' or 'cudnn_deterministic')."""
    global _generation
    if name not in _CHECKS:
        raise DLParamError(f"set_system: unknown setting {name!r}; known: {sorted(_CHECKS)}")
    checked = _CHECKS[name](value)
    with _lock:
        if _settings.get(name, _DEFAULTS[name]()) != checked:
            _settings[name] = checked
            _generation += 1


def get_system(name: str) -> Any:
    """Return a process-wide setting ('thread_num' or 'cudnn_deterministic')."""
    if name not in _CHECKS:
        raise DLParamError(f"get_system: unknown setting {name!r}; known: {sorted(_CHECKS)}")
    with _lock:
        return _settings.get(name, _DEFAULTS[name]())


def generation() -> int:
    """A counter that changes whenever a setting changes."""
    return _generation
