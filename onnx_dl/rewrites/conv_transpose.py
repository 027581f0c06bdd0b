"""ConvTranspose as a Conv of the zero-inserted input with the flipped, transposed kernel.

Per spatial axis, with stride s, dilation d, kernel size k, pads (b, e) and output padding p,
ConvTranspose computes ``Y[o] = sum_{i, j} X[i] W[j]`` over ``o = i*s + j*d - b``. Insert s - 1
zeros after every input value (``U[i*s] = X[i]``, length ``L*s``), pad it by ``d*(k-1) - b`` before
and ``d*(k-1) - e + p - (s-1)`` after (a negative pad crops), and correlate with the kernel flipped
along every spatial axis at dilation d and stride 1:

    Y[o] = sum_j U_pad[o + j*d] W[k-1-j] = sum_j U[o - j*d + b] W[j]     (substituting j -> k-1-j)

which is the same sum. Channels: W is (C_in, C_out/g, k...); the Conv kernel is W with its first two
axes swapped within each of the g groups: (C_out, C_in/g, k...). Every step (Reshape, Pad, Slice,
Gather to flip, Transpose, Conv) has a gradient in the engine, so the trained weight stays the
original initializer in the original layout. Cost: the Conv runs on s^2 times as many positions.
"""

from __future__ import annotations

import numpy as np
import onnx

from .rule import Context, RewriteRefused, Rule, attribute


def check(node: onnx.NodeProto, opset: int) -> str | None:
    """Explicit pads (or VALID); an ``output_shape`` attribute is not rewritten."""
    auto_pad = attribute(node, "auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return f"auto_pad {auto_pad!r} is not rewritten (rewritten: explicit pads, VALID)"
    if attribute(node, "output_shape", None) is not None:
        return "the output_shape attribute is not rewritten (rewritten: explicit pads and output_padding)"
    return None


def _zero_inserted(ctx: Context, x: str, channels: int, spatial: list[int], strides: list[int]) -> str:
    """U with s - 1 zeros after every value along each spatial axis: (N, C, L1*s1, L2*s2, ...)."""
    if all(s == 1 for s in strides):
        return x
    split = [0, channels] + [v for length in spatial for v in (length, 1)]
    expanded = ctx.op("Reshape", [x, ctx.const(np.array(split), "zero_insert_split")], "zero_insert_split")
    after = [0, 0] + [v for s in strides for v in (0, s - 1)]
    pads = np.array([0] * len(split) + after)
    padded = ctx.op("Pad", [expanded, ctx.const(pads, "zero_insert_pads")], "zero_insert_padded")
    merged = [0, channels] + [length * s for length, s in zip(spatial, strides)]
    return ctx.op("Reshape", [padded, ctx.const(np.array(merged), "zero_insert_shape")], "zero_inserted")


def _kernel(ctx: Context, weight: str, shape: list[int], group: int) -> str:
    """W (C_in, C_out/g, k...) flipped along its spatial axes, as (C_out, C_in/g, k...)."""
    flipped = weight
    for axis, size in enumerate(shape[2:], start=2):
        if size > 1:
            reverse = ctx.const(np.arange(size - 1, -1, -1), "kernel_flip")
            flipped = ctx.op("Gather", [flipped, reverse], "kernel_flipped", axis=axis)
    c_in, c_out_group, spatial = shape[0], shape[1], shape[2:]
    perm = [1, 0] + list(range(2, len(shape)))
    if group == 1:
        return ctx.op("Transpose", [flipped], "kernel", perm=perm)
    grouped = ctx.op("Reshape", [flipped, ctx.const(np.array([group, c_in // group, c_out_group, *spatial]),
                                                    "kernel_groups")], "kernel_grouped")
    swapped = ctx.op("Transpose", [grouped], "kernel_swapped", perm=[0, 2, 1] + list(range(3, len(shape) + 1)))
    target = np.array([group * c_out_group, c_in // group, *spatial])
    return ctx.op("Reshape", [swapped, ctx.const(target, "kernel_shape")], "kernel")


def rewrite(node: onnx.NodeProto, ctx: Context) -> None:
    """Zero insertion, padding or cropping, then Conv with the flipped kernel (see the module docstring)."""
    x_shape, w_shape = ctx.shape(node.input[0]), ctx.shape(node.input[1])
    rank = len(x_shape) - 2
    if rank < 1 or len(w_shape) != rank + 2:
        raise RewriteRefused(f"input of shape {x_shape} and kernel of shape {w_shape}: expected (N, C, ...) and "
                             f"(C, M/group, k...)")
    ones = [1] * rank
    strides, dilations = attribute(node, "strides", ones), attribute(node, "dilations", ones)
    pads = [0] * 2 * rank
    if attribute(node, "auto_pad", "NOTSET") == "NOTSET":
        pads = attribute(node, "pads", pads)
    extra = attribute(node, "output_padding", [0] * rank)
    group = attribute(node, "group", 1)
    kernel = w_shape[2:]
    spatial = x_shape[2:]
    u = _zero_inserted(ctx, node.input[0], x_shape[1], spatial, strides)
    before = [d * (k - 1) - b for d, k, b in zip(dilations, kernel, pads[:rank])]
    after = [d * (k - 1) - e + p - (s - 1) for d, k, e, p, s in zip(dilations, kernel, pads[rank:], extra, strides)]
    if min(before + after) < 0:
        starts = [max(0, -b) for b in before]
        ends = [length * s - max(0, -a) for length, s, a in zip(spatial, strides, after)]
        u = ctx.op("Slice", [u, ctx.const(np.array(starts), "crop_starts"), ctx.const(np.array(ends), "crop_ends"),
                             ctx.const(np.arange(2, rank + 2), "crop_axes")], "cropped")
    conv_pads = [max(0, v) for v in before] + [max(0, v) for v in after]
    inputs = [u, _kernel(ctx, node.input[1], w_shape, group)] + ([node.input[2]] if len(node.input) > 2 and
                                                                  node.input[2] else [])
    ctx.output("Conv", inputs, node.output[0], dilations=dilations, group=group, kernel_shape=kernel,
               pads=conv_pads, strides=ones)


CONV_TRANSPOSE = Rule("ConvTranspose", check, rewrite, "Conv of the zero-inserted input with the flipped, "
                                                      "transposed kernel (Reshape, Pad, Slice, Gather, Transpose)",
                      sized=True)
