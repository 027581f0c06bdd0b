"""``create_dl_model_detection``: a RetinaNet-style detector built on the feature maps of a classifier.

The classifier loses its classification part (global pooling and what follows). For each level L
of the pyramid (stride 2**L) its *docking layer* is the last backbone tensor whose spatial size
is (H / 2**L, W / 2**L), found by shape inference unless ``backbone_docking_layers`` names them.
On top, as ONNX nodes:

- feature pyramid (Lin et al., FPN): a lateral 1x1 convolution per backbone level, top-down
  addition of the coarser map upsampled 2x (nearest, :func:`onnx_dl.nets._upsample2x`: the engine
  has no CPU gradient for Resize or ConvTranspose), a 3x3 convolution and batch norm per level;
  levels above the deepest backbone level come from stride-2 3x3 convolutions (RetinaNet P6/P7);
- heads shared by all levels (the same initializers at every level): a class tower and a box
  tower of ``depth`` 3x3 conv + ReLU, then a 3x3 convolution to A*K class logits (bias
  -log((1 - 0.01) / 0.01), so every anchor starts at probability 0.01) and to A*4 box deltas;
  a Sigmoid turns the logits into the class scores the graph outputs.

Outputs, in this order: ``class_scores_level_<L>`` (N, A*K, H_L, W_L) for every level, then
``box_deltas_level_<L>`` (N, A*4, H_L, W_L); channel a*K + k is anchor a, class k, and channel
a*4 + j is coordinate j of anchor a's deltas (dr, dc, dh, dw).
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import numpy as np
import onnx

from .. import foreign
from . import detection
from .. import graph as g
from .. import score_head
from .. import params as P
from ..errors import DLModelFileError, DLParamError
from ..model import DLModel, from_network
from ..nets import NetBuilder, _upsample2x
from ..serialization import read_dl_model

CAPACITY = {"low": (32, 1), "medium": (64, 2), "high": (128, 4)}  # (pyramid and head width, head depth)
PRIOR_PROBABILITY = 0.01  # the class heads' initial score (RetinaNet's pi)
PREFIX = detection.HEAD_PREFIX  # every initializer the builder adds starts with it
# Operators that begin the classification part of a classifier: nothing after them is a feature map.
_CLASSIFIER_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Flatten", "Gemm", "MatMul",
                             "ReduceMean", "ReduceMax", "ReduceSum", "Softmax", "LogSoftmax"})
_FIXED_BY_BACKBONE = ("image_num_channels",)


def create(backbone: Any, num_classes: int, params: dict[str, Any] | None = None, seed: int = 0) -> DLModel:
    """A detection model on ``backbone`` (see :func:`onnx_dl.operators.create_dl_model_detection`)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DLParamError(f"num_classes: expected an int >= 1, got {num_classes!r}")
    classifier = classifier_backbone(backbone)
    settings = _parameters(classifier, int(num_classes), params or {}, backbone)
    found = docking_layers(classifier.network(), settings)
    settings["backbone_docking_layers"] = [name for name, _ in found.values()]  # what get_dl_model_param reports
    network = build_network(classifier.network(), settings, seed)
    return from_network(network, "detection", settings)


def classifier_backbone(backbone: Any) -> DLModel:
    """The backbone as a classification model handle: a bundled name, a path, a ModelProto or a handle."""
    if isinstance(backbone, DLModel):
        found = backbone
    elif isinstance(backbone, onnx.ModelProto):
        found = from_network(backbone, "classification")
    elif isinstance(backbone, (str, os.PathLike)):
        found = read_dl_model(backbone, type="classification")
    else:
        raise DLParamError(f"backbone: expected a bundled classifier name, a path to an ONNX classifier, an "
                           f"onnx.ModelProto or a DLModel, got {type(backbone).__name__}")
    if found.params["type"] != "classification":
        raise DLParamError(f"backbone: expected a classification model, got a {found.params['type']} model")
    return found


