"""The model handle: an inference graph, its parameters and, once trained, its engine state."""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np
import onnx

from . import batch_axis, foreign, freezing, summary, system, tasks, training_graph
from . import model_type as types
from . import graph as g
from . import params as P
from .engine import runtime
from .errors import DLModelFileError, DLParamError
from .solvers import SOLVERS
from .trainer import Trainer

PROBABILITIES = tasks.classification.PROBABILITIES  # the output a written classifier ends in: softmax over the class axis
DEFAULT_IMAGE_SIZE = 224  # for foreign networks whose input size is symbolic


class DLModel:
    """A deep-learning model handle (HALCON's DLModelHandle).

    Use the operators (``get_dl_model_param``, ``train_dl_model_batch``, ...) rather than its
    methods. One model may be used from several threads: calls on it are serialised by a lock.
    """

    def __init__(self, network: onnx.ModelProto, params: dict[str, Any]) -> None:
        self._network = network
        self._params = params
        self._trainer: Trainer | None = None
        self._trainer_key: tuple[Any, ...] | None = None
        self._inference: Any = None
        self._inference_key: tuple[Any, ...] | None = None
        self._weights_changed = False
        self._resume: tuple[str, int, dict[str, dict[str, np.ndarray]]] | None = None
        self.lock = threading.RLock()

    def __repr__(self) -> str:
        p = self._params
        return (f"DLModel(type={p['type']!r}, classes={len(p['class_ids'])}, "
                f"image={p['image_width']}x{p['image_height']}x{p['image_num_channels']}, solver={p['solver_type']!r})")

    @property
    def kind(self) -> types.ModelType:
        """This model's type (:mod:`onnx_dl.model_type`): the module implementing it."""
        return types.get(self._params["type"])

    @property
    def params(self) -> dict[str, Any]:
        """The stored parameters (read-only use; change them with set_param)."""
        return self._params

    # -- parameters ---------------------------------------------------------------------------
    def get_param(self, name: str) -> Any:
        """The value of parameter ``name``."""
        P.spec(name, self._params["type"])
        p = self._params
        if name in P.SET_ONLY:
            raise DLParamError(f"parameter {name!r} can only be set (HALCON has no value to read back either)")
        if name == "num_classes":
            return len(p["class_ids"])
        if name in ("image_dimensions", "input_dimensions"):
            return [p["image_width"], p["image_height"], p["image_num_channels"]]
        if name == "image_size":
            return [p["image_width"], p["image_height"]]
        if name == "device":
            return p["gpu"]
        if name == "min_version":
            return str(P.FORMAT_VERSION)
        if name == "layer_names":
            return [node.name or node.output[0] for node in self.inference_graph().graph.node]
        if name == "num_trainable_params":
            inits = g.initializers(self._network)
            frozen = freezing.frozen_weights(self._network, p, self.kind.head_weights)
            return int(sum(np.prod(inits[w].dims) for w in g.weight_names(self._network) if w not in frozen))
        if name == "summary":
            return self._summary()
        if name == "class_weights":
            return P.class_weight_array(p).astype(float).tolist()
        value = p[name]
        return type(value)(value) if isinstance(value, (list, dict)) else value

    def _summary(self) -> list[str]:
        """HALCON's ``summary`` of the inference graph (:func:`onnx_dl.summary.layer_summary`)."""
        frozen = freezing.frozen_weights(self.network(), self._params, self.kind.head_weights)
        return summary.layer_summary(self.network(), self.inference_graph(), P.image_shape(self._params), frozen)

    def set_param(self, name: str, value: Any) -> None:
        """Validate and set parameter ``name``; on any error nothing changes."""
        P.settable_spec(name, self._params["type"])
        if name == "image_dimensions":
            self._set_image_dimensions(P.coerce(name, value, self._params["type"]))
            return
        if name == "image_size":
            self._set_image_size(P.coerce(name, value, self._params["type"]))
            return
        if name == "runtime_init":
            P.coerce(name, value, self._params["type"])
            self._init_runtime()
            return
        value = P.coerce(name, value, self._params["type"])
        if name == "device":  # the same index as 'gpu'
            name = "gpu"
        drop_solver = name == "optimize_for_inference" and value != self._params["optimize_for_inference"]
        candidate = dict(self._params, **{name: value})
        network = self._network
        if name == "class_ids" and len(value) != len(self._params["class_ids"]):
            network = self.kind.with_classes(self.network(), self._params, value)
            candidate["class_names"] = [str(i) for i in value]
            candidate["class_weights"] = None
        implies = getattr(self.kind, "implied_params", None)  # optional: a parameter that sets others (OCR's alphabet)
        implied = implies(name, value, candidate) if implies is not None else {}
        renetwork = getattr(self.kind, "network_for", None)  # optional: a new network for a parameter (OCR's alphabet)
        changed = renetwork(name, value, self.network(), self._params) if renetwork is not None else None
        if changed is not None:
            network = changed
        elif implied.get("class_ids") is not None and len(implied["class_ids"]) != len(self._params["class_ids"]):
            network = self.kind.with_classes(self.network(), self._params, implied["class_ids"])
        candidate.update(implied)
        if name == "runtime":
            runtime.require_device(value)
        if name == "batch_size":
            check_batch_size(network, value)
        P.check_consistent(candidate)
        if name in ("freeze_backbone", "frozen_layers"):
            freezing.frozen_weights(network, candidate, self.kind.head_weights)  # raises for a name that matches no weight
        if name in ("image_width", "image_height"):
            check_network(network, candidate, probe=True)
        self._commit(network, candidate)
        if drop_solver:  # both ways: True forgets the state, False starts from a fresh one
            self._drop_solver_state()

    def _set_image_dimensions(self, dims: list[int]) -> None:
        if len(dims) != 3 or min(dims) < 1:
            raise DLParamError(f"parameter 'image_dimensions': expected [width, height, channels], got {dims}")
        if dims[2] != self._params["image_num_channels"]:
            raise DLParamError(f"parameter 'image_dimensions': the network takes {self._params['image_num_channels']} "
                               f"channels (fixed by its first layer), got {dims[2]}")
        self._resize(dims[0], dims[1])

    def _set_image_size(self, size: list[int]) -> None:
        if len(size) != 2 or min(size) < 1:
            raise DLParamError(f"parameter 'image_size': expected [width, height], both >= 1, got {size}")
        self._resize(size[0], size[1])

    def _resize(self, width: int, height: int) -> None:
        candidate = dict(self._params, image_width=width, image_height=height)
        P.check_consistent(candidate)
        check_network(self._network, candidate, probe=True)
        self._commit(self._network, candidate)

    def _init_runtime(self) -> None:
        """``runtime_init`` 'immediately': build the inference session and, unless the model is optimized for
        inference, the training session now instead of at the first call that needs them."""
        if not self._params["optimize_for_inference"]:
            self.trainer()
        self._inference_session()

    def _drop_solver_state(self) -> None:
        """Forget the engine's training state (solver state, step count, a stored one to resume); the trained
        weights and batch-norm statistics move into the network first."""
        self.network()
        self._trainer = self._trainer_key = self._resume = None
        self._inference = None  # it was fed the trainer's live buffers; a new one takes the network's weights

    def check_trainable(self) -> None:
        """Raise unless the model may be trained (``optimize_for_inference`` is False)."""
        if self._params["optimize_for_inference"]:
            raise DLParamError("the model cannot be trained: parameter 'optimize_for_inference' is True (its solver "
                               "state was dropped); set it to False to train again from a fresh solver state")

    def _commit(self, network: onnx.ModelProto, params: dict[str, Any]) -> None:
        params = network_params(self.kind, network, params, self._params if network is self._network else None)
        if network is not self._network:
            self._network = network
            self._inference = None
        self._params = params

    # -- graphs and sessions ------------------------------------------------------------------
    def network(self) -> onnx.ModelProto:
        """The inference graph with the current weights."""
        if self._trainer is not None and self._weights_changed:
            g.set_initializers(self._network, self._trainer.weights())
            self._weights_changed = False
        return self._network

    def inference_graph(self) -> onnx.ModelProto:
        """The network ending in what ``apply_dl_model`` reads: class probabilities over axis 1
        (classification, segmentation: what ``write_dl_model`` writes), class scores and box deltas
        per level (detection)."""
        return self.kind.inference_graph(self.network(), self._params)

    def trainer(self) -> Trainer:
        """The engine state for training, (re)built when the graph, size, runtime or CUDA device changed,
        or the weight prior changed between 0 and positive;
        refused while ``optimize_for_inference`` is True."""
        self.check_trainable()
        p = self._params
        key = (id(self._network), p["image_width"], p["image_height"], p["runtime"], self._device_id(),
               system.generation(), p["freeze_backbone"], tuple(p["frozen_layers"]), p["weight_prior"] > 0)
        if self._trainer is not None and self._trainer_key == key:
            return self._trainer
        network = self.network()  # current weights, before the old trainer goes
        frozen = freezing.frozen_weights(network, p, self.kind.head_weights)
        tg = self.kind.build_training_graph(freezing.training_form(network, frozen), p)
        if p["weight_prior"] == 0:  # HALCON's default: no prior gradient to compute (rebuilt when it becomes > 0)
            tg = training_graph.without_weight_prior(tg)
        inits = g.initializers(network)
        running = {name: onnx.numpy_helper.to_array(inits[name]) for bn in tg.batchnorms for name in (bn.mean, bn.var)}
        kind, steps, state = self.solver_state() or (p["solver_type"], 0, None)
        if kind != p["solver_type"]:  # the solver changed since: it starts from zero
            steps, state = 0, None
        self._trainer = Trainer(tg, running, p, p["runtime"], system.get_system("thread_num"),
                                system.get_system("cudnn_deterministic"), state, steps)
        self._trainer_key = key
        self._resume = None
        return self._trainer

    def _device_id(self) -> int:
        """The CUDA device index the sessions use: parameter 'gpu' with runtime 'gpu', 0 (unused) on the CPU."""
        return self._params["gpu"] if self._params["runtime"] == "gpu" else 0

    def solver_state(self) -> tuple[str, int, dict[str, dict[str, np.ndarray]]] | None:
        """(solver kind, steps taken, state arrays per parameter), or None before any training."""
        if self._trainer is not None:
            solver = self._trainer.solver
            return solver.kind, solver.step_count, solver.state_arrays()
        return self._resume

    def solver_steps(self) -> int:
        """The solver steps taken (0 before any training): :meth:`solver_state`'s count without copying the state."""
        if self._trainer is not None:
            return int(self._trainer.solver.step_count)
        return int(self._resume[1]) if self._resume is not None else 0

    def resume_solver(self, kind: str, steps: int, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Continue with this solver state (read from a file) at the next training step."""
        if kind not in SOLVERS or steps < 0:
            raise DLModelFileError(f"stored solver state: unknown solver {kind!r} or step count {steps}")
        if not self._params["optimize_for_inference"]:  # a model optimized for inference keeps none
            self._resume = (kind, steps, state)

    def set_training_state(self, values: dict[str, Any]) -> None:
        """Record the training state a successful step computed (read-only parameters listed in
        ``TRAINING_STATE`` of its type, e.g. a detector's ``positive_anchor_average``)."""
        unknown = set(values) - set(self.kind.TRAINING_STATE)
        if unknown:
            raise DLParamError(f"set_training_state: {sorted(unknown)} are not training state")
        if values:
            self._params = dict(self._params, **values)

    def weights_changed(self) -> None:
        """Note that a training step changed the weights held by the engine."""
        self._weights_changed = True

    def _inference_session(self) -> Any:
        """The session of the inference graph, built once per graph, runtime and system settings.

        Trained weights and BN statistics are also graph inputs, so each call feeds the live
        values (the engine's buffers, bound without a copy on the CPU) instead of rebuilding a
        session after every training step.
        """
        p = self._params
        key = (id(self._network), p["runtime"], self._device_id(), system.generation())
        if self._inference is None or self._inference_key != key:
            deterministic = system.get_system("cudnn_deterministic")
            model = self.inference_graph()
            inits = g.initializers(model)
            live = g.weight_names(model) + [n for bn in g.batchnorm_stats(model) for n in (bn.mean, bn.var)]
            for name in live:
                model.graph.input.append(onnx.helper.make_tensor_value_info(name, inits[name].data_type,
                                                                            list(inits[name].dims)))
            self._inference = runtime.inference_session(model, p["runtime"], system.get_system("thread_num"),
                                                        deterministic, device_id=self._device_id())
            self._inference_key = key
        return self._inference

    def predict(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the inference graph for an NCHW batch, with the current weights."""
        session = self._inference_session()
        count, fixed = len(batch), batch_axis.fixed_batch(self._network)
        padded = fixed is not None and count < fixed
        if padded:  # a network with a fixed batch: pad with zero images (each image runs on its own)
            batch = np.concatenate([batch, np.zeros((fixed - count, *batch.shape[1:]), batch.dtype)])
        feeds = {session.get_inputs()[0].name: np.ascontiguousarray(batch, np.float32)}
        if self._trainer is not None:  # initializers given as feeds override the graph's values
            for name in self._trainer.session.trainable:
                feeds[name] = self._trainer.session.parameter(name)
            for name, value in self._trainer.running.items():
                feeds[name] = value
        outputs = session.run(None, feeds)
        return [out[:count] for out in outputs] if padded else outputs


def check_batch_size(network: onnx.ModelProto, value: int) -> None:
    """Raise unless the network runs batches of ``value`` images (an exported network may be fixed to one size)."""
    fixed = batch_axis.fixed_batch(network)
    if fixed is not None and value != fixed:
        raise DLParamError(f"parameter 'batch_size': {batch_axis.fixed_batch_reason(network)}; got {value}")


def check_network(network: onnx.ModelProto, params: dict[str, Any], probe: bool = False) -> None:
    """Raise unless the network maps an image of the parameters' size to the outputs its type needs.

    Shape inference alone misses some mismatches (it skips Gemm's inner size); ``probe`` adds a
    forward pass of a zero image.
    """
    dims = [batch_axis.fixed_batch(network) or 1, *P.image_shape(params)]
    try:
        shapes = g.tensor_shapes(g.with_input_shape(network, dims))
    except DLModelFileError as exc:
        raise DLParamError(f"the network does not accept {dims[3]} x {dims[2]} x {dims[1]} images: {exc}") from exc
    expected = types.get(params["type"]).output_shapes(network, params)
    found = {name: shapes.get(name) for name in expected}
    if probe or any(shape is None or None in shape for shape in found.values()):
        found = _forward_shapes(network, dims, list(expected))
    for name, shape in found.items():
        if list(shape[1:]) != expected[name]:  # type: ignore[index]
            raise DLParamError(f"the network maps {dims[3]} x {dims[2]} x {dims[1]} images to {name!r} of shape "
                               f"{shape}; expected (N, {', '.join(map(str, expected[name]))})")


def _forward_shapes(network: onnx.ModelProto, dims: list[int], tensors: list[str]) -> dict[str, list[int]]:
    """The shapes of ``tensors`` from one forward pass of a zero image (needs the engine)."""
    probe = copy.deepcopy(network)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in tensors)
    try:
        outputs = runtime.forward(probe, {g.image_input(probe).name: np.zeros(dims, np.float32)})
    except Exception as exc:
        raise DLParamError(f"the network does not accept {dims[3]} x {dims[2]} x {dims[1]} images: {exc}") from exc
    return {name: list(out.shape) for name, out in zip(tensors, outputs)}


def from_network(network: onnx.ModelProto, model_type: str, stored: dict[str, Any] | None = None) -> DLModel:
    """A model handle for ``network`` with default parameters, overridden by ``stored`` ones."""
    kind = types.get(model_type)  # raises for an unknown type
    network = foreign.prepare(g.supported_opset(network))
    channels, height, width = g.input_dims(network)
    if channels is None:
        raise DLModelFileError("the image input has a symbolic channel count; expected a fixed C in (N, C, H, W)")
    params = P.defaults(model_type)
    params.update({"type": model_type, "image_num_channels": channels,
                   "image_width": width or DEFAULT_IMAGE_SIZE, "image_height": height or DEFAULT_IMAGE_SIZE})
    for name, value in (stored or {}).items():
        if name in params and name not in P.DERIVED:
            params[name] = P.coerce(name, value, model_type) if value is not None else None
    fixed = batch_axis.fixed_batch(network)
    if fixed is not None and params["batch_size"] != fixed:
        if "batch_size" in (stored or {}):
            check_batch_size(network, params["batch_size"])
        params["batch_size"] = fixed  # the only size such a network runs
    classes = kind.num_classes(network, params)  # a detector's depends on its anchors
    if params.get("class_ids") is None:
        params["class_ids"] = list(range(classes))
    if params.get("class_names") is None:
        params["class_names"] = [str(i) for i in params["class_ids"]]
    if len(params["class_ids"]) != classes:
        raise DLModelFileError(f"the stored class_ids list {len(params['class_ids'])} classes, the network "
                               f"predicts {classes}")
    P.check_consistent(params)
    check_network(network, params)
    return DLModel(network, network_params(kind, network, params))


def network_params(kind: types.ModelType, network: onnx.ModelProto, params: dict[str, Any],
                   previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """``params`` with the read-only parameters a type reads off its network at the image size (optional
    ``network_params`` of the type: OCR's ``num_time_steps``); ``previous``: the parameters before this
    change of the same network, whose values the type may keep when nothing they depend on changed."""
    read = getattr(kind, "network_params", None)
    return {**params, **read(network, params, previous)} if read is not None else params
