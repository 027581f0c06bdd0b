"""ONNX networks in the shapes other tools export, written with onnx.helper (no torch, no tensorflow).

- ``torch_style``: what ``torch.onnx.export`` writes for a small CNN: input ``input.1`` with a
  symbolic batch, ``/conv1/Conv`` style node names, Conv with bias, BatchNormalization (in
  inference form or, with ``training_export``, in training mode with its running statistics as
  extra graph outputs, as ``TrainingMode.TRAINING`` exports do), MaxPool, GlobalAveragePool,
  Flatten, ``Gemm(transB=1)``.
- ``keras_style``: what tf2onnx writes for a Keras model: NHWC input ``input_1`` with an
  ``unk__`` batch dimension, a Transpose to NCHW, Conv with bias, ReduceMean over H and W,
  MatMul + Add, Softmax at the end.
- ``dropout_style``: a classifier with a Dropout node before the last layer.
- ``torch_segmentation``: Conv-BN-ReLU and a 1x1 Conv to (N, K, H, W) logits.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float | None = None) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    std = scale if scale is not None else np.sqrt(2.0 / max(fan_in, 1))
    return numpy_helper.from_array(rng.normal(0.0, std, shape).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, opset: int, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=name)
    model.ir_version = 8 if opset <= 17 else 9 if opset <= 20 else 10
    onnx.checker.check_model(model, full_check=True)
    return model


def _bn(rng: np.random.Generator, prefix: str, channels: int) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(rng.uniform(0.5, 1.5, channels).astype(np.float32), f"{prefix}.weight"),
            numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(np.float32), f"{prefix}.bias"),
            numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(np.float32), f"{prefix}.running_mean"),
            numpy_helper.from_array(rng.uniform(0.5, 1.5, channels).astype(np.float32), f"{prefix}.running_var")]


def torch_style(num_classes: int = 3, size: int = 16, opset: int = 17, training_export: bool = False,
                seed: int = 0) -> onnx.ModelProto:
    """A torch.onnx.export-style classifier (see the module docstring)."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "conv1.weight", (8, 3, 3, 3)), numpy_helper.from_array(np.zeros(8, np.float32), "conv1.bias"),
             *_bn(rng, "bn1", 8), _init(rng, "conv2.weight", (16, 8, 3, 3)),
             numpy_helper.from_array(np.zeros(16, np.float32), "conv2.bias"),
             _init(rng, "fc.weight", (num_classes, 16), 0.1), numpy_helper.from_array(np.zeros(num_classes, np.float32),
                                                                                       "fc.bias")]
    bn_outputs = ["/bn1/BatchNormalization_output_0"]
    bn_attrs = {"epsilon": 1e-5, "momentum": 0.9}
    extra_outputs = []
    if training_export:
        bn_outputs += ["bn1.running_mean_out", "bn1.running_var_out"]
        bn_attrs["training_mode"] = 1
        extra_outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [8]) for n in bn_outputs[1:]]
    nodes = [
        helper.make_node("Conv", ["input.1", "conv1.weight", "conv1.bias"], ["/conv1/Conv_output_0"], name="/conv1/Conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1),
        helper.make_node("BatchNormalization", ["/conv1/Conv_output_0", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                                "bn1.running_var"], bn_outputs, name="/bn1/BatchNormalization",
                         **bn_attrs),
        helper.make_node("Relu", [bn_outputs[0]], ["/relu/Relu_output_0"], name="/relu/Relu"),
        helper.make_node("MaxPool", ["/relu/Relu_output_0"], ["/pool/MaxPool_output_0"], name="/pool/MaxPool",
                         kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=0),
        helper.make_node("Conv", ["/pool/MaxPool_output_0", "conv2.weight", "conv2.bias"], ["/conv2/Conv_output_0"],
                         name="/conv2/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["/conv2/Conv_output_0"], ["/relu_1/Relu_output_0"], name="/relu_1/Relu"),
        helper.make_node("GlobalAveragePool", ["/relu_1/Relu_output_0"], ["/avgpool/GlobalAveragePool_output_0"],
                         name="/avgpool/GlobalAveragePool"),
        helper.make_node("Flatten", ["/avgpool/GlobalAveragePool_output_0"], ["/Flatten_output_0"], name="/Flatten",
                         axis=1),
        helper.make_node("Gemm", ["/Flatten_output_0", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm",
                         alpha=1.0, beta=1.0, transB=1),
    ]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch_size", 3, size, size])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", num_classes]), *extra_outputs]
    return _model(nodes, inputs, outputs, inits, opset, "pytorch")


