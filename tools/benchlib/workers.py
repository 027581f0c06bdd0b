"""Worker processes of a benchmark: each side runs in its own interpreter (so its peak RSS is its own
and torch never loads next to onnx_dl), answering JSON requests from the parent, which alternates
blocks of steps between the sides.

A side is an object whose methods are the commands (``setup``, ``run``, ..., ``finish``); each takes
keyword arguments and returns a JSON-serialisable dict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BLOCK_GAP_S = 0.25  # pause before every block, so one side's spinning threads do not slow the other


def block_torch() -> None:
    """Make ``import torch`` fail in this process, as in an environment without torch."""
    sys.modules["torch"] = None  # type: ignore[assignment]


def serve(side: Any) -> None:
    """Answer the parent's JSON requests on stdin by calling ``side``'s methods, until ``finish`` or the
    end of stdin. Replies go to the original stdout; anything the side prints goes to stderr."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("command")
        replies.write(json.dumps(getattr(side, command)(**request)) + "\n")
        if command == "finish":
            return


class Worker:
    """The parent's handle on one side: ``script --worker <side>`` in a child process (the script calls
    :func:`serve`)."""

    def __init__(self, script: str | Path, side: str) -> None:
        self.side = side
        self.process = subprocess.Popen([sys.executable, str(script), "--worker", side], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def call(self, command: str, **args: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; stop the run if the worker died."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"command": command, **args}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.side} worker died during {command!r} (exit code {self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        """End the worker (killed if it is still running: its results are in)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def interleave(workers: dict[str, Worker], blocks: int, steps: int,
               before: Callable[[str], dict[str, Any]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """``blocks`` blocks of ``steps`` steps per side, alternating sides and flipping their order every
    block, with a pause before each; ``before(side)``, called after the pause, adds to that block's reply.
    Returns each side's ``run`` replies in block order."""
    names = list(workers)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for block in range(blocks):
        for name in (names if block % 2 == 0 else names[::-1]):
            time.sleep(BLOCK_GAP_S)
            extra = before(name) if before is not None else {}
            runs[name].append({**workers[name].call("run", steps=steps), **extra})
    return runs


def block_shares(blocks: int, processes: int) -> list[int]:
    """``blocks`` split as evenly as can be over ``processes`` fresh pairs of workers (at most one per block).

    On the project's 2-vCPU VMs a process runs at one of two speeds for its whole life (about one in three
    at two threads at the speed of one thread, in ONNX Runtime and in PyTorch alike): one pair of workers
    would draw that state once for a whole case."""
    processes = max(1, min(processes, blocks))
    return [blocks // processes + (i < blocks % processes) for i in range(processes)]


def close_all(workers: Sequence[Worker]) -> None:
    """Close every worker."""
    for worker in workers:
        worker.close()


def timed_steps(step: Callable[[], Any], steps: int, untimed: Callable[[], Any] | None = None,
                engine_s: Callable[[], float] | None = None) -> dict[str, Any]:
    """Wall time of each of ``steps`` calls of ``step`` (``times``), after an untimed ``untimed()`` each,
    and the CPU time per wall time of the whole run (``cpu_per_wall``: threads actually busy). With
    ``engine_s`` (the engine time of the step just run), also each step's time outside the engine
    (``outside``)."""
    times, outside = [], []
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(steps):
        if untimed is not None:
            untimed()
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        if engine_s is not None:
            outside.append(elapsed - engine_s())
    result: dict[str, Any] = {"times": times,
                              "cpu_per_wall": (time.process_time() - cpu) / (time.perf_counter() - wall)}
    if engine_s is not None:
        result["outside"] = outside
    return result


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")
