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
with a pause between blocks so one side's spinning threads do not slow the other.
Reported per case: median ms/step of each side, the ratio onnx_dl / PyTorch (median over paired
blocks, and of the fastest steps), peak RSS, the share of onnx_dl's step spent outside ONNX
Runtime's run calls (collation, checks, Python), the first step (artifact build + sessions), and
what a learning-rate change between steps costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
RESULTS = TOOLS / "bench-results.md"
LOSS_TOLERANCE = 1e-4  # |onnx_dl - torch| <= tol * max(1, |torch|) for every loss of the checked steps
CHECK_STEPS = 2  # the first steps whose losses must agree (the second checks the update rule)
BLOCK_GAP_S = 0.25


@dataclass(frozen=True)
class Case:
    """One model type as benchmarked: its network, image size, batch and sample generator."""

    model_type: str
    source: str  # a bundled network, or the backbone handed to ``create``
    size: int
    batch: int
    samples: str  # function name in onnx_dl.synthetic: (count, size=, seed=) -> samples
    steps_per_block: int  # full mode; quick mode uses a quarter
    params: dict[str, Any] = field(default_factory=dict)  # model parameters set before training
    create: str | None = None  # onnx_dl operator building the model: create(source, num_classes, params)
    num_classes: int = 0  # for ``create``
    class_weights: bool = True  # train with unequal class weights (a weighted loss)

    def available(self) -> bool:
        """Whether the installed onnx_dl offers this case."""
        import onnx_dl
        return self.create is None or hasattr(onnx_dl, self.create)


CASES = {case.model_type: case for case in (
    Case("classification", "classifier_compact", 224, 8, "classification_samples", 20),
    Case("segmentation", "segmentation_compact", 256, 4, "segmentation_samples", 4),
    Case("detection", "classifier_compact", 256, 4, "detection_samples", 20, {"min_level": 3, "max_level": 5},
         create="create_dl_model_detection", num_classes=3, class_weights=False),
)}

SOLVERS = {
    "sgd": {"solver_type": "sgd", "learning_rate": 0.01, "momentum": 0.9},
    "adam": {"solver_type": "adam", "learning_rate": 0.001},
}


