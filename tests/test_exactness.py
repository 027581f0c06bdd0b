"""Losses, gradients and both solvers against the NumPy references, over several steps."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_dl as dl
from conftest import image_samples, linear_network, load, weights
from reference import adam, linear_gradients, sgd

from onnx_dl.solvers import SOLVERS

RTOL = 1e-5


def _xy(samples, class_ids=(0, 1, 2)):
    x = np.stack([s["image"].transpose(2, 0, 1) for s in samples]).astype(np.float64)
    y = np.array([list(class_ids).index(s["image_label_id"]) for s in samples])
    return x, y


def _state(model):
    w = weights(model)
    return w["fc.weight"].astype(np.float64), w["fc.bias"].astype(np.float64)


def test_losses_and_gradient_match_reference(tmp_path):
    """Weighted CE, the prior (bias excluded) and the total, and the gradient from one plain SGD step."""
    model = load(tmp_path, linear_network(), batch_size=6, class_weights=[0.5, 2.0, 1.25], weight_prior=0.03,
                 momentum=0.0, learning_rate=0.1)
    samples = image_samples(6, [0, 1, 2, 2, 1, 1], seed=1)
    W, b = _state(model)
    x, y = _xy(samples)
    expected, dW, db = linear_gradients(W, b, x, y, np.array([0.5, 2.0, 1.25]), 0.03)
    result = dl.train_dl_model_batch(model, samples)
    assert set(result) == {"total_loss", "loss_cross_entropy", "loss_weight_prior"}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=RTOL)
    assert result["total_loss"] == pytest.approx(result["loss_cross_entropy"] + result["loss_weight_prior"], rel=1e-6)
    W1, b1 = _state(model)  # momentum 0: w1 = w0 - lr * g
    np.testing.assert_allclose((W - W1) / 0.1, dW, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose((b - b1) / 0.1, db, rtol=RTOL, atol=1e-6)


def test_sgd_trajectory_with_changing_rate_and_momentum(tmp_path):
    """HALCON's rule over 8 steps; lr and momentum change between steps, the velocity keeps its scale."""
    model = load(tmp_path, linear_network(), batch_size=4, weight_prior=0.01)
    W, b = _state(model)
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    schedule = [(0.05, 0.9)] * 3 + [(0.005, 0.9)] * 2 + [(0.02, 0.5)] * 3
    for step, (lr, mu) in enumerate(schedule):
        dl.set_dl_model_param(model, "learning_rate", lr)
        dl.set_dl_model_param(model, "momentum", mu)
        samples = image_samples(4, [0, 1, 2, 1], seed=10 + step)
        losses, dW, db = linear_gradients(W, b, *_xy(samples), np.ones(3), 0.01)
        result = dl.train_dl_model_batch(model, samples)
        assert result["total_loss"] == pytest.approx(losses["total_loss"], rel=RTOL)
        W, vW = sgd(W, vW, dW, lr, mu)
        b, vb = sgd(b, vb, db, lr, mu)
        got_W, got_b = _state(model)
        np.testing.assert_allclose(got_W, W, rtol=RTOL, atol=1e-7)
        np.testing.assert_allclose(got_b, b, rtol=RTOL, atol=1e-7)


def test_adam_trajectory_with_changing_settings(tmp_path):
    """Textbook Adam over 8 steps; lr, betas and epsilon change between steps, moments and t carry on."""
    model = load(tmp_path, linear_network(), batch_size=4, solver_type="adam", weight_prior=0.002)
    W, b = _state(model)
    mW, vW, mb, vb = np.zeros_like(W), np.zeros_like(W), np.zeros_like(b), np.zeros_like(b)
    schedule = [(1e-2, 0.9, 0.999, 1e-8)] * 3 + [(3e-3, 0.5, 0.99, 1e-3)] * 3 + [(1e-2, 0.8, 0.9, 1e-6)] * 2
    for t, (lr, b1, b2, eps) in enumerate(schedule, start=1):
        for name, value in [("learning_rate", lr), ("adam_beta1", b1), ("adam_beta2", b2), ("adam_epsilon", eps)]:
            dl.set_dl_model_param(model, name, value)
        samples = image_samples(4, [2, 0, 1, 0], seed=20 + t)
        _, dW, db = linear_gradients(W, b, *_xy(samples), np.ones(3), 0.002)
        dl.train_dl_model_batch(model, samples)
        W, mW, vW = adam(W, mW, vW, dW, t, lr, b1, b2, eps)
        b, mb, vb = adam(b, mb, vb, db, t, lr, b1, b2, eps)
        got_W, got_b = _state(model)
        np.testing.assert_allclose(got_W, W, rtol=RTOL, atol=1e-7)
        np.testing.assert_allclose(got_b, b, rtol=RTOL, atol=1e-7)


