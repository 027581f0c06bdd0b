"""The worker side of ``tools/bench.py`` that trains with onnx_dl's ``train_dl_model_batch``.

Never imports torch (its worker blocks the import). The engine's share of a step is read from
``onnx_dl.engine.runtime.COUNTERS`` (the wall time of the training session's forward+backward runs and
of the solver's updates), reset before every step; the rest of the step is "outside" the engine:
collation, checks, Python.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from .cases import CHECK_STEPS, Case, prepare
from .workers import peak_rss_mb, timed_steps


def add_training_session_config(entries: dict[str, str]) -> None:
    """The bench's knob ``--session-config``: add ONNX Runtime session config entries to the options of
    every training session built from now on (the solver's update session and inference sessions keep
    theirs).

    The training session takes its options from ``onnx_dl.engine.session.session_options`` (the name
    that module imports from ``runtime``), so that name is replaced by a wrapper of the original.
    """
    from onnx_dl.engine import session

    make_options = getattr(session, "session_options", None)
    if make_options is None:
        raise SystemExit("--session-config: onnx_dl.engine.session no longer takes its options from session_options")

    def session_options(*args: Any, **kwargs: Any) -> Any:
        options = make_options(*args, **kwargs)
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        return options

    session.session_options = session_options


class OnnxDLSide:
    """Worker side running ``train_dl_model_batch`` on the case's fixed batch."""

    def setup(self, case: dict[str, Any], solver: str, threads: int,
              session_config: dict[str, str] | None = None) -> dict[str, Any]:
        """Import (timed), build the model, run the checked steps (the first builds the artifacts and
        sessions); returns their times and losses."""
        start = time.perf_counter()
        import onnx_dl as dl
        from onnx_dl.engine import runtime
        runtime.training()  # the engine import, timed apart from the first step
        import_s = time.perf_counter() - start
        if session_config:
            add_training_session_config(session_config)
        dl.set_system("thread_num", threads)
        self.dl, self.counters = dl, runtime.COUNTERS
        self.model, self.samples = prepare(Case(**case), solver)
        losses, times = [], []
        for _ in range(CHECK_STEPS):
            start = time.perf_counter()
            losses.append(self.step())
            times.append(time.perf_counter() - start)
        self.trainer = self.model.trainer()
        return {"import_s": import_s, "first_step_s": times[0], "second_step_s": times[1], "losses": losses,
                "threads": dl.get_system("thread_num")}

    def step(self) -> dict[str, float]:
        """One training step on the fixed batch; its losses."""
        return self.dl.train_dl_model_batch(self.model, self.samples)

    def engine_s(self) -> float:
        """Time spent inside the engine since the counters' last reset."""
        return self.counters.run_s + self.counters.update_s

    def run(self, steps: int) -> dict[str, Any]:
        """``steps`` timed steps: ``times``, ``outside`` (each step minus its engine time), ``cpu_per_wall``."""
        return timed_steps(self.step, steps, untimed=self.counters.reset, engine_s=self.engine_s)

    def extras(self, changes: int = 5) -> dict[str, Any]:
        """Cost of a learning-rate change between steps, and whether anything was rebuilt."""
        trainer, session, solver = self.trainer, self.trainer.session, self.trainer.solver
        set_s, step_s = [], []
        lr = self.model.params["learning_rate"]
        for i in range(changes):
            start = time.perf_counter()
            self.dl.set_dl_model_param(self.model, "learning_rate", lr * (0.5 if i % 2 == 0 else 1.0))
            set_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            self.step()
            step_s.append(time.perf_counter() - start)
        current = self.model.trainer()
        rebuilt = current is not trainer or current.session is not session or current.solver is not solver
        return {"lr_set_s": statistics.median(set_s), "lr_step_s": statistics.median(step_s), "rebuilt": rebuilt}

    def finish(self) -> dict[str, Any]:
        """Peak RSS, whether torch got loaded after all, and the versions on this side."""
        import numpy
        import onnx

        from onnx_dl.engine import runtime
        return {"peak_rss_mb": peak_rss_mb(), "torch_loaded": sys.modules.get("torch") is not None,
                "versions": {"onnxruntime-training": runtime.ort().__version__, "onnx": onnx.__version__,
                             "numpy": numpy.__version__, "onnx_dl": self.dl.__version__}}
