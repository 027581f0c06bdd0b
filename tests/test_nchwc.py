"""Depthwise and grouped convolutions and depthwise gradients in the engine's blocked layout (onnx_dl.nchwc):
the same loss and gradients as the engine's own NCHW kernels, for channel counts on and off the block,
biases, strides, dilations, uneven pads and 5 x 5 kernels, first layers read in NCHW, and each rewrite fires
where it should."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import load
from onnx import helper
from test_fast_gradients import CLASSES, conv_relu_network, engine_gradients

from onnx_dl import nchwc

# (name, channels out, kernel, stride, pads, group, dilation, bias): conv_relu_network's layers
LAYERS = [
    ("expand", 12, (1, 1), 1, (0, 0, 0, 0), 1, 1, False),
    ("dw1", 12, (3, 3), 1, (1, 1, 1, 1), 12, 1, False),  # 12 channels: padded to the block
    ("dw2", 12, (3, 3), 2, (1, 1, 1, 1), 12, 1, True),  # strided, with a bias
    ("narrow", 6, (1, 1), 1, (0, 0, 0, 0), 1, 1, False),
    ("odd", 6, (3, 3), 1, (1, 1, 1, 1), 6, 1, False),  # 6 channels: the engine reorders multiples of 4 only
    ("widen", 32, (1, 1), 1, (0, 0, 0, 0), 1, 1, True),
    ("dw3", 32, (5, 5), 1, (2, 1, 2, 3), 32, 1, True),  # on the block (8 and 16), uneven pads
    ("dw4", 32, (3, 3), 1, (2, 2, 2, 2), 32, 2, False),  # dilated
    ("grouped16", 32, (3, 3), 1, (1, 1, 1, 1), 2, 1, True),  # 16 channels per group: whole blocks of 8 or 16
    ("grouped16s", 32, (3, 3), 2, (1, 1, 1, 1), 2, 1, False),  # ... strided
    ("grouped8", 32, (3, 3), 1, (1, 1, 1, 1), 4, 1, False),  # 8 per group: whole blocks only where B = 8
    ("grouped_wide", 64, (3, 3), 1, (1, 1, 1, 1), 2, 1, False),  # 16 in, 32 out per group
    ("dense", 32, (3, 3), 1, (1, 1, 1, 1), 1, 1, False),  # dense, 4 x 3 x 16 < 32 x 9 (4 x 4 outputs): left alone
]

# dense convolutions: blocked where four times the chunk's output positions reach C x kh x kw (16 x 16 images,
# chunk 3)
DENSE_LAYERS = [
    ("widen", 16, (1, 1), 1, (0, 0, 0, 0), 1, 1, False),  # 1 x 1: left alone
    ("dense", 16, (3, 3), 1, (1, 1, 1, 1), 1, 1, True),  # 4 x 3 x 256 >= 16 x 9: forward and input gradient
    ("dense_s2", 16, (3, 3), 2, (1, 0, 1, 0), 1, 1, False),  # strided, uneven pads (8 x 7 out): forward only
    ("dense_7", 16, (7, 7), 1, (3, 3, 3, 3), 1, 1, True),  # 4 x 3 x 56 < 16 x 49: left alone
    ("dense_dil", 16, (3, 3), 1, (2, 2, 2, 2), 1, 2, False),  # dilated: forward only
    ("dense_wide", 96, (3, 3), 1, (1, 1, 1, 1), 1, 1, False),  # forward 4 x 3 x 56 < 96 x 9: left alone; its
    # input gradient (16 channels out of 96) 4 x 3 x 56 >= 16 x 9: blocked
]


def depthwise_network(seed: int = 0, size: int = 13) -> onnx.ModelProto:
    """image (N, 3, size, size) -> [Conv -> Relu] x LAYERS -> GlobalAveragePool -> Flatten -> Gemm."""
    return conv_relu_network(seed, LAYERS, size, channels=3, std=0.5)


def blocked_against_engine(tmp_path, monkeypatch, network: onnx.ModelProto, size: int, images: int, seed: int,
                           batch_size: int) -> dict[str, int]:
    """Trains ``network`` on ``images`` random images of ``size`` x ``size`` with and without nchwc's rewrite
    (sessions built for ``batch_size``); asserts the same loss and every gradient of the engine's NCHW kernels
    and returns the rewrite counts of the blocked run."""
    rng = np.random.default_rng(seed)
    samples = [{"image": rng.uniform(-1, 1, (size, size, 3)).astype(np.float32), "image_label_id": i % CLASSES}
               for i in range(images)]
    found = {}
    for blocked in (True, False):
        if not blocked:
            monkeypatch.setattr(nchwc, "rewrite", lambda training, shapes, chunk=None: {})
        model = load(tmp_path, network, batch_size=batch_size, image_dimensions=[size, size, 3], weight_prior=0.0)
        found[blocked] = (*engine_gradients(model, samples), model.trainer().session.rewrites)
    assert "nchwc.Conv" not in found[False][2]
    assert found[True][0] == pytest.approx(found[False][0], rel=1e-6)
    assert set(found[True][1]) == set(found[False][1])
    for name, value in found[False][1].items():
        np.testing.assert_allclose(found[True][1][name], value, rtol=1e-5, atol=1e-6 * np.abs(value).max(), err_msg=name)
    return found[True][2]


def test_block_size_is_a_vector_width():
    assert nchwc.block_size() in (4, 8, 16)


@pytest.mark.parametrize(("seed", "images"), [(0, 3), (1, 3), (2, 2)])
def test_depthwise_convolutions_in_blocks_give_the_engine_kernels_gradients(tmp_path, monkeypatch, seed, images):
    """Sessions built for batch_size 3, run on chunks of 3 images (the blocked weight gradients) and of 2 (the
    engine's, chosen in the graph)."""
    counts = blocked_against_engine(tmp_path, monkeypatch, depthwise_network(seed), 13, images, 10 + seed, 3)
    # forward: dw1..dw4, grouped16(s), grouped_wide; input gradients turned into forward convolutions by
    # fast_gradients: dw1, dw3, grouped16, grouped_wide (dw2 and grouped16s are strided, dw4 dilated);
    # grouped8 (both) where B = 8; never 'odd' or 'dense'
    assert counts["nchwc.Conv"] == 11 + (2 if nchwc.block_size() <= 8 else 0)
    # weight gradients: dw1, dw2 (strided, with a bias), dw3 (5 x 5, uneven pads); not dw4 (dilated) or
    # 'odd' (6 channels: ReorderInput takes multiples of 4); strided input gradients: dw2
    assert counts["nchwc.dW"] == 3 and counts["nchwc.dX"] == 1


@pytest.mark.parametrize(("seed", "images"), [(0, 3), (1, 2)])
def test_dense_convolutions_in_blocks_give_the_engine_kernels_gradients(tmp_path, monkeypatch, seed, images):
    """Dense forward and turned input-gradient convolutions in blocks (where their weights are small next to
    the chunk's outputs): the loss and every gradient of the engine's NCHW kernels."""
    network = conv_relu_network(seed, DENSE_LAYERS, 16, channels=3, std=0.4)
    counts = blocked_against_engine(tmp_path, monkeypatch, network, 16, images, 20 + seed, 3)
    # forward: dense, dense_s2, dense_dil; input gradients (stride 1, undilated, turned by fast_gradients): dense,
    # dense_wide
    assert counts["nchwc.Conv"] == 5


@pytest.mark.parametrize(("first", "blocked_count"), [
    (("stem", 16, (7, 7), 2, (3, 3, 3, 3), 1, 1, True), 1),  # resnet's stem: window 3 x 49 = 147
    (("stem", 16, (5, 5), 2, (2, 1, 1, 2), 1, 1, False), 1),  # window 75, uneven pads
    (("stem", 16, (5, 5), 1, (2, 2, 2, 2), 1, 1, False), 0),  # stride 1: faster by im2col + GEMM, left alone
    (("stem", 16, (3, 3), 2, (1, 1, 1, 1), 1, 1, True), 0),  # window 27: left alone
])
def test_a_first_layer_in_blocks_gives_the_engine_kernels_gradients(tmp_path, monkeypatch, first, blocked_count):
    """A first layer (3 input channels) by the blocked kernel that reads NCHW input: the loss and every gradient
    of the engine's NCHW kernels."""
    network = conv_relu_network(3, [first, ("head", 16, (1, 1), 1, (0, 0, 0, 0), 1, 1, False)], 17, channels=3, std=0.4)
    counts = blocked_against_engine(tmp_path, monkeypatch, network, 17, 2, 30, 2)
    assert counts.get("nchwc.Conv", 0) == blocked_count


def test_which_convolutions_run_in_blocks():
    shapes = {"w": [8, 2, 3, 3], "d": [8, 1, 3, 3], "g": [64, 16, 3, 3], "s": [6, 1, 3, 3], "m": [16, 1, 3, 3]}
    conv = lambda weight, **a: helper.make_node("Conv", ["x", weight], ["y"], kernel_shape=[3, 3], **a)  # noqa: E731
    assert nchwc.blocked(conv("w", group=4), shapes, 8) is None  # 2 channels per group: not whole blocks
    assert nchwc.blocked(conv("w"), shapes, 8) is None  # dense, 2 input channels: not whole blocks
    dense = {"k": [32, 16, 3, 3], "y": [None, 32, 6, 6], "p": [32, 16, 1, 1]}
    assert nchwc.blocked(conv("k"), dense, 16, chunk=2) == (32, 16, 1, [3, 3])  # 4 x 2 x 36 >= 32 x 9
    smaller = {**dense, "y": [None, 32, 5, 7]}
    assert nchwc.blocked(conv("k"), smaller, 16, chunk=2) is None  # 4 x 2 x 35 < 288: the weight's reorder would not pay
    assert nchwc.blocked(conv("k"), dense, 16) is None  # chunk unknown
    assert nchwc.blocked(conv("k"), {"k": dense["k"]}, 16, chunk=8) is None  # output size unknown
    assert nchwc.blocked(conv("k"), dense, 32, chunk=8) is None  # 16 inputs: not a whole block of 32
    assert nchwc.blocked(helper.make_node("Conv", ["x", "p"], ["y"], kernel_shape=[1, 1]), dense, 16, chunk=64) is None
    assert nchwc.blocked(conv("d", group=8, auto_pad="SAME_UPPER"), shapes, 8) is None
    assert nchwc.blocked(conv("d", group=8, pads=[1, 1, 1, 1]), shapes, 16) == (8, 1, 8, [3, 3])
    assert nchwc.blocked(conv("d", group=8), {}, 8) is None  # the weight's shape unknown
    assert nchwc.blocked(conv("s", group=6), shapes, 8) is None  # ReorderInput takes multiples of 4 channels
    assert nchwc.blocked(conv("m", group=8), shapes, 8) is None  # 2 outputs per group (a channel multiplier)
    assert nchwc.blocked(conv("g", group=4), shapes, 16) == (64, 16, 4, [3, 3])
    assert nchwc.blocked(conv("g", group=2), shapes, 16) == (64, 16, 2, [3, 3])  # 32 outputs from 16 inputs per group
    assert nchwc.blocked(conv("g", group=8), shapes, 16) is None  # 8 outputs per group
    first = {"s": [64, 3, 7, 7], "o": [60, 3, 7, 7], "g": [64, 1, 7, 7], "f": [64, 3, 5, 5], "t": [64, 3, 3, 3]}
    stem = lambda weight, k, s=2: helper.make_node("Conv", ["x", weight], ["y"], kernel_shape=[k, k],  # noqa: E731
                                                   strides=[s, s])
    assert nchwc.blocked(stem("s", 7), first, 16) == (64, 3, 1, [7, 7])  # a first layer, input read in NCHW
    assert nchwc.blocked(stem("s", 7), first, 16).nchw_input(16)
    assert nchwc.blocked(stem("f", 5), first, 16) == (64, 3, 1, [5, 5])  # window 75
    assert nchwc.blocked(stem("o", 7), first, 16) is None  # 60 outputs: not whole blocks
    assert nchwc.blocked(stem("g", 7), first, 16) is None  # window 49: im2col + GEMM is faster
    assert nchwc.blocked(stem("t", 3), first, 16) is None  # window 27
    assert nchwc.blocked(stem("s", 7, 1), first, 16) is None  # stride 1


@pytest.mark.parametrize("images", [3, 2])
def test_blocked_weight_gradients_run_exactly_at_the_chunk_size(tmp_path, monkeypatch, images):
    """The If on the batch size takes the blocked branch for chunks of batch_size images only: with that
    branch doubled, the depthwise weight gradients double at 3 images and stay at 2."""
    original = nchwc._weight_gradient_nodes

    def doubled(*args, **kwargs):
        nodes = original(*args, **kwargs)
        branch = next(a.g for a in nodes[-1].attribute if a.name == "then_branch")
        result = branch.output[0].name
        branch.node.append(helper.make_node("Add", [result, result], [result + "_doubled"]))
        branch.output[0].name = result + "_doubled"
        return nodes

    rng = np.random.default_rng(3)
    samples = [{"image": rng.uniform(-1, 1, (13, 13, 3)).astype(np.float32), "image_label_id": i % CLASSES}
               for i in range(images)]
    found = {}
    for sabotaged in (False, True):
        if sabotaged:
            monkeypatch.setattr(nchwc, "_weight_gradient_nodes", doubled)
        model = load(tmp_path, depthwise_network(), batch_size=3, image_dimensions=[13, 13, 3], weight_prior=0.0)
        found[sabotaged] = engine_gradients(model, samples)[1]
    for name in ("dw1.weight", "dw2.weight", "dw3.weight"):
        np.testing.assert_allclose(found[True][name], found[False][name] * (2 if images == 3 else 1), rtol=1e-6)
    np.testing.assert_array_equal(found[True]["dw4.weight"], found[False]["dw4.weight"])
