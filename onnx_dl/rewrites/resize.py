"""Resize (nearest, linear) of the H and W axes as products with fixed interpolation matrices.

The training graph fixes C, H and W of the image, so the size of every Resize input and output is
known when the training graph is built, and so is, per resized axis, the map from each output
position to the input positions it reads. With ``c(x)`` the input coordinate of output position
``x`` (``coordinate_transformation_mode``, in float32 as ONNX Runtime computes it):

    nearest:  Y[..., x] = X[..., n(x)]                           n = nearest_mode rounding of c(x)
    linear:   Y[..., x] = X[..., i0(x)] * w0(x) + X[..., i1(x)] * w1(x)
              with c' = clamp(c(x), 0, L_in - 1), i0 = floor(c'), i1 = min(i0 + 1, L_in - 1),
              w0 = |c' - i1|, w1 = |c' - i0| (both 1/2 where i0 = i1)

applied to W, then to H (bilinear interpolation is separable), each as a MatMul with the axis's
(L_out, L_in) matrix A holding these taps: Y = X A^T along W, Y = A X along H. As in ONNX Runtime, an
axis whose scale is 1 is copied unchanged, and so is the whole tensor when no size changes. The
MatMul's gradient multiplies the output gradient by the transposed matrix: Resize's gradient. Nearest
copies finite values exactly (a product with one 1 and zeros); linear differs from the engine's one-pass
bilinear sum by float rounding only. The dense matrix costs L_in multiply-adds per output value where
a gather would read two: nothing for the upsampling heads of segmentation networks, whose input
sides are small.
"""

from __future__ import annotations

import numpy as np
import onnx

from .rule import Context, RewriteRefused, Rule, attribute

MODES = ("nearest", "linear")
COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
F = np.float32


