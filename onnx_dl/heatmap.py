"""HALCON's ``gen_dl_model_heatmap``: where a classifier looks, by Grad-CAM (Selvaraju et al., 2017).

For a feature map A (C maps of h x w) and the score y_c of a target class c (the logit, before the
softmax):

    alpha_k = mean_{i,j} dy_c / dA_k[i, j]
    map     = ReLU(sum_k alpha_k * A_k)                          (h x w)
    heatmap = bilinear(map, image size) / max(bilinear(map))     (0 everywhere if the max is 0)

The gradient comes from the training engine without touching the model: a copy of the network in
inference form (every weight a constant, batch norm a fixed affine map with the running statistics,
Dropout off) gets a zero-valued offset added to A, its only trainable tensor, and its loss is
y_c; the engine's gradient of that offset is dy_c / dA. The model's weights, solver state and
engine session are never read for writing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from . import batch_axis, freezing, rewrites, score_head, system
from . import graph as g
from .engine.session import TrainingSession
from .errors import DLParamError
from .model import DLModel
from .onnx_builder import GraphBuilder
from .operators import apply_dl_model
from .preprocess import resize_bilinear
from .samples import check_sample_list, images
from .training_graph import TrainingGraph

HEATMAP_METHODS = ("grad_cam",)
HEATMAP_GEN_PARAMS = ("target_conv_layer",)
RESULT_KEY = "heatmap_grad_cam"
SCORE = "heatmap/class_score"          # the loss of the gradient graph: sum_n y[n, c_n]
CLASS_MASK = "heatmap/class_mask"      # (N, K): 1 at each sample's target class
OFFSET = "heatmap/feature_offset"      # zeros (1, C, h, w) added to the feature map
FEATURES = "heatmap/features"          # the feature map A, as an output


def gen_dl_model_heatmap(model: DLModel, samples: dict[str, Any] | Sequence[dict[str, Any]],
                         heatmap_method: str = "grad_cam", target_classes: Any = None,
                         gen_param: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """HALCON's ``gen_dl_model_heatmap(DLModelHandle, DLSample, HeatmapMethod, TargetClasses, GenParam)``
    for a classification model: one result dict per (preprocessed) sample.

    - ``heatmap_method``: ``'grad_cam'`` (HALCON's ``'guided_grad_cam'`` is not offered);
    - ``target_classes``: ``None`` or ``[]`` (HALCON's empty tuple): each sample's top class; or one
      class id (an int or a one-element list) for every sample (HALCON takes a single value only);
    - ``gen_param``: ``{'target_conv_layer': name}``, the feature map A: a tensor name or the name of
      the node producing it. Default: walking back from the class scores, the first tensor of rank 4
      with more than one pixel (the input of the global pooling in resnet-style networks: the last
      convolutional feature map).

    Each result holds the classification results of ``apply_dl_model`` and ``'heatmap_grad_cam'``:
    ``{'heatmap': (H, W) float32 in [0, 1] at the model's image size, 'target_class_id': id,
    'target_class_name': name, 'target_conv_layer': tensor name}``, computed as in the module
    docstring. HALCON's pages do not say how the map is scaled; ours is divided by its maximum.
    The model is left exactly as it was (weights, batch-norm statistics, solver state). Each call builds
    its own gradient session (about 2 s for resnet18 at 96 x 96): pass all samples in one call.
    """
    if not isinstance(model, DLModel):
        raise DLParamError(f"gen_dl_model_heatmap: expected a DLModel (from read_dl_model), got {type(model).__name__}")
    with model.lock:
        params = model.params
        if params["type"] != "classification":
            raise DLParamError(f"gen_dl_model_heatmap: expected a 'classification' model, got a {params['type']!r} "
                               f"model (HALCON computes heatmaps for classifiers only)")
        if heatmap_method not in HEATMAP_METHODS:
            raise DLParamError(f"gen_dl_model_heatmap: heatmap_method: expected one of {list(HEATMAP_METHODS)}, "
                               f"got {heatmap_method!r}")
        layer = _checked_gen_param(gen_param)
        target = _checked_target(target_classes, params["class_ids"])
        batch = check_sample_list(samples, "gen_dl_model_heatmap")
        pixels = images(batch, params)
        results = apply_dl_model(model, batch)
        graph = grad_cam_graph(model.network(), params, layer)
        session = TrainingSession(graph.training, params["runtime"], system.get_system("thread_num"),
                                  system.get_system("cudnn_deterministic"), params["gpu"])
        for index, result in enumerate(results):
            class_id = result["classification_class_ids"][0] if target is None else target
            features, gradient = graph.run(session, pixels[index], params["class_ids"].index(class_id))
            result[RESULT_KEY] = {
                "heatmap": grad_cam_heatmap(features, gradient, (params["image_height"], params["image_width"])),
                "target_class_id": class_id,
                "target_class_name": params["class_names"][params["class_ids"].index(class_id)],
                "target_conv_layer": graph.feature_map,
            }
        return results


def grad_cam_heatmap(features: np.ndarray, gradient: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The Grad-CAM heatmap (height, width) of one sample from its feature map A (C, h, w) and dy_c / dA
    (C, h, w): ReLU(sum_k alpha_k A_k) with alpha_k = mean_ij dy_c / dA_k[i, j], resized bilinearly
    (pixel-centred) to ``size`` and divided by its maximum (all zeros if that is 0)."""
    alpha = gradient.astype(np.float64).mean(axis=(1, 2))
    cam = np.maximum(np.tensordot(alpha, features.astype(np.float64), axes=1), 0.0).astype(np.float32)
    heatmap = resize_bilinear(cam[:, :, None], *size)[:, :, 0]
    peak = float(heatmap.max())
    return heatmap / np.float32(peak) if peak > 0 else np.zeros_like(heatmap)


def _checked_gen_param(gen_param: Any) -> str | None:
    if gen_param is None:
        return None
    if not isinstance(gen_param, dict):
        raise DLParamError(f"gen_dl_model_heatmap: gen_param: expected a dict with the keys {list(HEATMAP_GEN_PARAMS)}, "
                           f"got {type(gen_param).__name__}")
    unknown = [key for key in gen_param if key not in HEATMAP_GEN_PARAMS]
    if unknown:
        raise DLParamError(f"gen_dl_model_heatmap: gen_param: unknown key(s) {unknown}; expected one of "
                           f"{list(HEATMAP_GEN_PARAMS)}")
    layer = gen_param.get("target_conv_layer")
    if layer is not None and not isinstance(layer, str):
        raise DLParamError(f"gen_dl_model_heatmap: gen_param 'target_conv_layer': expected a tensor or node name, "
                           f"got {layer!r}")
    return layer


def _checked_target(target_classes: Any, class_ids: list[int]) -> int | None:
    """The one target class id, or None for each sample's top class."""
    if target_classes is None or (isinstance(target_classes, (list, tuple)) and len(target_classes) == 0):
        return None
    value = target_classes
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != 1:
            raise DLParamError(f"gen_dl_model_heatmap: target_classes: expected one class id or an empty list "
                               f"(as in HALCON), got {list(value)}")
        value = value[0]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or int(value) not in class_ids:
        raise DLParamError(f"gen_dl_model_heatmap: target_classes: expected a class id of the model "
                           f"({class_ids[:20]}{' ...' if len(class_ids) > 20 else ''}), got {value!r}")
    return int(value)


# --- the gradient graph ---------------------------------------------------------------------------

@dataclass
class GradCamGraph:
    """The training graph whose loss is the target class score and whose one trainable tensor is a zero
    offset on the feature map ``feature_map``; ``batch`` is the batch it runs (the network's fixed batch,
    else 1)."""

    training: TrainingGraph
    feature_map: str
    batch: int
    num_classes: int

    def run(self, session: TrainingSession, image: np.ndarray, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(A, dy_c / dA) of one (C, H, W) image for the class at ``class_index``, each (C, h, w)."""
        batch = np.zeros((self.batch, *image.shape), np.float32)
        batch[0] = image
        mask = np.zeros((self.batch, self.num_classes), np.float32)
        mask[0, class_index] = 1.0  # padding rows of a fixed batch add nothing to the score
        session.reset_grad()
        outputs = session.run([batch, mask])
        gradient = np.array(session.gradient(OFFSET), np.float32, copy=True)[0]
        session.reset_grad()
        return np.asarray(outputs[FEATURES])[0], gradient


def grad_cam_graph(network: onnx.ModelProto, params: dict[str, Any], layer: str | None) -> GradCamGraph:
    """The Grad-CAM gradient graph of ``network`` at the image size of ``params``: the network in inference
    form with every weight a constant, A + offset read by A's consumers, outputs
    [sum_n mask[n] . y[n], A]."""
    fixed = batch_axis.fixed_batch(network)
    batch = fixed or 1
    dims = [batch, params["image_num_channels"], params["image_height"], params["image_width"]]
    constant = freezing.training_form(network, set(g.weight_names(network)))
    model = g.with_input_shape(g.inference_form(constant), dims)
    logits, _ = score_head.logits_output(model)
    shapes = g.tensor_shapes(model)
    image = g.image_input(model).name
    feature_map = _feature_map(model, logits, shapes, layer)
    downstream = _descendants(model, feature_map)
    if any(rewrites.rule_for(n) is not None for n in model.graph.node):
        model = rewrites.for_training(model, downstream)
    del model.graph.output[:]
    b = GraphBuilder(model.graph, prefix="heatmap/")
    offset = b.const(np.zeros([1, *shapes[feature_map][1:]], np.float32), name=OFFSET)
    _add_offset(model, feature_map, offset)
    num_classes = len(params["class_ids"])
    b.input(CLASS_MASK, [batch, num_classes])
    score = b.op("ReduceSum", [b.op("Mul", [logits, CLASS_MASK], "masked_scores")], "score_sum", keepdims=0)
    model.graph.node.append(onnx.helper.make_node("Identity", [score], [SCORE], name="heatmap/score_identity"))
    model.graph.node.append(onnx.helper.make_node("Identity", [feature_map], [FEATURES], name="heatmap/features_identity"))
    b.output(SCORE, [])
    b.output(FEATURES, shapes[feature_map])
    training = TrainingGraph(model=model, inputs=[image, CLASS_MASK], losses=[SCORE],
                             trainable=[OFFSET], batchnorms=[])
    return GradCamGraph(training, feature_map, batch, num_classes)


def _feature_map(model: onnx.ModelProto, logits: str, shapes: dict[str, list[int | None]], layer: str | None) -> str:
    """The tensor named by ``layer`` (a tensor, or a node's first output), or by default the first
    tensor of rank 4 with more than one pixel walking back from ``logits`` along each node's first
    non-constant input."""
    made_by = g.producers(model)
    if layer is not None:
        by_node = {n.name: n.output[0] for n in model.graph.node if n.name and n.output}
        tensor = layer if layer in made_by else by_node.get(layer)
        if tensor is None or not _spatial(shapes.get(tensor)) or logits not in _descendants(model, tensor) | {tensor}:
            candidates = [t for t in _ancestors_path(model, logits, made_by) if _spatial(shapes.get(t))][:5]
            raise DLParamError(f"gen_dl_model_heatmap: gen_param 'target_conv_layer': expected a tensor or node of "
                               f"the network with an (N, C, h, w) output that the class scores depend on, such as "
                               f"{candidates}, got {layer!r}")
        return tensor
    for tensor in _ancestors_path(model, logits, made_by):
        if _spatial(shapes.get(tensor)) and int(np.prod(shapes[tensor][2:])) > 1:  # type: ignore[arg-type]
            return tensor
    raise DLParamError("gen_dl_model_heatmap: the network has no (N, C, h, w) feature map before its class scores; "
                       "name one with gen_param 'target_conv_layer'")


def _spatial(shape: list[int | None] | None) -> bool:
    return shape is not None and len(shape) == 4 and None not in shape


def _ancestors_path(model: onnx.ModelProto, tensor: str, made_by: dict[str, onnx.NodeProto]) -> list[str]:
    """``tensor`` and the tensors before it, following each node's first input that a node produces."""
    path = [tensor]
    node = made_by.get(tensor)
    while node is not None:
        data = next((name for name in node.input if name in made_by and made_by[name].op_type != "Constant"), None)
        if data is None:
            break
        path.append(data)
        node = made_by[data]
    return path


def _descendants(model: onnx.ModelProto, tensor: str) -> set[str]:
    """Every tensor computed from ``tensor`` (nodes are in topological order)."""
    reached = {tensor}
    for node in model.graph.node:
        if any(name in reached for name in node.input):
            reached.update(o for o in node.output if o)
    return reached - {tensor}


def _add_offset(model: onnx.ModelProto, tensor: str, offset: str) -> None:
    """Make every reader of ``tensor`` read ``tensor + offset`` instead (the Add placed after its producer)."""
    shifted = f"{tensor}/heatmap_shifted"
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            if name == tensor:
                node.input[position] = shifted
    add = onnx.helper.make_node("Add", [tensor, offset], [shifted], name="heatmap/add_offset")
    nodes = list(model.graph.node)
    producer = next(i for i, n in enumerate(nodes) if tensor in n.output)
    model.graph.node.insert(producer + 1, add)