def _parameters(classifier: DLModel, num_classes: int, given: dict[str, Any], backbone: Any) -> dict[str, Any]:
    """The detector's parameters: defaults, the backbone's image format, then ``given`` (validated)."""
    if not isinstance(given, dict):
        raise DLParamError(f"params: expected a dict of detection parameters, got {type(given).__name__}")
    source = classifier.params
    settings = P.defaults("detection")
    settings.update({name: source[name] for name in ("image_width", "image_height", "image_num_channels",
                                                     "image_range_min", "image_range_max")})
    settings.update(type="detection", class_ids=list(range(num_classes)),
                    backbone=str(backbone) if isinstance(backbone, (str, os.PathLike)) else "<in memory>")
    for name, value in given.items():
        found = P.spec(name, "detection")
        if name == "image_dimensions":
            dims = P.coerce(name, value, "detection")
            if len(dims) != 3:
                raise DLParamError(f"parameter 'image_dimensions': expected [width, height, channels], got {dims}")
            settings.update(image_width=dims[0], image_height=dims[1])
            value, name = dims[2], "image_num_channels"
        elif not found.settable and name not in _FIXED_BY_BACKBONE:
            raise DLParamError(f"parameter {name!r} is read-only")
        coerced = P.coerce(name, value, "detection")
        if name in _FIXED_BY_BACKBONE and coerced != settings[name]:
            raise DLParamError(f"parameter {name!r}: the backbone takes {settings[name]} (fixed by its first layer), "
                               f"got {coerced}")
        settings[name] = coerced
    if len(settings["class_ids"]) != num_classes:
        raise DLParamError(f"parameter 'class_ids': expected {num_classes} ids (num_classes), got "
                           f"{len(settings['class_ids'])}")
    if settings.get("class_names") is None:
        settings["class_names"] = [str(i) for i in settings["class_ids"]]
    P.check_consistent(settings)
    return settings


