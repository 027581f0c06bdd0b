"""Canonical form on read: PyTorch exports train like the PyTorch module, whatever the exporter shared.

Reference: the module itself in PyTorch (``torch_parity``): first loss to 1e-5, trained-parameter
count equal to ``sum(p.numel() for p in module.parameters())``, running statistics after one step,
every parameter updated, five finite steps, written file == ``apply_dl_model``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torchvision
import torch_parity as tp
from onnx import TensorProto, helper, numpy_helper

import onnx_dl as dl
from onnx_dl import canonical
from onnx_dl import graph as g

SIZE = 16
RECIPES = ("eval_nofold", "training")


def _bn_net(seed: int = 0) -> nn.Module:
    """The issue's reproduction: two fresh batch norms of equal width (their tensors all coincide)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.0), nn.Linear(8, 4))


class _Tied(nn.Module):
    """One convolution applied twice (weight tying: one parameter in PyTorch) and a zero-initialised head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.shared = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 4)
        nn.init.zeros_(self.head.bias)
        nn.init.zeros_(self.stem.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.bn2(self.shared(torch.relu(self.shared(x)))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _Shuffle(nn.Module):
    """A channel shuffle written with ``x.size()`` (shufflenet's): exported without constant folding it is
    Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = torch.relu(self.bn2(self.conv2(x)))  # its running variance needs the per-sample size (Bessel)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_issue_reproduction_trains_every_parameter(tmp_path: Path) -> None:
    net = _bn_net()
    path = tp.export(net, tmp_path / "bn_c.onnx", "eval_nofold", SIZE)
    shared = [n for n in onnx.load(path).graph.node if n.op_type == "Identity"]
    assert shared, "the exporter no longer shares equal initializers: this test lost its subject"
    model = dl.read_dl_model(path, type="classification")
    assert dl.get_dl_model_param(model, "num_trainable_params") == sum(p.numel() for p in net.parameters()) == 876
    stats = g.batchnorm_stats(model.network())
    assert sorted(s.mean for s in stats) == ["1.running_mean", "4.running_mean"]
    assert sorted(s.var for s in stats) == ["1.running_var", "4.running_var"]


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("make", [_bn_net, _Tied, _Shuffle], ids=["two_fresh_bn", "tied_weights", "shuffle"])
def test_small_exports_match_pytorch(tmp_path: Path, recipe: str, make) -> None:
    net = make()
    result = tp.compare(net, tp.export(net, tmp_path / "net.onnx", recipe, SIZE), SIZE, classes=4)
    assert result["losses"][-1] < result["losses"][0]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "shufflenet_v2_x0_5"])
def test_torchvision_exports_match_pytorch(tmp_path: Path, arch: str, recipe: str) -> None:
    """Random init (the case where the exporter shares most), 64 x 64 (at 32 x 32 resnet18's last
    batch norms see two values per channel, and float rounding dominates their statistics), batch 2.
    shufflenet's channel shuffle hides its batch norms' sizes from shape inference (the running
    variance needs them for the unbiased batch variance)."""
    torch.manual_seed(0)
    net = tp.without_dropout(getattr(torchvision.models, arch)(weights=None))
    result = tp.compare(net, tp.export(net, tmp_path / f"{arch}.onnx", recipe, 64), 64)
    assert result["losses"][-1] < result["losses"][0]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _shared_graph() -> onnx.ModelProto:
    """x -> BN(a) -> BN(b) -> Mul(w) with one tensor as a's mean, b's mean (through Identity) and b's
    scale, and one as both variances and the Mul weight."""
    values = {"zeros": np.zeros(3, np.float32) + 0.25, "ones": np.ones(3, np.float32) * 1.5}
    inits = [numpy_helper.from_array(v, k) for k, v in values.items()]
    nodes = [helper.make_node("Identity", ["zeros"], ["b.mean"]),
             helper.make_node("Identity", ["b.mean"], ["b.bias"]),  # a chain of two
             helper.make_node("BatchNormalization", ["x", "ones", "zeros", "zeros", "ones"], ["y1"], name="a"),
             helper.make_node("BatchNormalization", ["y1", "zeros", "b.bias", "b.mean", "ones"], ["y2"], name="b"),
             helper.make_node("Mul", ["y2", "ones"], ["y"])]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_rules_keep_values_and_give_every_statistic_its_own_tensor() -> None:
    source = _shared_graph()
    model = onnx.ModelProto.FromString(source.SerializeToString())
    canonical.canonical_form(model)
    onnx.checker.check_model(model, full_check=True)
    assert not [n for n in model.graph.node if n.op_type == "Identity"]
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    stats = [n.input[p] for n in bns for p in (3, 4)]
    uses = g.consumers(model)
    assert len(set(stats)) == 4 and all(len(uses[s]) == 1 for s in stats), stats
    assert "b.mean" in stats and "b.bias" in g.initializers(model)  # the Identity outputs' names are kept
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, x), _run(source, x))


