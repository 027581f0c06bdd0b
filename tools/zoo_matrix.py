"""The torchvision zoo matrix: every network of tests/zoo.py through every export recipe, with parity
against PyTorch and the step-time ratio against PyTorch eager (same thread count, steps interleaved).

    python tools/zoo_matrix.py [--networks resnet18,mobilenet_v2] [--recipes training,dynamo] [--timed 5]
                               [--threads 2] [--markdown results.md] [--json raw.json]
    python tools/zoo_matrix.py --from-json raw.json --markdown results.md   (the table again, from raw results)

Needs the test extra (torch, torchvision). Each case runs in its own process, so that one crash (a
signal inside the engine) is reported as a row instead of ending the run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import zoo  # noqa: E402  (the test-side harness)

COLUMNS = ["network", "recipe", "stage", "loss rel diff vs train()", "vs float64 (torch float32's own)",
           "1st step decrease rel diff vs torch / vs float64 (torch float32's own)", "params onnx_dl / torch", "5 steps finite",
           "written vs apply", "ms onnx_dl / torch (ratio)", "told at read / refused"]


def _case(args: tuple[str, str, int, int], queue: multiprocessing.Queue) -> None:
    name, recipe, timed, threads = args
    import torch

    import onnx_dl as dl

    torch.set_num_threads(threads)
    dl.set_system("thread_num", threads)
    with tempfile.TemporaryDirectory() as folder:
        queue.put(asdict(zoo.run_case(name, recipe, Path(folder), timed=timed)))


def run(name: str, recipe: str, timed: int, threads: int) -> dict:
    """One case in a child process; a crash becomes a row with the signal."""
    queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(target=_case, args=((name, recipe, timed, threads), queue))
    child.start()
    child.join()
    if child.exitcode != 0:
        return {"network": name, "recipe": recipe, "stage": f"crashed (exit code {child.exitcode})"}
    return queue.get()


def row(result: dict) -> list[str]:
    """A markdown table row of one case."""
    losses = result.get("losses") or []
    import math

    rel = (abs(result["loss_onnx_dl"] - result["loss_torch"]) / abs(result["loss_torch"])
           if "loss_torch" in result and math.isfinite(result.get("loss_torch", math.nan)) else math.nan)
    rel64 = (f"{abs(result['loss_onnx_dl'] - result['loss_torch64']) / abs(result['loss_torch64']):.1e} "
             f"({abs(result['loss_torch'] - result['loss_torch64']) / abs(result['loss_torch64']):.1e})"
             if math.isfinite(result.get("loss_torch64", math.nan)) else "")
    second = ""
    if len(losses) > 1 and math.isfinite(result.get("second_loss_torch", math.nan)):
        case = zoo.CaseResult(**result)
        second = (f"{case.step_decrease_rel_diff:.1e} / {case.step_decrease_rel_diff64:.1e} "
                  f"({case.torch_float32_step_error:.1e})")
    timing = (f"{result['ms_onnx_dl']:.0f} / {result['ms_torch']:.0f} ({result['ms_onnx_dl'] / result['ms_torch']:.2f})"
              if math.isfinite(result.get("ms_onnx_dl", math.nan)) else "")
    warned = "; ".join(result.get("warned", []))
    told = " / ".join(part for part in (f"warned: {warned[:110]}..." if warned else "",
                                         f"refused: {result.get('refused', '')[:200]}" if result.get("refused") else "")
                      if part)
    return [result["network"], result["recipe"], result["stage"], f"{rel:.1e}", rel64, second,
            f"{result.get('params_onnx_dl', -1)} / {result.get('params_torch', -1)}",
            str(bool(losses) and all(math.isfinite(v) for v in losses)),
            f"{result.get('written_vs_apply', math.nan):.1e}", timing, told.replace("|", "/").replace("\n", " ")]


def main() -> None:
    """Run the matrix and print (or write) it as a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default=",".join(zoo.NETWORKS))
    parser.add_argument("--recipes", default=",".join(zoo.RECIPES))
    parser.add_argument("--timed", type=int, default=0, help="also time this many steps per engine")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", type=Path, help="write the table here too")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--from-json", type=Path, help="only render the table of raw results written before")
    args = parser.parse_args()
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    print(lines[0], lines[1], sep="\n", flush=True)
    results = []
    cases = ([(r["network"], r["recipe"], r) for r in json.loads(args.from_json.read_text())] if args.from_json else
             [(name, recipe, None) for name in args.networks.split(",") for recipe in args.recipes.split(",")])
    for name, recipe, stored in cases:
        result = stored or run(name, recipe, args.timed, args.threads)
        results.append(result)
        lines.append("| " + " | ".join(row(result)) + " |")
        print(lines[-1], flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
