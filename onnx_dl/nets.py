"""Builders of the bundled networks, as plain ONNX graphs (He-initialised, no framework).

``tools/build_models.py`` writes them to the top-level ``models/`` (shipped as ``onnx_dl.models``); tests build small variants.
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

    def conv_bn_relu(self, x: str, c_in: int, c_out: int, stride: int | tuple[int, int], name: str) -> str:
        """3x3 convolution (no bias), batch norm, ReLU. He-normal weights: std = sqrt(2 / fan_in).
        ``stride``: one for both axes or (rows, columns)."""
        w = self.rng.normal(0.0, np.sqrt(2.0 / (c_in * 9)), (c_out, c_in, 3, 3)).astype(np.float32)
        strides = [stride, stride] if isinstance(stride, int) else list(stride)
        y = self.op("Conv", [x, self.const(w, name=f"{name}.weight")], f"{name}.conv", kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1], strides=strides)
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


def _upsample2x(b: NetBuilder, x: str) -> str:
    """Nearest-neighbour 2x upsampling for any H, W: (N,C,H,W) -> (N,C,H,1,W,1) -> expand -> reshape.

    (ONNX Runtime 1.19 has no CPU gradient for Resize or ConvTranspose.)
    """
    shape = b.op("Shape", [x], "up_shape")
    batch_channels = b.op("Slice", [shape, b.const(np.array([0]), "zero_i"), b.const(np.array([2]), "two_i")], "up_nc")
    height_width = b.op("Slice", [shape, b.const(np.array([2]), "two_i"), b.const(np.array([4]), "four_i")], "up_hw")
    target = b.op("Concat", [batch_channels, b.op("Mul", [height_width, b.const(np.array([2]), "two_i")], "up_hw2")],
                  "up_target", axis=0)
    spread = b.op("Unsqueeze", [x, b.const(np.array([3, 5]), "up_axes")], "up_spread")
    tiled = b.op("Expand", [spread, b.const(np.array([1, 1, 1, 2, 1, 2]), "up_tiles")], "up_tiled")
    return b.op("Reshape", [tiled, target], "up")


def segmentation_compact(num_classes: int = 4, channels: int = 3, widths: tuple[int, ...] = (16, 32, 64, 96),
                         seed: int = 0) -> onnx.ModelProto:
    """A compact encoder-decoder for any input whose sides are divisible by 8.

    Encoder: a full-resolution conv-BN-ReLU, then per further width a stride-2 conv-BN-ReLU
    (followed by a stride-1 one except at the bottom). Decoder: per level, nearest 2x upsampling,
    conv-BN-ReLU to the skip's width and addition of the skip. A 1x1 convolution with bias gives
    the logits (N, K, H, W) at input resolution.
    """
    graph = onnx.GraphProto(name="segmentation_compact")
    b = NetBuilder(graph, seed)
    b.input("image", ["N", channels, "H", "W"])
    x = b.op("Mul", ["image", b.const(np.float32(INPUT_SCALE), name="input_scale")], "scaled")
    x = b.conv_bn_relu(x, channels, widths[0], 1, "enc0")
    skips = [(x, widths[0])]
    for i, width in enumerate(widths[1:], start=1):
        x = b.conv_bn_relu(x, widths[i - 1], width, 2, f"enc{i}.down")
        if i < len(widths) - 1:
            x = b.conv_bn_relu(x, width, width, 1, f"enc{i}.conv")
            skips.append((x, width))
    c_in = widths[-1]
    for i, (skip, width) in reversed(list(enumerate(skips))):
        x = b.conv_bn_relu(_upsample2x(b, x), c_in, width, 1, f"dec{i}")
        x = b.op("Add", [x, skip], f"dec{i}.skip")
        c_in = width
    w = b.rng.normal(0.0, np.sqrt(1.0 / c_in), (num_classes, c_in, 1, 1)).astype(np.float32)
    b.op("Conv", [x, b.const(w, name="classifier.weight"), b.const(np.zeros(num_classes, np.float32),
                                                                   name="classifier.bias")],
         name="logits", kernel_shape=[1, 1])
    b.output("logits", ["N", num_classes, "H", "W"])
    model = new_model(graph)
    onnx.checker.check_model(model, full_check=True)
    return model


def ocr_recognition_compact(num_classes: int = 37, channels: int = 1, widths: tuple[int, ...] = (32, 64, 96, 128),
                            seed: int = 0, step_width: int = 8) -> onnx.ModelProto:
    """A compact word recogniser, fully convolutional over the width: (N, C, H, W) -> class scores
    (N, K, T) with one column per horizontal step of ``step_width`` pixels (4, 8 or 16), T = W / step_width
    (K = blank + alphabet; for a CTC loss).

    Input scale 1/128; two stride-2 conv-BN-ReLUs, then per further width a conv-BN-ReLU of stride 2 in
    the height (and in the width while the steps are narrower than ``step_width``) followed by a stride-1
    one; the mean over the remaining rows; a 1 x 3 convolution with bias and ReLU over neighbouring steps
    (context); a 1 x 1 convolution with bias to the scores, squeezed to (N, K, T). Any height from 16 and
    any width divisible by ``step_width``.
    """
    graph = onnx.GraphProto(name="ocr_recognition_compact")
    b = NetBuilder(graph, seed)
    b.input("image", ["N", channels, "H", "W"])
    x = b.op("Mul", ["image", b.const(np.float32(INPUT_SCALE), name="input_scale")], "scaled")
    x = b.conv_bn_relu(x, channels, widths[0], 2, "stage0.down")
    x = b.conv_bn_relu(x, widths[0], widths[1], 2, "stage1.down")
    c_in = widths[1]
    for i, width in enumerate(widths[2:], start=2):
        halve_width = 4 * 2 ** (i - 1) <= step_width
        x = b.conv_bn_relu(x, c_in, width, (2, 2 if halve_width else 1), f"stage{i}.down")
        x = b.conv_bn_relu(x, width, width, 1, f"stage{i}.conv")
        c_in = width
    x = b.op("ReduceMean", [x], "rows_mean", axes=[2], keepdims=1)  # (N, C, 1, T)
    w = b.rng.normal(0.0, np.sqrt(2.0 / (c_in * 3)), (c_in, c_in, 1, 3)).astype(np.float32)
    x = b.op("Conv", [x, b.const(w, name="context.weight"), b.const(np.zeros(c_in, np.float32),
                                                                      name="context.bias")],
             "context.conv", kernel_shape=[1, 3], pads=[0, 1, 0, 1])
    x = b.op("Relu", [x], "context.relu")
    w = b.rng.normal(0.0, np.sqrt(1.0 / c_in), (num_classes, c_in, 1, 1)).astype(np.float32)
    scores = b.op("Conv", [x, b.const(w, name="classifier.weight"), b.const(np.zeros(num_classes, np.float32),
                                                                           name="classifier.bias")],
                  "classifier.out", kernel_shape=[1, 1])
    b.op("Squeeze", [scores, b.const(np.array([2], np.int64), name="row_axis")], name="logits")
    b.output("logits", ["N", num_classes, "T"])
    model = new_model(graph)
    onnx.checker.check_model(model, full_check=True)
    return model