def test_identity_feeding_a_graph_output_stays() -> None:
    model = _shared_graph()
    model.graph.output.append(helper.make_tensor_value_info("b.mean", TensorProto.FLOAT, [3]))
    canonical.own_identity_initializers(model)
    assert [n.output[0] for n in model.graph.node if n.op_type == "Identity"] == ["b.mean", "b.bias"]


def test_shapes_inference_cannot_tell_are_measured() -> None:
    """Reshape to a target computed through Abs (no data propagation in ONNX shape inference)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Abs", ["s"], ["t"]),
             helper.make_node("Reshape", ["x", "t"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    known = {i.name: [d.HasField("dim_value") for d in i.type.tensor_type.shape.dim] for i in inferred.graph.value_info}
    assert not all(known.get("r", [False])), "inference now tells this shape: the test lost its subject"
    shapes = g.tensor_shapes(model)
    assert shapes["r"] == [2, 3, 4] and shapes["y"] == [2, 3, 4]


def _scoped(node: onnx.NodeProto, module: str) -> onnx.NodeProto:
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", repr(["", module, node.name])
    return node


def test_parameters_merged_by_the_dynamo_exporter_become_one_per_module() -> None:
    # dynamo merges equal parameters (ConvNeXt's fresh layer_scale) into one initializer read directly by
    # several modules; its nodes record the module they ran in. 'a' calls its own scale twice (tied).
    scale = np.full((1, 2, 1, 1), 1e-6, np.float32)
    nodes = [_scoped(helper.make_node("Mul", ["image", "a.scale"], ["x1"], name="mul_1"), "a"),
             _scoped(helper.make_node("Mul", ["x1", "a.scale"], ["x2"], name="mul_2"), "a"),
             _scoped(helper.make_node("Mul", ["x2", "a.scale"], ["x3"], name="mul_3"), "b"),
             _scoped(helper.make_node("Mul", ["x3", "a.scale"], ["out"], name="mul_4"), "c")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2, 1, 1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 1, 1])],
                              [numpy_helper.from_array(scale, "a.scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    canonical.canonical_form(model)
    assert [list(n.input)[1] for n in model.graph.node] == ["a.scale", "a.scale", "b.scale", "c.scale"]
    for name in ("b.scale", "c.scale"):
        np.testing.assert_array_equal(numpy_helper.to_array(g.initializers(model)[name]), scale)


def test_remove_unused_nodes_keeps_what_outputs_and_subgraphs_read():
    """Dead nodes and their initializers go; a tensor read only inside an If's branch stays."""
    branch = lambda name, source: helper.make_graph(  # noqa: E731
        [helper.make_node("Identity", [source], [name])], name, [], [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Mul", ["x", "w"], ["used_inside"]),
             helper.make_node("Mul", ["x", "dead_w"], ["dead"]), helper.make_node("Neg", ["dead"], ["dead2"]),
             helper.make_node("Greater", ["x", "w"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("t", "used_inside"), else_branch=branch("e", "x"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones(1, np.float32), n) for n in ("w", "dead_w")])
    model = helper.make_model(graph)
    g.remove_unused_nodes(model)
    assert [n.output[0] for n in model.graph.node] == ["used_inside", "cond", "y"]
    assert [i.name for i in model.graph.initializer] == ["w"]
