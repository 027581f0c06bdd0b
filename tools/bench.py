"""Training-step benchmark: onnx_dl's ``train_dl_model_batch`` against the same network and loss in
PyTorch eager, on the same CPU, with the same thread count, for both solvers.

    python -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install -e ".[cpu]" torch==2.13.0
    /tmp/benchvenv/bin/python tools/bench.py            # full run, writes tools/bench-results.md
    /tmp/benchvenv/bin/python tools/bench.py --quick    # about one minute, prints only

torch is a benchmark-only requirement. The PyTorch side runs the very training graph onnx_dl
hands to its engine (network + loss + weight prior, ``tools/onnx_to_torch.py``) with the same
initial weights and the same collated feeds; SGD is HALCON's rule (v = mu v - lr g; w += v) with
``torch._foreach`` operations, Adam is ``torch.optim.Adam`` (epsilon outside the root, as onnx_dl).
Before timing, the losses of the first steps must agree to 1e-4 (else the run stops).

Each side runs in its own worker process (so peak RSS is clean and torch never loads next to
onnx_dl); the parent alternates blocks of steps between them, flipping the order every block,
with a pause between blocks so one side's spinning threads do not slow the other, and shares the blocks
of a case among ``--processes`` fresh pairs of workers (``benchlib.workers.block_shares``).
Reported per case: median ms/step of each side, the ratio onnx_dl / PyTorch (median over paired
blocks, and of the fastest steps), peak RSS, the share of onnx_dl's step spent outside ONNX
Runtime (collation, checks, Python: the step minus the engine's training runs and solver updates,
as ``onnx_dl.engine.runtime.COUNTERS`` counts them), the first step (artifact build + sessions),
and what a learning-rate change between steps costs.

This file is the entry point and the parent; the pieces live in ``tools/benchlib/`` (see its
``__init__``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from benchlib.cases import CASES, SOLVERS, check_losses
from benchlib.host import ProbeSide, machine_check
from benchlib.onnx_dl_side import OnnxDLSide
from benchlib.report import summarise, table
from benchlib.torch_side import TorchSide
from benchlib.workers import Worker, block_shares, block_torch, close_all, interleave, serve

RESULTS = Path(__file__).resolve().parent / "bench-results.md"
SIDES = {"onnx_dl": OnnxDLSide, "torch": TorchSide, "probe": ProbeSide}


def worker(side: str) -> None:
    """Serve one side in this (child) process; every side but PyTorch's runs with torch blocked."""
    if side != "torch":
        block_torch()
    serve(SIDES[side]())


def bench_case(name: str, solver: str, threads: int, warmup: int, blocks: int, steps: int,
               session_config: dict[str, str], processes: int = 1) -> dict[str, Any]:
    """Both sides of one case, interleaved, with the vCPU-state probe before every onnx_dl block, the blocks
    shared by ``processes`` fresh pairs of workers (``block_shares``); the summary row. Setup (first step,
    imports) and extras (learning-rate change) are the first pair's, peak RSS the largest."""
    runs: dict[str, list[dict[str, Any]]] = {"onnx_dl": [], "torch": []}
    setup: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    finishes: dict[str, list[dict[str, Any]]] = {"onnx_dl": [], "torch": []}
    worst = 0.0
    for share in block_shares(blocks, processes):
        workers = {side: Worker(__file__, side) for side in ("onnx_dl", "torch")}
        probe = Worker(__file__, "probe")
        try:
            probe.call("setup", threads=threads)
            started = {side: w.call("setup", case=CASES[name].__dict__, solver=solver, threads=threads,
                                    session_config=session_config) for side, w in workers.items()}
            worst = max(worst, check_losses(started["onnx_dl"]["losses"], started["torch"]["losses"], f"{name}/{solver}"))
            setup = setup or started
            for w in workers.values():
                w.call("run", steps=warmup)

            def probe_speedup(side: str) -> dict[str, Any]:
                return {"probe_speedup": probe.call("speedup")["speedup"] if side == "onnx_dl" else None}

            for side, replies in interleave(workers, share, steps, before=probe_speedup).items():
                runs[side] += replies
            extras = extras or workers["onnx_dl"].call("extras")
            for side, w in workers.items():
                finishes[side].append(w.call("finish"))
        finally:
            close_all([*workers.values(), probe])
    return summarise(name, solver, setup, runs, extras, {side: _merged(f) for side, f in finishes.items()}, worst)


def _merged(finishes: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's finish replies of several worker pairs as one: the largest peak RSS, torch loaded if it
    was in any, the rest the first's."""
    merged = {**finishes[0], "peak_rss_mb": max(f["peak_rss_mb"] for f in finishes)}
    if "torch_loaded" in merged:
        merged["torch_loaded"] = any(f["torch_loaded"] for f in finishes)
    return merged


def main(argv: list[str] | None = None) -> None:
    """Run the cases (or serve as a worker) and print, and in full mode write, the Markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about one minute); prints only")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), help="default: every case onnx_dl offers")
    parser.add_argument("--solvers", nargs="+", choices=sorted(SOLVERS), default=list(SOLVERS))
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--blocks", type=int, help="alternating blocks per side (default 10, quick 6)")
    parser.add_argument("--processes", type=int, default=3, help="fresh worker pairs per case, sharing the blocks")
    parser.add_argument("--out", type=Path, help=f"Markdown file to write (default {RESULTS.name}, quick: none)")
    parser.add_argument("--json", type=Path, help="also write the raw summaries as JSON")
    parser.add_argument("--session-config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="experiment: extra ONNX Runtime session config entries for onnx_dl's training session")
    parser.add_argument("--worker", choices=sorted(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    session_config = dict(entry.split("=", 1) for entry in args.session_config)
    blocks = args.blocks or (6 if args.quick else 10)
    rows = []
    checks = [machine_check(args.threads)]
    for name in args.cases or [name for name, case in CASES.items() if case.available()]:
        steps = max(1, CASES[name].steps_per_block // 4) if args.quick else CASES[name].steps_per_block
        for solver in args.solvers:
            print(f"{name}/{solver}: {blocks} blocks of {steps} steps per side ...", file=sys.stderr, flush=True)
            rows.append(bench_case(name, solver, args.threads, 2 if args.quick else 5, blocks, steps, session_config,
                                   args.processes))
    checks.append(machine_check(args.threads))
    text = table(rows, "quick" if args.quick else "full", session_config, checks)
    print(text)
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        out.write_text(text)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