# -- shared by both workers --------------------------------------------------------------------
def prepare(case: Case, solver: str) -> tuple[Any, list[dict[str, Any]]]:
    """The model with the case's settings, and the fixed batch every step trains on."""
    import numpy as np

    import onnx_dl as dl
    from onnx_dl import synthetic

    if case.create is not None:
        model = getattr(dl, case.create)(case.source, case.num_classes,
                                         {"image_width": case.size, "image_height": case.size, **case.params})
        settings = {"batch_size": case.batch, "weight_prior": 1e-4, **SOLVERS[solver]}
    else:
        model = dl.read_dl_model(case.source)
        settings = {"image_dimensions": [case.size, case.size, model.params["image_num_channels"]],
                    "batch_size": case.batch, "weight_prior": 1e-4, **case.params, **SOLVERS[solver]}
    for name, value in settings.items():
        dl.set_dl_model_param(model, name, value)
    if case.class_weights:
        classes = len(model.params["class_ids"])
        dl.set_dl_model_param(model, "class_weights", np.linspace(0.5, 1.5, classes).tolist())
    samples = getattr(synthetic, case.samples)(case.batch, size=case.size, seed=7)
    return model, samples


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class OnnxDLSide:
    """Worker side running ``train_dl_model_batch`` (never imports torch)."""

    def setup(self, case: Case, solver: str, threads: int, session_config: dict[str, str] | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        import onnx_dl as dl
        from onnx_dl.engine import runtime as _ort
        _ort.training()  # the engine import, timed apart from the first step
        import_s = time.perf_counter() - start
        if session_config:
            self._configure_training_sessions(_ort, session_config)
        dl.set_system("thread_num", threads)
        self.dl = dl
        self.model, self.samples = prepare(case, solver)
        losses, times = [], []
        for _ in range(CHECK_STEPS):
            start = time.perf_counter()
            losses.append(dl.train_dl_model_batch(self.model, self.samples))
            times.append(time.perf_counter() - start)
        self.trainer = self.model.trainer()
        self.ort_s = 0.0
        self._instrument()
        return {"import_s": import_s, "first_step_s": times[0], "second_step_s": times[1], "losses": losses,
                "threads": dl.get_system("thread_num")}

    @staticmethod
    def _configure_training_sessions(ort_module: Any, entries: dict[str, str]) -> None:
        """Add session config entries to the options of the training session (an experiment: --session-config)."""
        make_options = ort_module.session_options

        def session_options(threads: int, deterministic: bool, optimize: bool = True, spinning: bool = True) -> Any:
            options = make_options(threads, deterministic, optimize, spinning)
            if optimize:
                for key, value in entries.items():
                    options.add_session_config_entry(key, value)
            return options

        ort_module.session_options = session_options

    def _instrument(self) -> None:
        """Time every run call into the engine: the training Module and the solver's update (its session, or
        the host update on the CPU)."""
        side = self

        class Timed:
            def __init__(self, inner: Any, method: str | None) -> None:
                self.inner, self.method = inner, method

            def __call__(self, *args: Any) -> Any:
                start = time.perf_counter()
                try:
                    return self.inner(*args)
                finally:
                    side.ort_s += time.perf_counter() - start

            def __getattr__(self, name: str) -> Any:
                found = getattr(self.inner, name)
                return Timed(found, None) if name == self.method else found

        self.trainer.session.module = Timed(self.trainer.session.module, None)
        solver = self.trainer.solver
        if solver.on_host:  # the update on the host (the CPU): timed as a call
            solver._host = Timed(solver._host, None)
        else:
            solver._session = Timed(solver._session, "run_with_iobinding")

    def run(self, steps: int) -> dict[str, Any]:
        times, outside = [], []
        cpu = time.process_time()
        wall = time.perf_counter()
        for _ in range(steps):
            self.ort_s = 0.0
            start = time.perf_counter()
            self.dl.train_dl_model_batch(self.model, self.samples)
            elapsed = time.perf_counter() - start
            times.append(elapsed)
            outside.append(elapsed - self.ort_s)
        return {"times": times, "outside": outside,
                "cpu_per_wall": (time.process_time() - cpu) / (time.perf_counter() - wall)}

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
            self.dl.train_dl_model_batch(self.model, self.samples)
            step_s.append(time.perf_counter() - start)
        current = self.model.trainer()
        rebuilt = current is not trainer or current.session is not session or current.solver is not solver
        return {"lr_set_s": statistics.median(set_s), "lr_step_s": statistics.median(step_s), "rebuilt": rebuilt}

    def finish(self) -> dict[str, Any]:
        import numpy
        import onnx
        import onnxruntime
        return {"peak_rss_mb": peak_rss_mb(), "torch_loaded": "torch" in sys.modules and sys.modules["torch"] is not None,
                "versions": {"onnxruntime-training": onnxruntime.__version__, "onnx": onnx.__version__,
                             "numpy": numpy.__version__, "onnx_dl": self.dl.__version__}}


class TorchSide:
    """Worker side running the same training graph in PyTorch eager."""

    def setup(self, case: Case, solver: str, threads: int, session_config: dict[str, str] | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        import numpy as np
        import torch
        import_s = time.perf_counter() - start
        from onnx_to_torch import OnnxNet

        from onnx_dl import freezing
        torch.set_num_threads(threads)
        self.torch = torch
        model, samples = prepare(case, solver)
        params = model.params
        network = model.network()
        frozen = freezing.frozen_weights(network, params, model.kind.head_weights)
        tg = model.kind.build_training_graph(freezing.training_form(network, frozen), params)
        self.kind, self.samples, self.params = model.kind, samples, dict(params)
        self.feeds: list[Any] = []
        self.net = OnnxNet(tg.model, tg.trainable)
        weights = [self.net.parameter(name) for name in tg.trainable]
        if params["solver_type"] == "sgd":
            self.optimizer = HalconSGD(weights, params["learning_rate"], params["momentum"])
        else:
            self.optimizer = torch.optim.Adam(weights, lr=params["learning_rate"], eps=params["adam_epsilon"],
                                              betas=(params["adam_beta1"], params["adam_beta2"]))
        self.loss_names = tg.losses
        build_s = time.perf_counter() - start - import_s
        losses, times = [], []
        for _ in range(CHECK_STEPS):
            self.collate()
            start = time.perf_counter()
            losses.append(self.step())
            times.append(time.perf_counter() - start)
        return {"import_s": import_s, "build_s": build_s, "first_step_s": times[0], "second_step_s": times[1],
                "losses": losses, "threads": torch.get_num_threads()}

    def collate(self) -> None:
        """The feeds of the next step, as onnx_dl collates them (untimed: the peer gets them for free),
        carrying state from step to step as onnx_dl does (a detector's positive-anchor average)."""
        import numpy as np

        chunks, _, state = self.kind.train_chunks(self.samples, self.params, 1)
        self.params.update(state)
        self.feeds = [self.torch.from_numpy(np.ascontiguousarray(a))
                      for a in [*chunks[0], np.array(self.params["weight_prior"], np.float32)]]

    def step(self) -> dict[str, float]:
        for weight in self.optimizer.param_groups[0]["params"]:
            weight.grad = None
        outputs = self.net(*self.feeds)
        outputs[self.loss_names[0]].backward()
        self.optimizer.step()
        return {name: float(outputs[name].item()) for name in self.loss_names}

    def run(self, steps: int) -> dict[str, Any]:
        times = []
        cpu = time.process_time()
        wall = time.perf_counter()
        for _ in range(steps):
            self.collate()
            start = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - start)
        return {"times": times, "cpu_per_wall": (time.process_time() - cpu) / (time.perf_counter() - wall)}

    def finish(self) -> dict[str, Any]:
        return {"peak_rss_mb": peak_rss_mb(), "versions": {"torch": self.torch.__version__}}


class HalconSGD:
    """HALCON's SGD in torch: v = momentum * v - lr * g; w = w + v (foreach kernels, no autograd)."""

    def __init__(self, weights: list[Any], lr: float, momentum: float) -> None:
        import torch
        self.param_groups = [{"params": weights}]
        self.velocity = [torch.zeros_like(w) for w in weights]
        self.lr, self.momentum = lr, momentum

    def step(self) -> None:
        import torch
        weights = self.param_groups[0]["params"]
        with torch.no_grad():
            torch._foreach_mul_(self.velocity, self.momentum)
            torch._foreach_add_(self.velocity, [w.grad for w in weights], alpha=-self.lr)
            torch._foreach_add_(weights, self.velocity)


def worker(side_name: str) -> None:
    """Answer the parent's JSON requests on stdin; replies go to the original stdout, prints to stderr."""
    if side_name == "onnx_dl":
        sys.modules["torch"] = None  # type: ignore[assignment]  # as in an environment without torch
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    side: Any = {"onnx_dl": OnnxDLSide, "torch": TorchSide, "probe": ProbeSide}[side_name]()
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("command")
        if command == "setup" and "case" in request:
            request["case"] = Case(**request["case"])
        reply = getattr(side, command)(**request)
        replies.write(json.dumps(reply) + "\n")
        if command == "finish":
            return


# -- the parent ----------------------------------------------------------------------------------
class Worker:
    """A worker process of one side."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", side], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def call(self, command: str, **args: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"command": command, **args}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.side} worker died during {command!r} (exit code {self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def check_losses(ours: list[dict[str, float]], theirs: list[dict[str, float]], label: str) -> float:
    """The largest loss difference of the checked steps; stops the run beyond the tolerance."""
    worst = 0.0
    for step, (a, b) in enumerate(zip(ours, theirs), start=1):
        for name, value in b.items():
            diff = abs(a[name] - value)
            worst = max(worst, diff / max(1.0, abs(value)))
            if diff > LOSS_TOLERANCE * max(1.0, abs(value)):
                raise SystemExit(f"{label}: step {step} {name}: onnx_dl {a[name]:.7f} vs PyTorch {value:.7f} "
                                 f"differ by {diff:.2e} > {LOSS_TOLERANCE}; the comparison is not like for like")
    return worst


def bench_case(name: str, solver: str, threads: int, warmup: int, blocks: int, steps: int,
               session_config: dict[str, str]) -> dict[str, Any]:
    """Both sides of one case, interleaved; the summary row."""
    case = CASES[name]
    workers = {side: Worker(side) for side in ("onnx_dl", "torch")}
    probe = Worker("probe")
    try:
        probe.call("setup", threads=threads)
        setup = {side: w.call("setup", case=case.__dict__, solver=solver, threads=threads, session_config=session_config)
                 for side, w in workers.items()}
        worst = check_losses(setup["onnx_dl"]["losses"], setup["torch"]["losses"], f"{name}/{solver}")
        for w in workers.values():
            w.call("run", steps=warmup)
        runs: dict[str, list[dict[str, Any]]] = {"onnx_dl": [], "torch": []}
        for block in range(blocks):
            for side in (("onnx_dl", "torch") if block % 2 == 0 else ("torch", "onnx_dl")):
                time.sleep(BLOCK_GAP_S)
                speedup = probe.call("speedup")["speedup"] if side == "onnx_dl" else None
                runs[side].append({**workers[side].call("run", steps=steps), "probe_speedup": speedup})
        extras = workers["onnx_dl"].call("extras")
        finish = {side: w.call("finish") for side, w in workers.items()}
    finally:
        for w in (*workers.values(), probe):
            w.close()
    return summarise(name, solver, setup, runs, extras, finish, worst)


def summarise(name: str, solver: str, setup: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
              extras: dict[str, Any], finish: dict[str, Any], worst: float) -> dict[str, Any]:
    times = {side: [t for block in blocks for t in block["times"]] for side, blocks in runs.items()}
    paired = [statistics.median(a["times"]) / statistics.median(b["times"]) for a, b in zip(runs["onnx_dl"], runs["torch"])]
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

        from onnx_dl.engine import runtime as _ort
        rt = _ort.ort()
        spec = [("dY", (8, 16, 112, 112)), ("X", (8, 16, 112, 112)), ("W", (16, 16, 3, 3))]
        node = helper.make_node("ConvGrad", ["dY", "X", "W"], ["", "dW"], domain="com.microsoft", kernel_shape=[3, 3],
                                pads=[1, 1, 1, 1], strides=[1, 1])
        graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in spec],
                                  [helper.make_tensor_value_info("dW", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 9
        self.sessions = {n: rt.InferenceSession(model.SerializeToString(), _ort.session_options(n, False, spinning=spinning),
                                                providers=["CPUExecutionProvider"]) for n in sorted({1, threads})}
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
        sys.modules["torch"] = None  # type: ignore[assignment]
        self.threads, self.probe = threads, ConvGradProbe(threads, spinning=False)
        return {}

    def speedup(self) -> dict[str, Any]:
        return {"speedup": self.probe.speedup(self.threads)}

    def finish(self) -> dict[str, Any]:
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
from bench import ConvGradProbe
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
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {os.cpu_count()} logical cores ({usable} usable), {platform.system()} {platform.machine()}"


LEGEND = ("ms/step: median over all timed steps; ratio: median over paired blocks of onnx_dl / PyTorch "
          "(< 1: onnx_dl faster), min: ratio of the fastest steps; near / far: the paired ratio over the blocks "
          "whose ConvGrad probe (see ConvGradProbe) found the two cores near (sharing a cache) or far, with the "
          "number of blocks; outside ORT: the part of onnx_dl's step "
          "spent outside ONNX Runtime's run calls; first step: a fresh process's first "
          "`train_dl_model_batch` (artifact build + sessions + one step; engine import excluded); "
          "lr change: `set_dl_model_param('learning_rate')`, and whether anything was rebuilt.")
HEADER = ("| case | solver | steps | onnx_dl ms/step | PyTorch ms/step | ratio | ratio (min) | ratio near / far "
          "| peak RSS onnx_dl / PyTorch MB | outside ORT | first step onnx_dl / PyTorch s | lr change | loss diff |")


def _state_ratios(by_state: dict[str, tuple[float | None, int]]) -> str:
    return " / ".join("–" if value is None else f"{value:.2f} ({count})" for value, count in
                      (by_state["near"], by_state["far"]))


def table(rows: list[dict[str, Any]], mode: str, session_config: dict[str, str], checks: list[str]) -> str:
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
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} {CASES[r['case']].size}² b{CASES[r['case']].batch} | {r['solver']} | {r['steps']} "
            f"| {r['ms']['onnx_dl']:.1f} | {r['ms']['torch']:.1f} | **{r['ratio']:.2f}** | {r['ratio_min']:.2f} "
            f"| {_state_ratios(r['ratio_by_state'])} "
            f"| {r['rss']['onnx_dl']:.0f} / {r['rss']['torch']:.0f} ({r['rss']['onnx_dl'] / r['rss']['torch']:.2f}x) "
            f"| {100 * r['outside_share']:.1f} % ({r['outside_ms']:.1f} ms) "
            f"| {r['first_step_s']['onnx_dl']:.2f} / {r['first_step_s']['torch']:.2f} "
            f"| {r['lr_set_ms']:.3f} ms, {'REBUILT' if r['rebuilt'] else 'no rebuild'} | {r['loss_diff']:.1e} |")
    lines += ["", "CPU time / wall time per side (threads actually busy): " + "; ".join(
        f"{r['case']}/{r['solver']} {r['cpu_per_wall']['onnx_dl']:.2f} / {r['cpu_per_wall']['torch']:.2f}" for r in rows) + "."]
    lines += ["Step right after a learning-rate change minus the median step (noise level): " + "; ".join(
        f"{r['case']}/{r['solver']} {r['lr_step_extra_ms']:+.1f} ms" for r in rows) + "."]
    lines += ["Imports: onnx_dl + engine {:.2f} s, torch {:.2f} s; building the PyTorch module: {}.".format(
        rows[0]["import_s"]["onnx_dl"], rows[0]["import_s"]["torch"],
        ", ".join(f"{r['case']}/{r['solver']} {r['torch_build_s']:.2f} s" for r in rows))]
    if any(r["torch_loaded"] for r in rows):
        lines.append("WARNING: torch was loaded in the onnx_dl worker.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about one minute); prints only")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), help="default: every case onnx_dl offers")
    parser.add_argument("--solvers", nargs="+", choices=sorted(SOLVERS), default=list(SOLVERS))
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--blocks", type=int, help="alternating blocks per side (default 10, quick 6)")
    parser.add_argument("--out", type=Path, help=f"Markdown file to write (default {RESULTS.name}, quick: none)")
    parser.add_argument("--json", type=Path, help="also write the raw summaries as JSON")
    parser.add_argument("--session-config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="experiment: extra ONNX Runtime session config entries for onnx_dl's training session")
    parser.add_argument("--worker", choices=("onnx_dl", "torch", "probe"), help=argparse.SUPPRESS)
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
            rows.append(bench_case(name, solver, args.threads, 2 if args.quick else 5, blocks, steps, session_config))
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