def test_solver_switch_starts_fresh_state(tmp_path):
    """Switching sgd -> adam starts Adam at t = 1 with zero moments (documented behaviour)."""
    model = load(tmp_path, linear_network(), batch_size=4, learning_rate=0.05)
    dl.train_dl_model_batch(model, image_samples(4, [0, 1, 2, 0], seed=1))
    dl.set_dl_model_param(model, "solver_type", "adam")
    dl.set_dl_model_param(model, "learning_rate", 0.01)
    W, b = _state(model)
    samples = image_samples(4, [0, 1, 2, 0], seed=2)
    _, dW, _ = linear_gradients(W, b, *_xy(samples), np.ones(3), 0.0)
    dl.train_dl_model_batch(model, samples)
    expected, _, _ = adam(W, np.zeros_like(W), np.zeros_like(W), dW, 1, 0.01, 0.9, 0.999, 1e-8)
    np.testing.assert_allclose(_state(model)[0], expected, rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_multiplier_equals_one_big_batch(tmp_path, solver):
    """8 samples as batch_size 4 x multiplier 2 equal one step of batch_size 8 (no batch norm)."""
    samples = image_samples(8, [0, 1, 2, 2, 0, 1, 1, 1], seed=5)
    common = dict(solver_type=solver, class_weights=[1.0, 3.0, 0.5], weight_prior=0.01, learning_rate=0.02)
    chunked = load(tmp_path, linear_network(), batch_size=4, batch_size_multiplier=2, **common)
    whole = load(tmp_path, linear_network(), batch_size=8, **common)
    for _ in range(3):
        a = dl.train_dl_model_batch(chunked, samples)
        b = dl.train_dl_model_batch(whole, samples)
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=RTOL)
    for name, value in weights(whole).items():
        np.testing.assert_allclose(weights(chunked)[name], value, rtol=RTOL, atol=1e-7)


def test_several_chunks_without_multiplier(tmp_path):
    """With multiplier 1 a multiple of batch_size is one step over all samples."""
    samples = image_samples(12, [0, 1, 2], seed=6)
    chunked = load(tmp_path, linear_network(), batch_size=4)
    whole = load(tmp_path, linear_network(), batch_size=12)
    assert dl.train_dl_model_batch(chunked, samples)["total_loss"] == pytest.approx(
        dl.train_dl_model_batch(whole, samples)["total_loss"], rel=RTOL)
    np.testing.assert_allclose(weights(chunked)["fc.weight"], weights(whole)["fc.weight"], rtol=RTOL, atol=1e-7)


def test_all_weights_zero_gives_zero_loss_not_nan(tmp_path):
    """Samples whose classes all weigh 0: loss 0, no NaN, only the prior moves the weights."""
    model = load(tmp_path, linear_network(), batch_size=4, class_weights=[0.0, 0.0, 1.0])
    result = dl.train_dl_model_batch(model, image_samples(4, [0, 1, 0, 1], seed=3))
    assert result["loss_cross_entropy"] == 0.0 and np.isfinite(result["total_loss"])


def test_hyper_parameters_change_without_rebuild(tmp_path):
    """learning_rate, momentum, solver, Adam settings, a positive weight_prior and class_weights reuse the
    engine session."""
    model = load(tmp_path, linear_network(), batch_size=4, weight_prior=0.01)
    samples = image_samples(4, [0, 1, 2, 0], seed=1)
    dl.train_dl_model_batch(model, samples)
    session = model._trainer.session
    changes = [("learning_rate", 0.5), ("momentum", 0.1), ("solver_type", "adam"), ("adam_beta1", 0.7),
               ("adam_beta2", 0.9), ("adam_epsilon", 1e-4), ("weight_prior", 0.1), ("class_weights", [1.0, 2.0, 3.0]),
               ("solver_type", "sgd")]
    for name, value in changes:
        dl.set_dl_model_param(model, name, value)
        dl.train_dl_model_batch(model, samples)
        assert model._trainer.session is session, name


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_a_zero_weight_prior_leaves_its_gradient_out_with_the_same_bits(tmp_path, monkeypatch, solver):
    """At weight_prior 0 the graph has no sum of squares; over steps at 0, then 0.05, then 0 again (each
    crossing rebuilds the session, carrying weights and solver state) losses and weights equal bit for bit
    those of a model that always has the prior in its graph."""
    from onnx_dl import training_graph

    batches = [image_samples(4, [0, 1, 2, 0], seed=s) for s in range(6)]
    priors = [0.0, 0.0, 0.05, 0.05, 0.0, 0.0]
    found = {}
    for always in (False, True):
        if always:
            monkeypatch.setattr(training_graph, "without_weight_prior", lambda tg: tg)
        model = load(tmp_path, linear_network(), batch_size=4, solver_type=solver)
        losses, sessions = [], []
        for prior, batch in zip(priors, batches):
            dl.set_dl_model_param(model, "weight_prior", prior)
            losses.append(dl.train_dl_model_batch(model, batch))
            sessions.append(model._trainer.session)
        squares = any(o.startswith("loss/sq") for n in model._trainer.graph.model.graph.node for o in n.output)
        found[always] = (losses, weights(model), len({id(s) for s in sessions}), squares)
    assert found[False][0] == found[True][0]
    assert all(np.array_equal(found[False][1][k], v) for k, v in found[True][1].items())
    assert found[False][2] == 3  # a session per crossing of 0
    assert found[True][3] and not found[False][3]  # the last graph (prior 0): no sum of squares