def build_network(backbone: onnx.ModelProto, params: dict[str, Any], seed: int = 0) -> onnx.ModelProto:
    """The detector graph: the backbone's feature part, the pyramid and the shared heads."""
    maps = docking_layers(backbone, params)
    trunk = _trunk(backbone, [name for name, _ in maps.values()], params)
    b = NetBuilder(trunk.graph, seed)
    width, depth = CAPACITY[params["capacity"]]
    features = _pyramid(b, maps, params["min_level"], params["max_level"], width)
    anchors, classes = detection.num_anchors(params), len(params["class_ids"])
    prior_logit = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
    class_head = _Head(b, "class", width, depth, anchors * classes, prior_logit)
    box_channels = anchors * detection.box_size(params)
    box_head = _Head(b, "box", width, depth, box_channels, 0.0)
    scores, deltas = [], []
    for level, feature in features.items():
        size = [params["image_height"] // 2**level, params["image_width"] // 2**level]
        logits = class_head.apply(feature, f"class_logits_level_{level}")
        scores.append((b.op("Sigmoid", [logits], name=f"class_scores_level_{level}"), [anchors * classes, *size]))
        deltas.append((box_head.apply(feature, f"box_deltas_level_{level}"), [box_channels, *size]))
    for name, shape in scores + deltas:
        b.output(name, ["N", *shape])
    onnx.checker.check_model(trunk)
    return trunk


def _level(shape: list[int | None] | None, height: int, width: int) -> int | None:
    """L >= 1 when ``shape`` is (N, C, height / 2**L, width / 2**L), else None."""
    if not shape or len(shape) != 4 or None in shape[1:] or not shape[2] or not shape[3]:
        return None
    if height % shape[2] or width % shape[3] or height // shape[2] != width // shape[3]:
        return None
    stride = height // shape[2]
    level = stride.bit_length() - 1
    return level if level >= 1 and stride == 2**level else None


def _feature_maps(network: onnx.ModelProto) -> list[str]:
    """Tensors the classifier's scores are computed from that precede its classification part, in
    topological order.

    A node belongs to the classification part when it pools globally (or flattens, or is a dense
    layer), or when every tensor it reads, constants aside, comes from the classification part.
    A node that also reads a feature map does not: the channel gate of a squeeze-and-excitation
    block (efficientnet, mobilenet_v3: x * gate(GlobalAveragePool(x))) yields a feature map.
    """
    needed = foreign._ancestors(network, score_head.logits_output(network)[0])
    constants = set(g.initializers(network)) | {out for node in network.graph.node if node.op_type == "Constant"
                                                for out in node.output}
    after_pooling: set[str] = set()
    found = []
    for node in network.graph.node:
        read = [name for name in node.input if name and name not in constants]
        if node.op_type in _CLASSIFIER_OPS or (read and all(name in after_pooling for name in read)):
            after_pooling.update(node.output)
            continue
        found += [name for name in node.output if name in needed]
    return found


def docking_layers(network: onnx.ModelProto, params: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """{level: (tensor, channels)} of the backbone levels the pyramid uses, from ``min_level`` (or the
    deepest backbone level, if that is lower) to the deepest level up to ``max_level``."""
    height, width = params["image_height"], params["image_width"]
    dims = [1, params["image_num_channels"], height, width]
    try:
        shapes = g.tensor_shapes(g.with_input_shape(network, dims))
    except DLModelFileError as exc:
        raise DLParamError(f"backbone: does not accept {width} x {height} x {dims[1]} images: {exc}") from exc
    given = params["backbone_docking_layers"]
    levels: dict[int, tuple[str, int]] = {}
    for name in given or _feature_maps(network):
        level = _level(shapes.get(name), height, width)
        if given and level is None:
            raise DLParamError(f"parameter 'backbone_docking_layers': {name!r} has shape {shapes.get(name)}; expected "
                               f"(N, C, {height} / 2**L, {width} / 2**L) for a level L >= 1")
        if given and level > params["max_level"]:
            raise DLParamError(f"parameter 'backbone_docking_layers': {name!r} is of level {level} "
                               f"(stride {2**level}), above max_level {params['max_level']}")
        if given and level in levels:
            raise DLParamError(f"parameter 'backbone_docking_layers': {levels[level][0]!r} and {name!r} are both of "
                               f"level {level}")
        if level is not None and level <= params["max_level"]:
            levels[level] = (name, int(shapes[name][1]))  # type: ignore[index, arg-type]
    if not levels:
        raise DLParamError(f"backbone: no feature map of stride 2**L (L = 1 .. {params['max_level']}) at "
                           f"{width} x {height}")
    deepest = max(levels)
    missing = [level for level in range(params["min_level"], deepest + 1) if level not in levels]
    if missing:
        raise DLParamError(f"backbone: no feature map for level(s) {missing} (stride 2**L) at {width} x {height}; "
                           f"backbone levels found: {sorted(levels)}; raise 'min_level' or name "
                           f"'backbone_docking_layers'")
    return {level: levels[level] for level in range(min(params["min_level"], deepest), deepest + 1)}


def _trunk(backbone: onnx.ModelProto, docking: list[str], params: dict[str, Any]) -> onnx.ModelProto:
    """A copy of the backbone with only the nodes the docking layers need, no outputs, and the image
    input fixed to the detector's size."""
    model = copy.deepcopy(backbone)
    needed = set().union(*(foreign._ancestors(model, name) for name in docking))
    nodes = [node for node in model.graph.node if any(out in needed for out in node.output)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    del model.graph.output[:]
    model.graph.name = "detector"
    dims = ["N", *P.image_shape(params)]
    return g.with_input_shape(model, dims)


def _conv(b: NetBuilder, x: str, c_in: int, c_out: int, kernel: int, stride: int, name: str, std: float,
          bias: float | None = 0.0) -> str:
    """Convolution ``kernel`` x ``kernel`` (padding kernel // 2), weights ~ Normal(0, std), bias ``bias``
    (None: no bias)."""
    weight = b.rng.normal(0.0, std, (c_out, c_in, kernel, kernel)).astype(np.float32)
    inputs = [x, b.const(weight, name=f"{PREFIX}{name}.weight")]
    if bias is not None:
        inputs.append(b.const(np.full(c_out, bias, np.float32), name=f"{PREFIX}{name}.bias"))
    pad = kernel // 2
    return b.op("Conv", inputs, f"{name}.conv", kernel_shape=[kernel, kernel], pads=[pad] * 4, strides=[stride] * 2)


def _conv_bn(b: NetBuilder, x: str, c_in: int, c_out: int, stride: int, name: str) -> str:
    """3x3 convolution (no bias) and batch norm; weights ~ Normal(0, sqrt(1 / fan_in))."""
    y = _conv(b, x, c_in, c_out, 3, stride, name, math.sqrt(1.0 / (c_in * 9)), bias=None)
    bn = [b.const(np.ones(c_out, np.float32), name=f"{PREFIX}{name}.bn.scale"),
          b.const(np.zeros(c_out, np.float32), name=f"{PREFIX}{name}.bn.bias"),
          b.const(np.zeros(c_out, np.float32), name=f"{PREFIX}{name}.bn.running_mean"),
          b.const(np.ones(c_out, np.float32), name=f"{PREFIX}{name}.bn.running_var")]
    return b.op("BatchNormalization", [y, *bn], f"{name}.bn", epsilon=1e-5, momentum=0.9)


def _pyramid(b: NetBuilder, maps: dict[int, tuple[str, int]], low: int, high: int, width: int) -> dict[int, str]:
    """{level: feature map (N, width, H / 2**L, W / 2**L)} for ``low`` .. ``high``."""
    deepest = max(maps)
    features: dict[int, str] = {}
    merged = None
    for level in range(deepest, low - 1, -1):  # top-down over the backbone levels
        tensor, channels = maps[level]
        lateral = _conv(b, tensor, channels, width, 1, 1, f"fpn.lateral{level}", math.sqrt(1.0 / channels))
        merged = lateral if merged is None else b.op("Add", [lateral, _upsample2x(b, merged)], f"fpn.merge{level}")
        features[level] = _conv_bn(b, merged, width, width, 1, f"fpn.output{level}")
    previous, channels = maps[deepest]
    for level in range(deepest + 1, high + 1):  # above the backbone: stride-2 convolutions
        features[level] = _conv_bn(b, previous, channels, width, 2, f"fpn.extra{level}")
        previous, channels = b.op("Relu", [features[level]], f"fpn.extra{level}.relu"), width
    return {level: features[level] for level in range(low, high + 1)}


class _Head:
    """A head shared by every level: ``depth`` 3x3 conv + ReLU of ``width`` channels, then a 3x3
    convolution to ``outputs`` channels. Weights ~ Normal(0, sqrt(2 / fan_in)) in the tower,
    Normal(0, 0.01) in the output layer; biases 0, the output bias ``output_bias``."""

    def __init__(self, b: NetBuilder, kind: str, width: int, depth: int, outputs: int, output_bias: float) -> None:
        self.b = b
        std = math.sqrt(2.0 / (width * 9))
        self.layers = [self._weights(f"head.{kind}.conv{i}", width, width, std, 0.0) for i in range(depth)]
        self.output = self._weights(f"head.{kind}.output", width, outputs, 0.01, output_bias)

    def _weights(self, name: str, c_in: int, c_out: int, std: float, bias: float) -> tuple[str, str]:
        weight = self.b.rng.normal(0.0, std, (c_out, c_in, 3, 3)).astype(np.float32)
        return (self.b.const(weight, name=f"{PREFIX}{name}.weight"),
                self.b.const(np.full(c_out, bias, np.float32), name=f"{PREFIX}{name}.bias"))

    def apply(self, x: str, output: str) -> str:
        """The head on one level's feature map; the result is named ``output``."""
        attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
        for weight, bias in self.layers:
            x = self.b.op("Relu", [self.b.op("Conv", [x, weight, bias], f"{weight}.out", **attrs)], f"{weight}.relu")
        return self.b.op("Conv", [x, *self.output], name=output, **attrs)