def check(node: onnx.NodeProto, opset: int) -> str | None:
    """The attributes the rewrite reproduces: mode, coordinate mode, rounding; no antialias."""
    mode = attribute(node, "mode", "nearest")
    coordinates = attribute(node, "coordinate_transformation_mode", "half_pixel")
    if opset < 11:
        return f"Resize-10 (opset {opset}) is not rewritten; the engine trains opsets 13 and later"
    if mode not in MODES:
        return f"mode {mode!r} is not rewritten (rewritten: {', '.join(MODES)})"
    if coordinates not in COORDINATES:
        return f"coordinate_transformation_mode {coordinates!r} is not rewritten (rewritten: {', '.join(COORDINATES)})"
    if mode == "nearest" and attribute(node, "nearest_mode", "round_prefer_floor") not in NEAREST:
        return f"nearest_mode {attribute(node, 'nearest_mode', '')!r} is not rewritten"
    if attribute(node, "antialias", 0):
        return "antialias=1 is not rewritten"
    if attribute(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        return "keep_aspect_ratio_policy other than 'stretch' is not rewritten"
    return None


def original_coordinate(mode: str, resized: np.ndarray, scale: np.float32, length_resized: int,
                        length_original: int) -> np.ndarray:
    """The input coordinate of each output position ``resized`` (float32, as ONNX Runtime computes it)."""
    x = resized.astype(F)
    if mode == "asymmetric":
        return x / scale
    if mode == "pytorch_half_pixel":
        return (x + F(0.5)) / scale - F(0.5) if length_resized > 1 else np.zeros_like(x)
    if mode == "tf_half_pixel_for_nn":
        return (x + F(0.5)) / scale
    if mode == "align_corners":
        return np.zeros_like(x) if length_resized == 1 else x * F(length_original - 1) / F(length_resized - 1)
    return (x + F(0.5)) / scale - F(0.5)  # half_pixel


def nearest_indices(rounding: str, coordinate: np.ndarray, length: int) -> np.ndarray:
    """The input position each output position copies, clamped to the input."""
    if rounding == "floor":
        index = np.floor(coordinate)
    elif rounding == "ceil":
        index = np.ceil(coordinate)
    else:
        lower = np.floor(coordinate)
        halfway = coordinate - lower == F(0.5)
        rounded = np.where(coordinate >= 0, np.floor(coordinate + F(0.5)), -np.floor(-coordinate + F(0.5)))
        index = np.where(halfway, lower if rounding == "round_prefer_floor" else lower + 1, rounded)
    return np.clip(index.astype(np.int64), 0, length - 1)


def linear_taps(coordinate: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
    """(i0, i1, w0, w1) per output position: the two input positions and their weights."""
    c = np.clip(coordinate, F(0), F(length - 1))
    i0 = np.minimum(c.astype(np.int64), length - 1)
    i1 = np.minimum(i0 + 1, length - 1)
    w0, w1 = np.abs(c - i1.astype(F)), np.abs(c - i0.astype(F))
    same = i0 == i1
    w0[same], w1[same] = F(0.5), F(0.5)
    return i0, i1, w0, w1


def _scales(node: onnx.NodeProto, ctx: Context, shape_in: list[int], shape_out: list[int]) -> np.ndarray:
    """The scale per axis: the scales input, or output size / input size (float32) when sizes are given.

    Reading either input through ``ctx.value`` refuses sizes or scales computed from image values."""
    rank = len(shape_in)
    axes = [a % rank for a in attribute(node, "axes", list(range(rank)))]
    scales = np.ones(rank, F)
    given = ctx.value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(0, F)
    if given.size > 0:
        scales[axes] = given.astype(F)
        return scales
    if len(node.input) < 4 or not node.input[3]:
        raise RewriteRefused("it has neither scales nor sizes")
    ctx.value(node.input[3])
    for axis in range(rank):
        scales[axis] = F(shape_out[axis]) / F(shape_in[axis]) if shape_in[axis] else F(1)
    return scales


def _emit(ctx: Context, op_type: str, inputs: list[str], name: str | None, hint: str, **attrs: object) -> str:
    """Append a node: the rewritten node's output ``name`` when given, else a fresh tensor."""
    if name is None:
        return ctx.op(op_type, inputs, hint, **attrs)
    ctx.output(op_type, inputs, name, **attrs)
    return name


def interpolation_matrix(node: onnx.NodeProto, scale: np.float32, length_in: int, length_out: int) -> np.ndarray:
    """The (length_out, length_in) matrix A of one axis: Y = A X along it. A row holds a 1 (nearest) or
    the weights w0, w1 at i0, i1 (linear; one entry w0 + w1 = 1 where i0 = i1)."""
    positions = np.arange(length_out)
    coordinate = original_coordinate(attribute(node, "coordinate_transformation_mode", "half_pixel"), positions,
                                     scale, length_out, length_in)
    matrix = np.zeros((length_out, length_in), F)
    if attribute(node, "mode", "nearest") == "nearest":
        matrix[positions, nearest_indices(attribute(node, "nearest_mode", "round_prefer_floor"), coordinate, length_in)] = 1
        return matrix
    i0, i1, w0, w1 = linear_taps(coordinate, length_in)
    np.add.at(matrix, (positions, i0), w0)
    np.add.at(matrix, (positions, i1), w1)
    return matrix


def _axis(node: onnx.NodeProto, ctx: Context, x: str, axis: int, scale: np.float32, length_in: int,
          length_out: int, name: str | None) -> str:
    """Resize ``x`` (rank 4) along ``axis`` (2: H, 3: W) from ``length_in`` to ``length_out``: a MatMul with
    the axis's interpolation matrix, A X for H and X A^T for W. Its gradient is two MatMuls as well (a
    Gather's scatter-add gradient ran 6x slower on two threads than on one: lraspp's step lost 90 ms)."""
    matrix = interpolation_matrix(node, scale, length_in, length_out)
    if axis == 3:
        return _emit(ctx, "MatMul", [x, ctx.const(matrix.T.copy(), "resize_matrix")], name, "resized")
    return _emit(ctx, "MatMul", [ctx.const(matrix, "resize_matrix"), x], name, "resized")


def rewrite(node: onnx.NodeProto, ctx: Context) -> None:
    """Products with interpolation matrices along W, then H; N and C must keep their size and positions."""
    shape_in, shape_out = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if len(shape_in) != 4:
        raise RewriteRefused(f"the input has rank {len(shape_in)}; rewritten: rank 4 (N, C, H, W)")
    scales = _scales(node, ctx, shape_in, shape_out)
    for axis, label in ((0, "batch"), (1, "channel")):
        if shape_out[axis] != shape_in[axis] or scales[axis] != F(1):
            raise RewriteRefused(f"it resizes the {label} axis ({shape_in[axis]} -> {shape_out[axis]}, scale "
                                 f"{scales[axis]} at batch size {ctx.probe_batch}); rewritten: H and W only")
    changed = [a for a in (3, 2) if scales[a] != F(1)] if shape_in != shape_out else []
    x = node.input[0]
    if not changed:
        ctx.output("Identity", [x], node.output[0])
    for axis in changed:
        last = axis == changed[-1]
        x = _axis(node, ctx, x, axis, scales[axis], shape_in[axis], shape_out[axis], node.output[0] if last else None)


RESIZE = Rule("Resize", check, rewrite, "a MatMul per resized axis with its fixed interpolation matrix (nearest: "
                                        "one 1 per row; linear: the two weights)", sized=True)
