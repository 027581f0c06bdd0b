"""What ``tools/bench.py`` reports: the summary of one case (from both sides' replies) and the Markdown
table of all cases; :func:`paired_ratios` is shared with ``tools/bench_zoo.py``."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any

from .cases import CASES
from .host import ConvGradProbe, machine

LEGEND = ("ms/step: median over all timed steps; ratio: median over paired blocks of onnx_dl / PyTorch "
          "(< 1: onnx_dl faster), min: ratio of the fastest steps; near / far: the paired ratio over the blocks "
          "whose ConvGrad probe (see ConvGradProbe) found the two cores near (sharing a cache) or far, with the "
          "number of blocks; outside ORT: the part of onnx_dl's step "
          "spent outside ONNX Runtime's training runs and solver updates (`onnx_dl.engine.runtime.COUNTERS`); "
          "first step: a fresh process's first "
          "`train_dl_model_batch` (artifact build + sessions + one step; engine import excluded); "
          "lr change: `set_dl_model_param('learning_rate')`, and whether anything was rebuilt.")
HEADER = ("| case | solver | steps | onnx_dl ms/step | PyTorch ms/step | ratio | ratio (min) | ratio near / far "
          "| peak RSS onnx_dl / PyTorch MB | outside ORT | first step onnx_dl / PyTorch s | lr change | loss diff |")


def paired_ratios(runs: dict[str, list[dict[str, Any]]], ours: str = "onnx_dl", theirs: str = "torch") -> list[float]:
    """Per pair of blocks, the median step time of ``ours`` over that of ``theirs``."""
    return [statistics.median(a["times"]) / statistics.median(b["times"]) for a, b in zip(runs[ours], runs[theirs])]


def summarise(name: str, solver: str, setup: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
              extras: dict[str, Any], finish: dict[str, Any], worst: float) -> dict[str, Any]:
    """The summary row of one case from both sides' setup, block, extras and finish replies."""
    times = {side: [t for block in blocks for t in block["times"]] for side, blocks in runs.items()}
    paired = paired_ratios(runs)
    near = [a["probe_speedup"] >= ConvGradProbe.NEAR for a in runs["onnx_dl"]]
    by_state = {state: [r for r, n in zip(paired, near) if n == (state == "near")] for state in ("near", "far")}
    ours = statistics.median(times["onnx_dl"])
    outside = statistics.median([t for block in runs["onnx_dl"] for t in block["outside"]])
    return {
        "case": name, "solver": solver, "steps": len(times["onnx_dl"]),
        "blocks_ms": {side: [round(1000 * statistics.median(b["times"]), 1) for b in blocks] for side, blocks in runs.items()},
        "ms": {side: 1000 * statistics.median(t) for side, t in times.items()},
        "min_ms": {side: 1000 * min(t) for side, t in times.items()},
        "ratio": statistics.median(paired), "ratio_min": min(times["onnx_dl"]) / min(times["torch"]),
        "ratio_by_state": {state: (statistics.median(r) if r else None, len(r)) for state, r in by_state.items()},
        "probe_speedups": [round(a["probe_speedup"], 2) for a in runs["onnx_dl"]],
        "cpu_per_wall": {side: statistics.median(b["cpu_per_wall"] for b in blocks) for side, blocks in runs.items()},
        "rss": {side: finish[side]["peak_rss_mb"] for side in finish},
        "outside_ms": 1000 * outside, "outside_share": outside / ours,
        "first_step_s": {side: setup[side]["first_step_s"] for side in setup},
        "build_s": setup["onnx_dl"]["first_step_s"] - ours, "torch_build_s": setup["torch"]["build_s"],
        "import_s": {side: setup[side]["import_s"] for side in setup},
        "lr_set_ms": 1000 * extras["lr_set_s"], "lr_step_extra_ms": 1000 * (extras["lr_step_s"] - ours),
        "rebuilt": extras["rebuilt"], "loss_diff": worst, "threads": {side: setup[side]["threads"] for side in setup},
        "torch_loaded": finish["onnx_dl"]["torch_loaded"],
        "versions": {**finish["onnx_dl"]["versions"], **finish["torch"]["versions"]},
    }


