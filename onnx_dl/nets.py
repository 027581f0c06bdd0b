"""Builders of the bundled networks, as plain ONNX graphs (He-initialised, no framework).

``tools/build_models.py`` writes them to ``onnx_dl/models``; tests build small variants.
"""

from __future__ import annotations

import numpy as np
import onnx

from .onnx_builder import GraphBuilder, new_model

INPUT_SCALE = 1.0 / 128.0  # maps the default value range -127..128 to about -1..1


class NetBuilder(GraphBuilder):
    """GraphBuilder with the layers of the bundled networks."""

    def __init__(self, graph: onnx.GraphProto, seed: int) -> None:
        super().__init__(graph)
        self.rng = np.random.default_rng(seed)

    def conv_bn_relu(self, x: str, c_in: int, c_out: int, stride: int, name: str) -> str:
        """3x3 convolution (no bias), batch norm, ReLU. He-normal weights: std = sqrt(2 / fan_in)."""
        w = self.rng.normal(0.0, np.sqrt(2.0 / (c_in * 9)), (c_out, c_in, 3, 3)).astype(np.float32)
        y = self.op("Conv", [x, self.const(w, name=f"{name}.weight")], f"{name}.conv", kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1], strides=[stride, stride])
        bn = [self.const(np.ones(c_out, np.float32), name=f"{name}.bn.scale"),
              self.const(np.zeros(c_out, np.float32), name=f"{name}.bn.bias"),
              self.const(np.zeros(c_out, np.float32), name=f"{name}.bn.running_mean"),
              self.const(np.ones(c_out, np.float32), name=f"{name}.bn.running_var")]
        y = self.op("BatchNormalization", [y, *bn], f"{name}.bn", epsilon=1e-5, momentum=0.9)
        return self.op("Relu", [y], f"{name}.relu")

    def linear(self, x: str, c_in: int, c_out: int, name: str, output: str | None = None) -> str:
        """Fully connected layer y = x W^T + b, W ~ Normal(0, sqrt(1 / fan_in)), b = 0."""
        w = self.rng.normal(0.0, np.sqrt(1.0 / c_in), (c_out, c_in)).astype(np.float32)
        return self.op("Gemm", [x, self.const(w, name=f"{name}.weight"),
                                self.const(np.zeros(c_out, np.float32), name=f"{name}.bias")],
                       f"{name}.out", name=output, transB=1)


def classifier_compact(num_classes: int = 10, channels: int = 3, widths: tuple[int, ...] = (16, 32, 64, 128),
                       seed: int = 0) -> onnx.ModelProto:
    """A compact CNN classifier for any input of at least 32 x 32.

    Input scale 1/128, then per width a stride-2 conv-BN-ReLU followed (except for the last
    width) by a stride-1 one; global average pooling; one linear layer to the logits.
    """
    graph = onnx.GraphProto(name="classifier_compact")
    b = NetBuilder(graph, seed)
    b.input("image", ["N", channels, "H", "W"])
    x = b.op("Mul", ["image", b.const(np.float32(INPUT_SCALE), name="input_scale")], "scaled")
    c_in = channels
    for i, width in enumerate(widths):
        x = b.conv_bn_relu(x, c_in, width, 2, f"stage{i}.down")
        if i < len(widths) - 1:
            x = b.conv_bn_relu(x, width, width, 1, f"stage{i}.conv")
        c_in = width
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x], "pool")], "features")
    b.linear(x, c_in, num_classes, "classifier", output="logits")
    b.output("logits", ["N", num_classes])
    model = new_model(graph)
    onnx.checker.check_model(model, full_check=True)
    return model
