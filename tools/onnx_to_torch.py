"""A small ONNX -> PyTorch (eager) converter for the operators of the bundled networks.

Benchmark-only (``tools/bench.py``): torch is never a dependency of onnx_dl. The converted
module holds the same weights as the ONNX graph; trained initializers become ``nn.Parameter``,
batch-norm running statistics buffers, every other initializer a constant. Batch norm runs in
train mode (batch statistics; running statistics updated with the unbiased variance and
PyTorch's momentum ``1 - m`` for ONNX's ``m``), so a training step computes what onnx_dl's does.

Supported: the operators of the bundled networks (Conv, BatchNormalization, Relu, Mul, Add,
GlobalAveragePool, Flatten, Gemm, MaxPool and the shape operators Shape, Slice, Concat,
Unsqueeze, Expand, Reshape, Constant), of onnx_dl's losses (SoftmaxCrossEntropyLoss, ReduceSum,
ReduceSumSquare, ReduceLogSumExp, GatherElements, Div, Identity) and common elementwise operators
(see ``_OPS``). The nearest-2x upsampling pattern
``Reshape(Expand(Unsqueeze(x, [3, 5]), [1, 1, 1, 2, 1, 2]), ...)`` becomes
``F.interpolate(x, scale_factor=2, mode="nearest")`` (what a PyTorch user writes) unless
``fuse_upsampling=False``, which runs the ONNX operators one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

UPSAMPLE = "NearestUpsample2x"  # the op_type given to a fused upsampling pattern


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _symmetric_pads(pads: list[int]) -> tuple[int, int] | None:
    half = len(pads) // 2
    if pads[:half] == pads[half:]:
        return tuple(pads[:half])  # type: ignore[return-value]
    return None


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, **a: Any) -> torch.Tensor:
    pads = list(a.get("pads", [0, 0, 0, 0]))
    padding = _symmetric_pads(pads)
    if padding is None:
        half = len(pads) // 2
        x = F.pad(x, [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])])
        padding = (0, 0)
    return F.conv2d(x, w, b, stride=tuple(a.get("strides", [1, 1])), padding=padding,
                    dilation=tuple(a.get("dilations", [1, 1])), groups=a.get("group", 1))


def _max_pool(x: torch.Tensor, **a: Any) -> torch.Tensor:
    padding = _symmetric_pads(list(a.get("pads", [0, 0, 0, 0])))
    if padding is None:
        raise NotImplementedError("MaxPool with asymmetric pads")
    return F.max_pool2d(x, tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1])), padding,
                        ceil_mode=bool(a.get("ceil_mode", 0)))


def _gemm(a_: torch.Tensor, b_: torch.Tensor, c: torch.Tensor | None = None, **a: Any) -> torch.Tensor:
    if a.get("transA", 0):
        a_ = a_.t()
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if a.get("transB", 0) and alpha == 1.0 and beta == 1.0:
        return F.linear(a_, b_, c)
    y = a_ @ (b_.t() if a.get("transB", 0) else b_)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return y


def _flatten(x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _slice(x: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, axes: torch.Tensor | None = None,
           steps: torch.Tensor | None = None) -> torch.Tensor:
    axes_ = axes.tolist() if axes is not None else list(range(len(starts)))
    steps_ = steps.tolist() if steps is not None else [1] * len(axes_)
    index: list[slice] = [slice(None)] * x.dim()
    for axis, start, end, step in zip(axes_, starts.tolist(), ends.tolist(), steps_):
        index[axis] = slice(start, min(end, x.shape[axis]), step)
    return x[tuple(index)]


def _unsqueeze(x: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    for axis in sorted(int(v) % (x.dim() + len(axes)) for v in axes.tolist()):
        x = x.unsqueeze(axis)
    return x


def _expand(x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    target = list(torch.broadcast_shapes(tuple(x.shape), tuple(shape.tolist())))
    return x.expand(target)


def _reshape(x: torch.Tensor, shape: torch.Tensor, allowzero: int = 0) -> torch.Tensor:
    dims = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(shape.tolist())]
    return x.reshape(dims)


def _global_average_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _axes(axes: Any) -> tuple[int, ...]:
    """A reduction's axes, given as an input tensor or (before opset 18, except ReduceSum) as an attribute."""
    if axes is None:
        return ()
    return tuple(int(a) for a in (axes.tolist() if hasattr(axes, "tolist") else axes))


