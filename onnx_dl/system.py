"""``set_system`` / ``get_system``: process-wide settings of the engine (HALCON's names).

- ``'thread_num'``: intra-op threads of every session created afterwards (default: all cores
  this process may use).
- ``'cudnn_deterministic'``: deterministic kernels where the execution provider offers them
  (ORT's deterministic compute, cuDNN's default algorithm instead of a search).
- ``'seed_rand'``: the seed (an int >= 0) of the library's random choices when a call is given
  none: ``split_dl_dataset``, ``augment_dl_samples`` and ``train_dl_model`` with ``seed=None`` (their
  default) read it at the call. Default :data:`DEFAULT_SEED` = 42; HALCON's own default is not in the
  reference sheets (unknown), 42 is the seed ``split_dl_dataset`` always defaulted to. A seed passed
  explicitly wins and gives the same result as before this setting existed.

Sessions already built pick a change of ``thread_num`` or ``cudnn_deterministic`` up at their next
use: the library rebuilds the sessions (never the training artifacts) whose settings are stale.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

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


DEFAULT_SEED = 42  # 'seed_rand' until set (HALCON's default is unknown)


def _check_seed(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DLParamError(f"set_system('seed_rand'): expected an int >= 0, got {value!r}")
    return int(value)


_CHECKS = {"thread_num": _check_threads, "cudnn_deterministic": _check_bool, "seed_rand": _check_seed}
_DEFAULTS = {"thread_num": default_thread_count, "cudnn_deterministic": lambda: False,
             "seed_rand": lambda: DEFAULT_SEED}
_SESSION_SETTINGS = ("thread_num", "cudnn_deterministic")  # the settings sessions are built with


def set_system(name: str, value: Any) -> None:
    """Set a process-wide setting ('thread_num', 'cudnn_deterministic' or 'seed_rand')."""
    global _generation
    if name not in _CHECKS:
        raise DLParamError(f"set_system: unknown setting {name!r}; known: {sorted(_CHECKS)}")
    checked = _CHECKS[name](value)
    with _lock:
        if _settings.get(name, _DEFAULTS[name]()) != checked:
            _settings[name] = checked
            if name in _SESSION_SETTINGS:  # a new seed leaves the sessions as they are
                _generation += 1


def seed(explicit: Any = None) -> Any:
    """``explicit`` unless it is None, else the 'seed_rand' setting: the seed of a call given none."""
    return get_system("seed_rand") if explicit is None else explicit


def get_system(name: str) -> Any:
    """Return a process-wide setting ('thread_num', 'cudnn_deterministic' or 'seed_rand')."""
    if name not in _CHECKS:
        raise DLParamError(f"get_system: unknown setting {name!r}; known: {sorted(_CHECKS)}")
    with _lock:
        return _settings.get(name, _DEFAULTS[name]())


def generation() -> int:
    """A counter that changes whenever a setting changes."""
    return _generation
