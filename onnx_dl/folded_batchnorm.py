"""Batch norm folded into convolutions by an exporter: found from the exporter's own traces, reported.

Both PyTorch exporters fold eval-mode batch norm into the preceding convolution (W' = W * s,
b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps)). The network computes the same
scores, but trains as a network without batch norm: no batch statistics, no running statistics,
and deep networks may diverge where the original trains smoothly. The values cannot tell a
folded convolution from a plain one, so only the exporters' traces are used (no false alarm on
networks that never had batch norm, such as squeezenet):

- the dynamo exporter records on each node the module classes it came from and the rewrite
  rules applied (``FuseBatchNormIntoConv``);
- the TorchScript exporter names the tensors it computes ``onnx::Conv_<k>``: a Conv whose weight
  and bias are both such tensors was computed from the module's convolution and batch norm
  (a module's own parameters keep their names, also when shared through Identity).
"""

from __future__ import annotations

import warnings

import onnx

from .errors import DLFoldedBatchNormWarning

_COMPUTED = "onnx::Conv_"
_DYNAMO_MARKS = ("FuseBatchNormIntoConv", "torch.nn.modules.batchnorm.")

EXPORT_ADVICE = (
    "export the module for training with onnx_dl.export_torch(module, path, image_size), i.e. "
    "torch.onnx.export(module, x, path, dynamo=False, training=torch.onnx.TrainingMode.TRAINING, "
    "do_constant_folding=False, dynamic_axes={'image': {0: 'N'}}), which keeps every batch norm"
)


def folded_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes that hold a batch norm the exporter folded into them."""
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        traced = any(mark in p.value for p in node.metadata_props for mark in _DYNAMO_MARKS)
        computed = len(node.input) > 2 and all(name.startswith(_COMPUTED) for name in node.input[1:3])
        if traced or computed:
            found.append(node.name or node.output[0])
    return found


def warn_if_folded(model: onnx.ModelProto) -> None:
    """Warn (:class:`DLFoldedBatchNormWarning`) when the exporter folded batch norms into convolutions."""
    folded = folded_convs(model)
    if folded:
        warnings.warn(
            f"{len(folded)} convolution(s) of this network hold a batch norm the exporter folded into them "
            f"(first: {folded[0]!r}): it trains as a network without batch norm, unlike the PyTorch module, and "
            f"deep networks may diverge. To fine-tune with batch norm, {EXPORT_ADVICE}. Freezing the backbone "
            f"(freeze_backbone) or inference only is fine as is.",
            DLFoldedBatchNormWarning, stacklevel=2)