def _reduce_sum(x: torch.Tensor, axes: Any = None, keepdims: int = 1, noop_with_empty_axes: int = 0) -> torch.Tensor:
    dims = _axes(axes)
    if not dims:
        if noop_with_empty_axes:
            return x
        return x.sum().reshape([1] * x.dim()) if keepdims else x.sum()
    return x.sum(dim=dims, keepdim=bool(keepdims))


def _reduce_log_sum_exp(x: torch.Tensor, axes: Any = None, keepdims: int = 1) -> torch.Tensor:
    return torch.logsumexp(x, dim=_axes(axes) or tuple(range(x.dim())), keepdim=bool(keepdims))


def _softmax_cross_entropy(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                           reduction: str = "mean", ignore_index: int = -100) -> torch.Tensor:
    return F.cross_entropy(scores, labels, weight=weights, reduction=reduction, ignore_index=ignore_index)


def _fold(op: Callable[..., torch.Tensor], tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    result = tensors[0]
    for t in tensors[1:]:
        result = op(result, t)
    return result


_DTYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.INT64: torch.int64,
           onnx.TensorProto.BOOL: torch.bool, onnx.TensorProto.INT32: torch.int32}


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "Conv": _conv, "MaxPool": _max_pool, "Gemm": _gemm, "Flatten": _flatten, "Slice": _slice,
    "Unsqueeze": _unsqueeze, "Expand": _expand, "Reshape": _reshape, "GlobalAveragePool": _global_average_pool,
    UPSAMPLE: _upsample, "ReduceSum": _reduce_sum, "ReduceSumSquare": lambda x, *a, **k: _reduce_sum(x * x, *a, **k),
    "ReduceLogSumExp": _reduce_log_sum_exp, "GatherElements": lambda x, index, axis=0: torch.gather(x, axis, index),
    "SoftmaxCrossEntropyLoss": _softmax_cross_entropy,
    "Relu": lambda x: F.relu(x), "Sigmoid": torch.sigmoid, "Identity": lambda x: x, "Log": torch.log,
    "Exp": torch.exp, "Abs": torch.abs, "Neg": torch.neg, "Sqrt": torch.sqrt, "Where": torch.where,
    "Pow": torch.pow, "Min": lambda *xs: _fold(torch.minimum, xs), "Max": lambda *xs: _fold(torch.maximum, xs),
    "Less": torch.lt, "Greater": torch.gt, "Equal": torch.eq, "Not": torch.logical_not, "And": torch.logical_and,
    "Clip": lambda x, low=None, high=None: torch.clamp(x, low, high), "MatMul": torch.matmul,
    "Cast": lambda x, to: x.to(_DTYPES[to]), "Transpose": lambda x, perm=None: x.permute(*(perm or reversed(range(x.dim())))),
    "Squeeze": lambda x, axes=None: x.squeeze(tuple(axes.tolist())) if axes is not None else x.squeeze(),
    "ReduceMean": lambda x, axes=None, keepdims=1: x.mean(dim=_axes(axes) or None, keepdim=bool(keepdims)),
    "LogSoftmax": lambda x, axis=-1: torch.log_softmax(x, dim=axis),
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div,
    "Shape": lambda x, start=0, end=None: torch.tensor(list(x.shape)[start:end], dtype=torch.int64),
    "Concat": lambda *xs, axis: torch.cat(xs, dim=axis),
    "Softmax": lambda x, axis=-1: torch.softmax(x, dim=axis),
}


