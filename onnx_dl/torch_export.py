"""Export a PyTorch module to ONNX in the form the library trains (with the caller's torch: the library
never imports torch)."""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper

from . import canonical
from .errors import DLModelFileError, DLParamError
from .onnx_builder import OPSET

INPUT_NAME = "image"
OUTPUT_NAME = "scores"


def _torch_of(module: Any) -> Any:
    """The torch package ``module`` belongs to, as the caller loaded it (no import here)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(module, torch.nn.Module):
        raise DLParamError(f"export_torch: expected a torch.nn.Module, got {type(module).__name__}")
    return torch


def export_torch(module: Any, path: str | Path, image_size: int | tuple[int, int], num_channels: int = 3,
                 opset: int = OPSET) -> Path:
    """Write ``module`` (a ``torch.nn.Module``) to ``path`` as an ONNX network that trains like the module.

    The recipe: the TorchScript exporter (``dynamo=False``) without constant folding, with every
    batch norm (``torch.nn.modules.batchnorm._BatchNorm``) and every ``torch.nn.Dropout`` in
    training mode and every other layer in eval mode (``training=torch.onnx.TrainingMode.PRESERVE``).
    That keeps each BatchNormalization with its running statistics (an export from eval mode folds
    them into the convolutions, and the network then trains without batch norm), writes Dropout
    (the library switches it on in training and off in ``apply_dl_model`` and written files), and
    leaves out what would be random operators in training mode (stochastic depth, drop path). The
    batch axis is dynamic, the input is ``"image"`` (N, ``num_channels``, H, W), the first output
    ``"scores"``.

    The module is not changed: the export runs on a copy (tracing in training mode moves batch-norm
    running statistics), and the written parameters and running statistics are the module's own.

    ``image_size`` is ``(height, width)`` or one int for square images; the written network keeps
    the traced size as its default input size. Example::

        import onnx_dl as dl

        net = torchvision.models.resnet18(weights="DEFAULT")  # the caller's torchvision
        dl.export_torch(net, "resnet18.onnx", (224, 224))
        model = dl.read_dl_model("resnet18.onnx", type="classification")
        dl.set_dl_model_param(model, "class_ids", [0, 1, 2])

    It works with the torch the caller's module comes from; the library itself never imports torch.
    """
    torch = _torch_of(module)

    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(height, width, num_channels) < 1:
        raise DLParamError(f"export_torch: expected a positive image size and channel count, got {image_size} "
                           f"and {num_channels}")
    traced = copy.deepcopy(module).eval()
    for layer in traced.modules():  # training mode for exactly these; stochastic depth & co. stay off
        if isinstance(layer, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout)):
            layer.train()
    target = Path(path)
    example = torch.zeros(2, num_channels, height, width)  # 2: batch norm in training mode needs two values
    # with autograd on: under no_grad, eval-mode nn.MultiheadAttention takes its fused inference path
    # (aten::_native_multi_head_attention), which the exporter cannot write (torchvision's ViT)
    with warnings.catch_warnings():
        # expected for this recipe, nothing the user can act on: the TorchScript exporter and its
        # training argument are deprecated (still in torch 2.14), num_batches_tracked is not exported, and
        # batch norm's check of its batch size (torch.nn.functional) is traced as a constant
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=__name__)
        warnings.filterwarnings("ignore", message=r".*Removing mutation from node aten::add_ on block input: "
                                                  r"'.*num_batches_tracked'")
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean",
                                module=r"torch\.nn\.functional")
        torch.onnx.export(traced, (example,), str(target), dynamo=False, opset_version=opset,
                          do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}})
    network = onnx.load(str(target))
    _restore_values(network, {name: value.detach().cpu().numpy() for name, value in module.state_dict().items()})
    onnx.save(network, str(target))
    return target


def _restore_values(network: onnx.ModelProto, state: dict[str, Any]) -> None:
    """Write the module's own parameter and buffer values into the initializers of the same name.

    Tracing in training mode updates the running statistics of the traced copy before the
    exporter reads them; the values of the original module are the ones to keep. Raise when a
    batch norm's running statistic is not one of the module's buffers (it could not be restored).
    """
    canonical.own_identity_initializers(network)
    for init in network.graph.initializer:
        if init.name in state and tuple(state[init.name].shape) == tuple(init.dims):
            init.CopyFrom(numpy_helper.from_array(state[init.name].astype(numpy_helper.to_array(init).dtype),
                                                  init.name))
    for node in network.graph.node:
        if node.op_type == "BatchNormalization":
            lost = [node.input[p] for p in canonical.STAT_INPUTS if node.input[p] not in state]
            if lost:
                raise DLModelFileError(f"export_torch: batch norm {node.name!r} reads running statistics {lost} "
                                       f"that are not buffers of the module; their exported values would be "
                                       f"the ones the trace moved")