@pytest.mark.parametrize("solver", list(SOLVERS))  # every registered solver: its two forms agree
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("piece", [None, 999])
def test_host_update_equals_the_update_graph_bit_for_bit(solver, threads, piece, monkeypatch):
    """The CPU's host update (NumPy, in place, tensors split over threads, run in pieces: the default
    ones and pieces of 999 values, which cut every large tensor unevenly) and the update graph the GPU
    runs give the same bits over steps whose hyper-parameters change; Adam's step may differ in its last
    place: the engine's Sqrt is not correctly rounded (NumPy's is; measured 1 ulp off on 43 % of values)."""
    from onnx_dl import solvers
    from onnx_dl.engine import runtime
    from onnx_dl.engine import solver as optimizers

    if piece is not None:
        monkeypatch.setattr(optimizers, "_PIECE_SIZE", piece)
    rng = np.random.default_rng(0)
    shapes = [[70000], [3, 5, 3, 3], [1], [300, 257]]  # split and unsplit tensors
    model, slots = optimizers.update_graph(solver, shapes)
    session = runtime.ort().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    kinds = solvers.SOLVERS[solver].state
    weights_ = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    state = [[np.zeros(s, np.float32) for _ in kinds] for s in shapes]
    host_weights = [w.copy() for w in weights_]
    host_state = [[x.copy() for x in xs] for xs in state]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    host = optimizers.HostUpdate(solver, list(zip(host_weights, grads, host_state)), threads)
    params = {"learning_rate": 0.03, "momentum": 0.9, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8}
    for step in range(1, 5):
        for g in grads:
            g[...] = rng.standard_normal(g.shape).astype(np.float32)
        if step == 3:
            params = {**params, "learning_rate": 0.001, "momentum": 0.5, "adam_beta1": 0.7}
        scalars = solvers.SOLVERS[solver].scalars(params, step)
        feeds = dict(scalars)
        for (w, g, state_inputs, _), weight, grad, xs in zip(slots, weights_, grads, state):
            feeds.update({w: weight, g: grad, **dict(zip(state_inputs, xs))})
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        for i, (_, _, _, names) in enumerate(slots):
            weights_[i] = outputs[names[0]]
            state[i] = [outputs[n] for n in names[1:]]
        host(scalars)
        for i in range(len(shapes)):
            for ours, theirs in zip(host_state[i], state[i]):
                np.testing.assert_array_equal(ours, theirs)
            if solver == "sgd":
                np.testing.assert_array_equal(host_weights[i], weights_[i])
            else:  # a step off in its last place moves the weight's rounding by at most one unit
                np.testing.assert_allclose(host_weights[i], weights_[i], rtol=2.4e-7, atol=1e-8)
                weights_[i] = host_weights[i].copy()


@pytest.mark.parametrize("prior", [0.1, 0.0])
def test_a_weight_no_loss_reads_is_left_alone(tmp_path, prior):
    """An auxiliary head whose output no loss reads (as exported auxiliary classifiers are): not trained and
    not in the prior (PyTorch leaves a parameter without gradient alone, weight decay included); the
    classifier's update and the losses are the reference's."""
    from onnx import TensorProto, helper, numpy_helper

    network = linear_network()
    aux = np.random.default_rng(5).normal(0, 0.3, (network.graph.initializer[0].dims[1], 3)).astype(np.float32)
    network.graph.initializer.append(numpy_helper.from_array(aux, "aux.weight"))
    network.graph.node.append(helper.make_node("MatMul", ["flat", "aux.weight"], ["aux_out"]))
    network.graph.output.append(helper.make_tensor_value_info("aux_out", TensorProto.FLOAT, ["N", 3]))
    model = load(tmp_path, network, batch_size=4, weight_prior=prior, momentum=0.0, learning_rate=0.5)
    samples = image_samples(4, [0, 1, 2, 0], seed=9)
    W, b = _state(model)
    x, y = _xy(samples)
    expected, dW, db = linear_gradients(W, b, x, y, np.ones(3), prior)
    result = dl.train_dl_model_batch(model, samples)
    np.testing.assert_array_equal(weights(model)["aux.weight"], aux)
    W1, b1 = _state(model)
    np.testing.assert_allclose((W - W1) / 0.5, dW, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose((b - b1) / 0.5, db, rtol=RTOL, atol=1e-6)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=RTOL)