def _constant_array(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(_attrs(node)["value"])
    return None


def _fuse_upsampling(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The graph's nodes with every nearest-2x Unsqueeze/Expand/Reshape chain replaced by one node."""
    producer = {out: node for node in model.graph.node for out in node.output}
    nodes = []
    for node in model.graph.node:
        expand = producer.get(node.input[0]) if node.op_type == "Reshape" else None
        unsqueeze = producer.get(expand.input[0]) if expand is not None and expand.op_type == "Expand" else None
        if unsqueeze is not None and unsqueeze.op_type == "Unsqueeze":
            axes = _constant_array(model, unsqueeze.input[1])
            tiles = _constant_array(model, expand.input[1])
            if axes is not None and tiles is not None and axes.tolist() == [3, 5] and tiles.tolist() == [1, 1, 1, 2, 1, 2]:
                nodes.append(onnx.helper.make_node(UPSAMPLE, [unsqueeze.input[0]], [node.output[0]], name=node.name))
                continue
        nodes.append(node)
    return nodes


def _needed(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes the outputs depend on, in graph order."""
    producer = {out: node for node in nodes for out in node.output}
    wanted, stack = set(), list(outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in wanted:
            wanted.add(id(node))
            stack.extend(node.input)
    return [node for node in nodes if id(node) in wanted]


class OnnxNet(torch.nn.Module):
    """An ONNX graph run by PyTorch eager operators.

    ``forward(*inputs)`` takes the graph inputs that are not initializers, in graph order, and
    returns a dict of the graph outputs by name.
    """

    def __init__(self, model: onnx.ModelProto, trainable: Iterable[str], fuse_upsampling: bool = True) -> None:
        super().__init__()
        trainable = set(trainable)
        self.params = torch.nn.ParameterDict()
        self._keys: dict[str, str] = {}
        self.constants: dict[str, torch.Tensor] = {}
        bn_stats = {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization" for i in (3, 4)}
        for init in model.graph.initializer:
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            key = init.name.replace(".", "_").replace("/", "_")
            if init.name in trainable:
                self.params[key] = torch.nn.Parameter(value)
                self._keys[init.name] = key
            elif init.name in bn_stats:
                self.register_buffer(key, value)
                self._keys[init.name] = key
            else:
                self.constants[init.name] = value
        for node in model.graph.node:
            if node.op_type == "Constant":
                self.constants[node.output[0]] = torch.from_numpy(numpy_helper.to_array(_attrs(node)["value"]).copy())
        self.input_names = [i.name for i in model.graph.input if i.name not in self._keys and i.name not in self.constants]
        self.output_names = [o.name for o in model.graph.output]
        nodes = _fuse_upsampling(model) if fuse_upsampling else list(model.graph.node)
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n))
                      for n in _needed(nodes, self.output_names) if n.op_type != "Constant"]
        unknown = sorted({op for op, *_ in self.nodes if op not in _OPS and op != "BatchNormalization"})
        if unknown:
            raise NotImplementedError(f"operators without a PyTorch translation: {unknown}")
        used = {name for _, inputs, _, _ in self.nodes for name in inputs} | set(self.output_names)
        extra = [out for _, _, outputs, _ in self.nodes for out in outputs[1:] if out in used]
        if extra:
            raise NotImplementedError(f"only the first output of a node is translated; needed: {extra}")

    def parameter(self, onnx_name: str) -> torch.Tensor:
        """The parameter or buffer holding ONNX initializer ``onnx_name``."""
        key = self._keys[onnx_name]
        return self.params[key] if key in self.params else getattr(self, key)

    def _value(self, values: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
        if name == "":
            return None
        if name in values:
            return values[name]
        if name in self._keys:
            return self.parameter(name)
        return self.constants[name]

    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The graph outputs by name for the graph inputs ``inputs``."""
        values = dict(zip(self.input_names, inputs))
        for op, names, outputs, attrs in self.nodes:
            args = [self._value(values, name) for name in names]
            if op == "BatchNormalization":
                x, scale, bias, mean, var = args
                y = F.batch_norm(x, mean, var, scale, bias, training=True,
                                 momentum=1.0 - attrs.get("momentum", 0.9), eps=attrs.get("epsilon", 1e-5))
            else:
                while args and args[-1] is None:
                    args.pop()
                y = _OPS[op](*args, **attrs)
            values[outputs[0]] = y
        return {name: values[name] for name in self.output_names}