def keras_style(num_classes: int = 3, size: int = 16, opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """A tf2onnx-style Keras classifier: NHWC input, Transpose, MatMul + Add head, Softmax at the end."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "sequential/conv2d/Conv2D/ReadVariableOp:0", (8, 3, 3, 3)),
             numpy_helper.from_array(np.zeros(8, np.float32), "sequential/conv2d/BiasAdd/ReadVariableOp:0"),
             _init(rng, "sequential/conv2d_1/Conv2D/ReadVariableOp:0", (16, 8, 3, 3)),
             numpy_helper.from_array(np.zeros(16, np.float32), "sequential/conv2d_1/BiasAdd/ReadVariableOp:0"),
             _init(rng, "sequential/dense/MatMul/ReadVariableOp:0", (16, num_classes), 0.1),
             numpy_helper.from_array(np.zeros(num_classes, np.float32), "sequential/dense/BiasAdd/ReadVariableOp:0")]
    names = [i.name for i in inits]
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["input_1_nchw"], name="Transpose__20", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["input_1_nchw", names[0], names[1]], ["conv0"], name="sequential/conv2d/BiasAdd",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["conv0"], ["relu0"], name="sequential/conv2d/Relu"),
        helper.make_node("Conv", ["relu0", names[2], names[3]], ["conv1"], name="sequential/conv2d_1/BiasAdd",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="sequential/conv2d_1/Relu"),
        helper.make_node("ReduceMean", ["relu1"], ["pooled"], name="sequential/global_average_pooling2d/Mean",
                         axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", names[4]], ["dense0"], name="sequential/dense/MatMul"),
        helper.make_node("Add", ["dense0", names[5]], ["dense1"], name="sequential/dense/BiasAdd"),
        helper.make_node("Softmax", ["dense1"], ["dense"], name="sequential/dense/Softmax", axis=-1),
    ]
    inputs = [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__27", size, size, 3])]
    outputs = [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["unk__28", num_classes])]
    return _model(nodes, inputs, outputs, inits, opset, "tf2onnx")


def dropout_style(num_classes: int = 3, size: int = 16, seed: int = 0, ratio: float = 0.3) -> onnx.ModelProto:
    """A classifier with Dropout(ratio) before its Gemm head."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "features.0.weight", (8, 3, 3, 3)), numpy_helper.from_array(np.zeros(8, np.float32),
                                                                                     "features.0.bias"),
             numpy_helper.from_array(np.array(ratio, np.float32), "dropout.ratio"),
             _init(rng, "classifier.weight", (num_classes, 8), 0.1),
             numpy_helper.from_array(np.zeros(num_classes, np.float32), "classifier.bias")]
    nodes = [
        helper.make_node("Conv", ["image", "features.0.weight", "features.0.bias"], ["c"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Dropout", ["f", "dropout.ratio"], ["d"], name="/dropout/Dropout"),
        helper.make_node("Gemm", ["d", "classifier.weight", "classifier.bias"], ["logits"], transB=1),
    ]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])]
    return _model(nodes, inputs, outputs, inits, 17, "dropout")


def torch_segmentation(num_classes: int = 3, size: int = 16, seed: int = 0) -> onnx.ModelProto:
    """A torch-style segmentation network: Conv-BN-ReLU twice and a 1x1 Conv to (N, K, H, W)."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "enc.weight", (8, 3, 3, 3)), *_bn(rng, "enc_bn", 8), _init(rng, "mid.weight", (8, 8, 3, 3)),
             *_bn(rng, "mid_bn", 8), _init(rng, "head.weight", (num_classes, 8, 1, 1), 0.1),
             numpy_helper.from_array(np.zeros(num_classes, np.float32), "head.bias")]
    nodes = [
        helper.make_node("Conv", ["input", "enc.weight"], ["e"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["e", "enc_bn.weight", "enc_bn.bias", "enc_bn.running_mean",
                                                "enc_bn.running_var"], ["eb"]),
        helper.make_node("Relu", ["eb"], ["er"]),
        helper.make_node("Conv", ["er", "mid.weight"], ["m"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["m", "mid_bn.weight", "mid_bn.bias", "mid_bn.running_mean",
                                                "mid_bn.running_var"], ["mb"]),
        helper.make_node("Relu", ["mb"], ["mr"]),
        helper.make_node("Conv", ["mr", "head.weight", "head.bias"], ["out"], kernel_shape=[1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", num_classes, size, size])]
    return _model(nodes, inputs, outputs, inits, 17, "pytorch")


def with_node(model: onnx.ModelProto, after: str, op_type: str, **attrs) -> onnx.ModelProto:
    """A copy with ``op_type`` inserted on tensor ``after`` (its consumers read the new output)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    new_output = f"{after}/{op_type}"
    for node in model.graph.node:
        for pos, name in enumerate(node.input):
            if name == after:
                node.input[pos] = new_output
    index = next((i for i, n in enumerate(model.graph.node) if after in n.output), -1)  # -1: a graph input
    model.graph.node.insert(index + 1, helper.make_node(op_type, [after], [new_output], name=f"inserted_{op_type}",
                                                        **attrs))
    return model
