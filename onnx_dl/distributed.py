"""Data-parallel training on a Ray cluster: the chunks of one step on K workers, one update on the driver.

A step of ``batch_size * batch_size_multiplier`` samples is already a sum over chunks of ``batch_size``
(:func:`onnx_dl.operators.train_dl_model_batch`); :class:`DataParallel` runs those chunks on K Ray actors
instead of one after the other:

1. the driver prepares the step's chunk feeds (step-wide normalisers included) exactly as the operator
   does, and puts the current weights into Ray's object store once;
2. worker w loads the weights into its engine session and runs forward and backward of its contiguous
   share of the chunks (:meth:`onnx_dl.trainer.Trainer.gradients`), returning the summed gradient of its
   share (one flat float32 vector), each chunk's losses and batch-norm batch statistics;
3. the driver adds the workers' gradients in worker order, g = ((g_0 + g_1) + g_2) + ..., the order in
   which the single process adds its chunks, applies the one solver update of the model's own trainer
   (:meth:`onnx_dl.trainer.Trainer.apply_gradients`) and updates the running statistics chunk by chunk.

With one chunk per worker the result equals ``train_dl_model_batch`` with ``batch_size_multiplier = K``
bit for bit; with m > 1 chunks per worker the sums are grouped differently, which changes the last bit
of float32 gradients (rounding only). The driver's model keeps the weights and the solver state, so a
failed step (on any worker) changes nothing, and a worker that dies is replaced and its share run again.

Datasets larger than memory (:meth:`DataParallel.train_dataset_batch`): the workers read and preprocess
their own samples from shared storage; the driver sends indices and gets back only the annotations it
needs for the step-wide feeds (normalisers, a detector's anchor average), so it never holds an image.

Ray is imported only here and only when a runner starts (``pip install "onnx_dl[ray]"``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import samples as sample_checks
from . import params as P
from . import system
from .engine.session import TrainingSession
from .errors import DLError, DLParamError, DLRuntimeError
from .model import DLModel
from .trainer import Engine, Trainer
from .training_graph import TrainingGraph


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise DLRuntimeError('DataParallel needs Ray: pip install "onnx_dl[ray]"') from exc
    return ray


def _no_solver(*args: Any, **kwargs: Any) -> None:
    """Workers only compute gradients: they keep no solver state (the driver's model holds it)."""
    return None


GRADIENTS_ONLY = Engine(session=TrainingSession, solver=_no_solver)  # a worker's engine: sessions, no solver


def flat_parameters(trainer: Trainer) -> np.ndarray:
    """Every trained parameter of ``trainer``'s session in one float32 vector (order: ``graph.trainable``)."""
    session = trainer.session
    return np.concatenate([session.parameter(name).ravel() for name in session.trainable])


def flat_gradients(trainer: Trainer) -> np.ndarray:
    """The accumulated gradients of ``trainer``'s session in one float32 vector (a copy)."""
    session = trainer.session
    return np.concatenate([session.gradient(name).ravel() for name in session.trainable])


def _pieces(trainer: Trainer, flat: np.ndarray) -> dict[str, np.ndarray]:
    """``flat`` cut into the session's parameters, shaped as they are."""
    session, start, found = trainer.session, 0, {}
    for name in session.trainable:
        shape = session.parameter(name).shape
        size = int(np.prod(shape))
        found[name] = flat[start:start + size].reshape(shape)
        start += size
    return found


def load_gradients(trainer: Trainer, flat: np.ndarray) -> None:
    """Write ``flat`` (as from :func:`flat_gradients`) into the session's gradient buffers (CPU views)."""
    session = trainer.session
    for name, value in _pieces(trainer, flat).items():
        session.gradient(name)[...] = value


def shares(chunks: int, workers: int) -> list[range]:
    """Contiguous ranges of chunk indices, one per worker, the first ones one longer where it does not divide."""
    bounds = [chunks * w // workers for w in range(workers + 1)]
    return [range(bounds[w], bounds[w + 1]) for w in range(workers)]


class GradientWorker:
    """One Ray actor: an engine session of the model's training graph that computes the gradients of chunks,
    and (dataset mode) the samples it read and preprocessed itself for the current step."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self._die = False
        self._prepared: tuple[Any, list[dict[str, Any]]] = (None, [])
        self._dataset: tuple[str | None, Any] = (None, None)

    def ready(self) -> int:
        """The worker's process id (a started worker answers)."""
        return os.getpid()

    def load_graph(self, graph: TrainingGraph, threads: int, deterministic: bool, chunk_size: int | None = None) -> None:
        """Build the engine session of ``graph`` (a new graph, image size or engine setting of the model) for
        chunks of ``chunk_size`` images, as the driver's (the same kernels, the same rounding)."""
        self.trainer = Trainer(graph, {}, {"solver_type": "sgd", "batch_size": chunk_size}, "cpu", threads, deterministic,
                               engine=GRADIENTS_ONLY)

    def die_during_next_step(self) -> None:
        """Fault injection for tests: end this process abruptly inside its next gradient call."""
        self._die = True

    def prepare(self, job: DatasetJob) -> list[dict[str, Any]]:
        """Read and preprocess the samples of ``job`` (kept for the step); return them without their images."""
        return [{k: v for k, v in sample.items() if k != "image"} for sample in self._samples(job)]

    def _samples(self, job: DatasetJob) -> list[dict[str, Any]]:
        if self._prepared[0] != job.token:
            from .training import prepared_samples

            if self._dataset[0] != job.dataset.hex():  # the dataset is fetched once, not every step
                self._dataset = (job.dataset.hex(), _ray().get(job.dataset))
            self._prepared = (job.token, prepared_samples(self._dataset[1], job.indices, job.params))
        return self._prepared[1]

    def gradients(self, weights: np.ndarray, chunks: list[list[np.ndarray]], params: dict[str, Any], first: int,
                  count: int, job: DatasetJob | None = None) -> tuple[np.ndarray, list[dict[str, Any]], float]:
        """Load ``weights``, then forward and backward of ``chunks`` (chunks ``first``.. of ``count``); with a
        dataset ``job`` the chunks come without images (None) and take those of the job's samples.

        Returns the summed gradient of the chunks (flat), per chunk its losses and batch statistics, and
        the seconds spent."""
        if self._die:
            os._exit(1)
        if self.trainer is None:
            raise DLRuntimeError("data-parallel worker: no training graph loaded")
        start = time.perf_counter()
        if job is not None:
            chunks = self._with_images(chunks, job)
        self.trainer.session.load_weights(_pieces(self.trainer, weights))
        outputs = self.trainer.gradients(chunks, params, first, count)
        gradient = flat_gradients(self.trainer)
        self.trainer.session.reset_grad()
        return gradient, outputs, time.perf_counter() - start

    def _with_images(self, chunks: list[list[np.ndarray]], job: DatasetJob) -> list[list[np.ndarray]]:
        samples, size = self._samples(job), job.params["batch_size"]
        return [[sample_checks.images(samples[i * size:(i + 1) * size], job.params), *feeds[1:]]
                for i, feeds in enumerate(chunks)]


@dataclass(frozen=True)
class DatasetJob:
    """One worker's samples of a step in dataset mode: entries ``indices`` of ``dataset`` (an object-store
    reference on the driver, the dataset on the worker), preprocessed with ``params``; ``token`` names the step."""

    dataset: Any
    indices: list[int]
    params: dict[str, Any]
    token: int


@dataclass
class StepTiming:
    """Where the seconds of the last step went (driver clock): ``broadcast`` putting the weights into the
    object store, ``wait`` until every worker's result arrived, ``compute`` the slowest worker's own time
    (loading weights, forward, backward), ``reduce`` summing the gradients and ``update`` the solver;
    ``prepare`` the workers reading and preprocessing their samples (dataset mode), ``restarts`` the workers
    replaced. ``communication`` = wait - compute + broadcast + reduce: the step beyond the computation."""

    prepare: float = 0.0
    broadcast: float = 0.0
    wait: float = 0.0
    compute: float = 0.0
    reduce: float = 0.0
    update: float = 0.0
    restarts: int = 0
    worker_compute: list[float] = field(default_factory=list)

    @property
    def communication(self) -> float:
        """Seconds of the step that are not a worker's computation or the update."""
        return max(self.wait - self.compute, 0.0) + self.broadcast + self.reduce


class DataParallel:
    """Data-parallel training of ``model`` over ``num_workers`` Ray actors (K).

    ``address``: a Ray cluster address (``"ray://host:10001"``, ``"auto"``, ``"host:6379"``); None joins the
    cluster this process is connected to, or the one ``RAY_ADDRESS`` / ``ray start`` on this machine names,
    or starts a local one (shut down again by :meth:`shutdown`). Each worker takes
    ``threads_per_worker`` CPUs and runs its engine with that many threads. Workers must be able to import
    ``onnx_dl`` (install ``onnx_dl[ray]`` on every node; a local cluster started here gets this package's
    folder on its ``PYTHONPATH``). A worker that does not start within ``start_timeout`` seconds, or a
    cluster without the CPUs, raises :class:`DLRuntimeError`. A worker that dies during a step is replaced
    and its share run again, at most ``max_restarts`` times per step. CPU runtime only.

    The model handle stays the user's: ``apply_dl_model``, ``write_dl_model`` and ``get_dl_model_param``
    on it see the trained state; its weights, solver state and running statistics live on the driver.

    ``dataset``: a DLDataset whose image files every worker can read (shared storage): it goes to the
    workers once, and :meth:`train_dataset_batch` then takes the entries' indices instead of samples.
    """

    def __init__(self, model: DLModel, num_workers: int = 2, address: str | None = None, *,
                 threads_per_worker: int = 1, start_timeout: float = 120.0, max_restarts: int = 3,
                 dataset: dict[str, Any] | None = None) -> None:
        if not isinstance(model, DLModel):
            raise DLParamError(f"DataParallel: expected a DLModel (from read_dl_model), got {type(model).__name__}")
        if not isinstance(num_workers, int) or num_workers < 1:
            raise DLParamError(f"DataParallel, num_workers: expected an int >= 1, got {num_workers!r}")
        if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise DLParamError(f"DataParallel, threads_per_worker: expected an int >= 1, got {threads_per_worker!r}")
        self.model, self.num_workers, self.threads = model, num_workers, threads_per_worker
        self.start_timeout, self.max_restarts = start_timeout, max_restarts
        self.timing = StepTiming()
        self._ray = _ray()
        self._started_ray = self._connect(address)
        self._trainer: Trainer | None = None  # the model's trainer whose graph the workers hold
        self._graph_ref: Any = None
        self._chunk_size: int | None = None  # the images per chunk the sessions are built for (the driver's)
        self._token = 0  # numbers the dataset-mode steps
        self._dataset_ref: Any = None
        self.dataset = dataset  # the dataset the workers read themselves (train_dl_model then sends indices)
        self._actor_class = self._ray.remote(num_cpus=threads_per_worker)(GradientWorker)
        self._workers: list[Any] = []
        try:
            self._check_resources()
            self._workers = [self._actor_class.remote() for _ in range(num_workers)]
            self._wait_started(self._workers)
            if dataset is not None:
                self._dataset_ref = self._ray.put(dataset)
        except BaseException:
            self.shutdown()
            raise

    # -- the cluster ----------------------------------------------------------------------------
    def _connect(self, address: str | None) -> bool:
        """Join or start the Ray cluster; True when this runner started it."""
        ray = self._ray
        if ray.is_initialized():
            return False
        if address is None and not os.environ.get("RAY_ADDRESS"):
            try:  # a cluster started with `ray start` on this machine
                ray.init(address="auto", logging_level="warning")
                return False
            except (ConnectionError, RuntimeError, ValueError):
                pass
            package_root = str(Path(__file__).resolve().parent.parent)
            path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": path}}, include_dashboard=False,
                     logging_level="warning")
            return True
        try:
            ray.init(address=address, logging_level="warning")
        except Exception as exc:
            raise DLRuntimeError(f"DataParallel: cannot join the Ray cluster at {address or os.environ['RAY_ADDRESS']!r}: "
                                 f"{exc}") from exc
        return False

    def _check_resources(self) -> None:
        cpus = self._ray.cluster_resources().get("CPU", 0)
        needed = self.num_workers * self.threads
        if cpus < needed:
            raise DLRuntimeError(f"DataParallel: {self.num_workers} workers of {self.threads} CPU each need {needed} "
                                 f"CPUs; the Ray cluster has {cpus:g}")

    def _wait_started(self, workers: list[Any]) -> None:
        ray = self._ray
        try:
            ray.get([w.ready.remote() for w in workers], timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError as exc:
            raise DLRuntimeError(f"DataParallel: the workers did not start within {self.start_timeout:g} s (free "
                                 f"resources: {ray.available_resources()})") from exc
        except ray.exceptions.RayError as exc:
            raise DLRuntimeError(f"DataParallel: a worker could not start (is onnx_dl installed on every node? "
                                 f"pip install \"onnx_dl[ray]\"): {exc}") from exc

    def _replace(self, index: int) -> None:
        """A fresh worker in place of the dead one ``index``, holding the current graph."""
        self._ray.kill(self._workers[index], no_restart=True)
        worker = self._actor_class.remote()
        self._wait_started([worker])
        if self._graph_ref is not None:
            self._ray.get(worker.load_graph.remote(self._graph_ref, self.threads,
                                                   system.get_system("cudnn_deterministic"), self._chunk_size))
        self._workers[index] = worker

    def die_during_next_step(self, worker: int) -> None:
        """Fault injection (tests, drills): worker ``worker`` ends its process inside the next step."""
        self._ray.get(self._workers[worker].die_during_next_step.remote())

    def shutdown(self) -> None:
        """Stop the workers (and the local Ray cluster if this runner started it). The model stays usable."""
        ray = self._ray
        for worker in self._workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # noqa: BLE001 (already gone)
                pass
        self._workers = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # -- one step -------------------------------------------------------------------------------
    def _sync_graph(self, trainer: Trainer) -> None:
        """Give every worker the model's training graph when the model built a new trainer."""
        if trainer is self._trainer:
            return
        self._trainer = None
        self._graph_ref = self._ray.put(trainer.graph)
        self._chunk_size = getattr(trainer.session, "chunk_size", None)
        deterministic = system.get_system("cudnn_deterministic")
        everyone = [(w, range(0)) for w in range(len(self._workers))]
        self._on_each(everyone, lambda w, r: self._workers[w].load_graph.remote(self._graph_ref, self.threads,
                                                                                  deterministic, self._chunk_size))
        self._trainer = trainer

    def _busy(self, chunks: int) -> list[tuple[int, range]]:
        """(worker, its chunk range) for the workers that get chunks of a step of ``chunks``."""
        return [(w, r) for w, r in enumerate(shares(chunks, len(self._workers))) if len(r)]

    def _on_each(self, parts: list[tuple[int, range]], submit: Any) -> list[Any]:
        """``submit(worker, range)`` for each part, their results in part order; a worker that dies is
        replaced and its part submitted again (at most ``max_restarts`` times per step)."""
        ray = self._ray
        pending = {w: submit(w, r) for w, r in parts}
        found: dict[int, Any] = {}
        while pending:
            w, ref = next(iter(pending.items()))
            try:
                found[w] = ray.get(ref)
                del pending[w]
            except ray.exceptions.RayTaskError as exc:
                raise _cause(exc) from exc
            except ray.exceptions.RayActorError as exc:
                self.timing.restarts += 1
                if self.timing.restarts > self.max_restarts:
                    raise DLRuntimeError(f"DataParallel: workers died {self.timing.restarts} times in one step; "
                                         f"the model is unchanged: {exc}") from exc
                self._replace(w)
                pending[w] = submit(w, dict(parts)[w])
        return [found[w] for w, _ in parts]

    def _check_model(self) -> dict[str, Any]:
        if not self._workers:
            raise DLRuntimeError("DataParallel: the runner was shut down")
        params = self.model.params
        if params["runtime"] != "cpu":
            raise DLParamError(f"DataParallel: runs on the 'cpu' runtime; the model has {params['runtime']!r}")
        self.timing = StepTiming()
        return params

    def train_dl_model_batch(self, samples: list[dict[str, Any]]) -> dict[str, float]:
        """:func:`onnx_dl.operators.train_dl_model_batch` with the chunks on the workers: same arguments,
        result and guarantees (on any error, on any worker, the model is left exactly as it was)."""
        model = self.model
        with model.lock:
            params = self._check_model()
            batch = sample_checks.check_sample_list(samples, "train_dl_model_batch")
            chunks = sample_checks.chunk_count(len(batch), params["batch_size"], params["batch_size_multiplier"])
            feeds, informative, state = model.kind.train_chunks(batch, params, chunks)
            return self._step(params, feeds, informative, state)

    def train_dataset_batch(self, indices: list[int]) -> dict[str, float]:
        """One step on the entries ``indices`` of the runner's ``dataset`` (on storage every worker reads).

        Each worker reads and preprocesses its own chunks' samples (``gen_dl_samples`` then
        ``preprocess_dl_samples``, as ``train_dl_model`` does) and returns their annotations only; the driver
        computes the step's feeds from those (zeros standing in for the images) and the workers put their
        images in. Equals ``train_dl_model_batch`` on the preprocessed samples; the driver holds no image.
        """
        model = self.model
        with model.lock:
            params = self._check_model()
            if self._dataset_ref is None:
                raise DLParamError("DataParallel.train_dataset_batch: the runner has no dataset; pass "
                                   "DataParallel(model, ..., dataset=dataset)")
            indices = [int(i) for i in indices]
            size = params["batch_size"]
            chunks = sample_checks.chunk_count(len(indices), size, params["batch_size_multiplier"])
            self._token += 1
            jobs = {w: DatasetJob(self._dataset_ref, indices[r.start * size:r.stop * size], params, self._token)
                    for w, r in self._busy(chunks)}
            start = time.perf_counter()
            found = self._on_each(self._busy(chunks), lambda w, r: self._workers[w].prepare.remote(jobs[w]))
            self.timing.prepare = time.perf_counter() - start
            blank = np.broadcast_to(np.float32(0), sample_checks.image_hwc_shape(params))
            annotated = [dict(sample, image=blank) for part in found for sample in part]
            feeds, informative, state = model.kind.train_chunks(annotated, params, chunks)
            for chunk in feeds:
                if chunk[0].shape != (size, *P.image_shape(params)):
                    raise DLRuntimeError(f"DataParallel: model type {params['type']!r} does not feed the images "
                                         f"first; its dataset mode is not supported")
            return self._step(params, [[None, *chunk[1:]] for chunk in feeds], informative, state, jobs)

    def _step(self, params: dict[str, Any], feeds: list[list[Any]], informative: bool, state: dict[str, Any],
              jobs: dict[int, DatasetJob] | None = None) -> dict[str, float]:
        """Gradients on the workers, their sum in worker order, one update on the driver (model lock held)."""
        model, ray, timing = self.model, self._ray, self.timing
        chunk_size = params["batch_size"]
        trainer = model.trainer()
        trainer.check_batchnorm_size(chunk_size)
        self._sync_graph(trainer)
        start = time.perf_counter()
        weights = ray.put(flat_parameters(trainer))
        timing.broadcast = time.perf_counter() - start
        results = self._on_each(self._busy(len(feeds)), lambda w, r: self._workers[w].gradients.remote(
            weights, feeds[r.start:r.stop], params, r.start, len(feeds), jobs[w] if jobs else None))
        timing.wait = time.perf_counter() - start - timing.broadcast
        timing.worker_compute = [seconds for _, _, seconds in results]
        timing.compute = max(timing.worker_compute)
        outputs = [out for _, per_chunk, _ in results for out in per_chunk]
        totals = trainer.loss_totals(outputs)  # chunk order, as the single process adds them
        if not informative:
            return totals
        start = time.perf_counter()
        gradient = np.array(results[0][0], np.float32)  # a writable copy
        for other, _, _ in results[1:]:
            np.add(gradient, other, out=gradient)
        timing.reduce = time.perf_counter() - start
        start = time.perf_counter()
        try:
            load_gradients(trainer, gradient)
            trainer.apply_gradients(params, [out["batch_stats"] for out in outputs], chunk_size)
        except BaseException:
            trainer.session.reset_grad()
            raise
        timing.update = time.perf_counter() - start
        model.weights_changed()
        model.set_training_state(state)
        return totals


def _cause(exc: Any) -> BaseException:
    """The library error a worker raised (its own type and message), else a DLRuntimeError naming it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, DLError):
        return cause
    return DLRuntimeError(f"DataParallel: a worker failed: {cause if cause is not None else exc}")