def state_ratios(by_state: dict[str, tuple[float | None, int]]) -> str:
    """The 'ratio near / far' cell: each state's paired ratio and its number of blocks."""
    return " / ".join("–" if value is None else f"{value:.2f} ({count})" for value, count in
                      (by_state["near"], by_state["far"]))


def row(r: dict[str, Any]) -> str:
    """The table row of one summary."""
    case = CASES[r["case"]]
    return (f"| {r['case']} {case.size}² b{case.batch} | {r['solver']} | {r['steps']} "
            f"| {r['ms']['onnx_dl']:.1f} | {r['ms']['torch']:.1f} | **{r['ratio']:.2f}** | {r['ratio_min']:.2f} "
            f"| {state_ratios(r['ratio_by_state'])} "
            f"| {r['rss']['onnx_dl']:.0f} / {r['rss']['torch']:.0f} ({r['rss']['onnx_dl'] / r['rss']['torch']:.2f}x) "
            f"| {100 * r['outside_share']:.1f} % ({r['outside_ms']:.1f} ms) "
            f"| {r['first_step_s']['onnx_dl']:.2f} / {r['first_step_s']['torch']:.2f} "
            f"| {r['lr_set_ms']:.3f} ms, {'REBUILT' if r['rebuilt'] else 'no rebuild'} | {r['loss_diff']:.1e} |")


def notes(rows: list[dict[str, Any]]) -> list[str]:
    """The lines under the table: busy threads, the step after a learning-rate change, import and build times."""
    lines = ["CPU time / wall time per side (threads actually busy): " + "; ".join(
        f"{r['case']}/{r['solver']} {r['cpu_per_wall']['onnx_dl']:.2f} / {r['cpu_per_wall']['torch']:.2f}" for r in rows) + "."]
    lines += ["Step right after a learning-rate change minus the median step (noise level): " + "; ".join(
        f"{r['case']}/{r['solver']} {r['lr_step_extra_ms']:+.1f} ms" for r in rows) + "."]
    lines += ["Imports: onnx_dl + engine {:.2f} s, torch {:.2f} s; building the PyTorch module: {}.".format(
        rows[0]["import_s"]["onnx_dl"], rows[0]["import_s"]["torch"],
        ", ".join(f"{r['case']}/{r['solver']} {r['torch_build_s']:.2f} s" for r in rows))]
    if any(r["torch_loaded"] for r in rows):
        lines.append("WARNING: torch was loaded in the onnx_dl worker.")
    return lines


def table(rows: list[dict[str, Any]], mode: str, session_config: dict[str, str], checks: list[str]) -> str:
    """The whole Markdown report: machine, versions, command, machine checks, legend, table and notes."""
    versions = rows[0]["versions"]
    threads = rows[0]["threads"]
    command = "python tools/bench.py" + (" --quick" if mode == "quick" else "") + "".join(
        f" --session-config {k}={v}" for k, v in session_config.items())
    when = time.strftime("%Y-%m-%d %H:%M")
    versions_text = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    check = (f"Machine check, 1 -> {threads['onnx_dl']} threads, before / after the run: {checks[0]}; {checks[1]} "
             "(the GEMM, coarse-grained, gains about 2x anywhere; the engine's ConvGrad, many short parallel sections, "
             "gains about 1.3x when the host runs the two vCPUs on cores that share a cache and loses on distant cores: "
             "see ConvGradProbe).")
    lines = [
        "# Training step: onnx_dl vs PyTorch eager", "",
        f"Machine: {machine()}. Python {platform.python_version()}; {versions_text}.",
        f"Threads: onnx_dl {threads['onnx_dl']}, PyTorch {threads['torch']}. Mode: {mode}; {when}. Command: `{command}`.",
        "",
        check, "", LEGEND, "", HEADER, "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(row(r) for r in rows), "", *notes(rows),
    ]
    return "\n".join(lines) + "\n"
