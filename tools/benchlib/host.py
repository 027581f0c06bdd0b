"""The machine a benchmark runs on: its description, and probes of how much a second thread helps now.

On this project's 2-vCPU VMs the hypervisor places the two vCPUs either on cores that share a cache or
on distant cores, and the engine's fine-grained parallel sections feel the difference; the probes tell
which state a block of steps ran in.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parents[1]


class ConvGradProbe:
    """Times the engine's ConvGrad (dW of a 3x3 conv on 8 x 16 x 112 x 112) on 1 and on n threads.

    Its speed-up from 1 to n threads tells the state of the host: on this project's 2-vCPU VMs
    the hypervisor places the two vCPUs either on cores that share a cache (a cross-core round
    trip of about 0.2 us: speed-up about 1.4) or on distant cores (about 0.5 us: speed-up below
    1). The engine's many short parallel sections pay for that latency; PyTorch's coarse-grained
    kernels barely do. Measured before each onnx_dl block, it labels the block 'near' or 'far'.
    """

    NEAR = 1.15  # speed-up at and above which the cores count as near

    def __init__(self, threads: int, spinning: bool = True) -> None:
        import numpy as np
        from onnx import TensorProto, helper

        from onnx_dl.engine import runtime
        spec = [("dY", (8, 16, 112, 112)), ("X", (8, 16, 112, 112)), ("W", (16, 16, 3, 3))]
        node = helper.make_node("ConvGrad", ["dY", "X", "W"], ["", "dW"], domain="com.microsoft", kernel_shape=[3, 3],
                                pads=[1, 1, 1, 1], strides=[1, 1])
        graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in spec],
                                  [helper.make_tensor_value_info("dW", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 9
        self.sessions = {n: runtime.inference_session(model, "cpu", n, False, spinning=spinning)
                         for n in sorted({1, threads})}
        self.feeds = {n: np.random.default_rng(0).standard_normal(s, dtype=np.float32) for n, s in spec}
        self.best_ms(1)

    def best_ms(self, threads: int, repeats: int = 5) -> float:
        """The fastest of ``repeats`` runs on ``threads`` threads, in ms."""
        session, best = self.sessions[threads], float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, self.feeds)
            best = min(best, time.perf_counter() - start)
        return 1000 * best

    def speedup(self, threads: int) -> float:
        """1-thread time / ``threads``-thread time now."""
        return self.best_ms(1) / self.best_ms(threads)


class ProbeSide:
    """Worker side measuring the host state before each onnx_dl block (its own process, so the probe's
    memory stays out of the measured peak RSS; threads that sleep when idle, so it takes no cores)."""

    def setup(self, threads: int) -> dict[str, Any]:
        """Build the probe's sessions."""
        self.threads, self.probe = threads, ConvGradProbe(threads, spinning=False)
        return {}

    def speedup(self) -> dict[str, Any]:
        """The ConvGrad speed-up from 1 thread to the benchmark's threads, now."""
        return {"speedup": self.probe.speedup(self.threads)}

    def finish(self) -> dict[str, Any]:
        """Nothing to report."""
        return {}


_PROBES = {  # run in a fresh interpreter with THREADS set; print the best time in ms
    "gemm": """
import time, numpy as np
a = np.random.default_rng(0).standard_normal((1536, 1536), dtype=np.float32)
a @ a
print(1000 * min((lambda t: (a @ a, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(7)))
""",
    "convgrad": f"""
import sys
sys.path.insert(0, {str(TOOLS)!r})
from benchlib.host import ConvGradProbe
print(ConvGradProbe(THREADS).best_ms(THREADS, 15))
""",
}


def probe_ms(name: str, threads: int) -> float:
    """Best time of probe ``name`` on ``threads`` threads, in a fresh interpreter (torch blocked)."""
    env = {**os.environ, **{v: str(threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    code = "import sys; sys.modules['torch'] = None\n" + _PROBES[name].replace("THREADS", str(threads))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def machine_check(threads: int) -> str:
    """How much the extra threads speed up a coarse-grained GEMM and the engine's fine-grained ConvGrad now."""
    parts = []
    for name in _PROBES:
        one, many = probe_ms(name, 1), probe_ms(name, threads)
        parts.append(f"{name} {one:.1f} -> {many:.1f} ms ({one / many:.2f}x)")
    return ", ".join(parts)


def machine() -> str:
    """CPU model, logical and usable cores, operating system and architecture."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {os.cpu_count()} logical cores ({usable} usable), {platform.system()} {platform.machine()}"
