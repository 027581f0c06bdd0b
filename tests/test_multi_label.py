"""Multi-label classification (issue 15, part 1): the loss and its gradient against NumPy and PyTorch,
results, export, creation on a backbone, measures, dataset formats, bad input, resume and learning."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_dl as dl
from conftest import CHANNELS, SIZE, assert_unchanged, linear_network, snapshot, weights
from reference import binary_cross_entropy, sigmoid, weight_prior
from onnx_dl import dataset as D
from onnx_dl.engine import runtime
from onnx_dl.evaluation import evaluate_dl_model
from onnx_dl.measures import multi_label_measures, ranking_average_precision
from onnx_dl.synthetic import multi_label_samples

TYPE = "multi_label_classification"
RTOL = 1e-5


def _load(tmp_path, network=None, **params) -> dl.DLModel:
    path = tmp_path / f"net_{len(list(tmp_path.iterdir()))}.onnx"
    onnx.save(network or linear_network(), path)
    model = dl.read_dl_model(path, type=TYPE)
    for name, value in params.items():
        dl.set_dl_model_param(model, name, value)
    return model


def _samples(labels: list[list[int]], seed: int = 0, scale: float = 1.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.normal(0, scale, (SIZE, SIZE, CHANNELS)).astype(np.float32), "image_label_ids": ids}
            for ids in labels]


def _reference(model, samples, class_weights, alpha):
    w = weights(model)
    W, b = w["fc.weight"].astype(np.float64), w["fc.bias"].astype(np.float64)
    x = np.stack([s["image"].transpose(2, 0, 1) for s in samples]).reshape(len(samples), -1).astype(np.float64)
    y = np.zeros((len(samples), 3))
    for n, s in enumerate(samples):
        y[n, list(s["image_label_ids"])] = 1.0
    z = x @ W.T + b
    bce, dz = binary_cross_entropy(z, y, np.asarray(class_weights, np.float64))
    prior = weight_prior(alpha, [W])
    return z, y, {"total_loss": bce + prior, "loss_binary_cross_entropy": bce, "loss_weight_prior": prior}, \
        dz.T @ x + alpha * W, dz.sum(axis=0)


LABELS = [[0], [1, 2], [], [0, 1, 2], [2], [1]]


def test_loss_and_gradient_match_the_numpy_reference_and_torch(tmp_path):
    """Weighted BCE from the logits (class weights weigh present labels), the prior, and one plain SGD step."""
    torch = pytest.importorskip("torch")
    class_weights = [0.5, 2.0, 1.25]
    model = _load(tmp_path, batch_size=6, class_weights=class_weights, weight_prior=0.03, momentum=0.0,
                  learning_rate=0.1)
    samples = _samples(LABELS, seed=1)
    before = weights(model)
    z, y, expected, dW, db = _reference(model, samples, class_weights, 0.03)
    peer = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(z), torch.tensor(y), pos_weight=torch.tensor(class_weights, dtype=torch.float64))
    assert float(peer) == pytest.approx(expected["loss_binary_cross_entropy"], rel=1e-12)
    result = dl.train_dl_model_batch(model, samples)
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=RTOL)
    after = weights(model)
    np.testing.assert_allclose((before["fc.weight"] - after["fc.weight"]) / 0.1, dW, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose((before["fc.bias"] - after["fc.bias"]) / 0.1, db, rtol=RTOL, atol=1e-6)


def test_huge_logits_stay_finite_and_exact(tmp_path):
    """Written from the logits: |z| ~ 1e3 gives the reference loss, not inf or NaN."""
    model = _load(tmp_path, batch_size=6, momentum=0.0, learning_rate=1e-9)
    samples = _samples(LABELS, seed=2, scale=300.0)
    z, _, expected, _, _ = _reference(model, samples, [1.0, 1.0, 1.0], 0.0)
    assert np.abs(z).max() > 500
    result = dl.train_dl_model_batch(model, samples)
    assert result["loss_binary_cross_entropy"] == pytest.approx(expected["loss_binary_cross_entropy"], rel=RTOL)


def test_chunks_of_a_multiplier_equal_one_big_batch(tmp_path):
    samples = _samples(LABELS * 2, seed=3)
    one = _load(tmp_path, batch_size=12, momentum=0.0, learning_rate=0.1)
    two = _load(tmp_path, batch_size=6, batch_size_multiplier=2, momentum=0.0, learning_rate=0.1)
    first, second = dl.train_dl_model_batch(one, samples), dl.train_dl_model_batch(two, samples)
    assert second["total_loss"] == pytest.approx(first["total_loss"], rel=1e-6)
    for name, value in weights(one).items():
        np.testing.assert_allclose(weights(two)[name], value, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("labels, message", [
    ([7], r"sample 1, key 'image_label_ids': expected class ids among the model's class_ids \[0, 1, 2\], got list \[7\]"),
    (["a"], "sample 1, key 'image_label_ids': expected class ids"),
    ([[0, 1]], "sample 1, key 'image_label_ids': expected class ids"),
    ([True], "sample 1, key 'image_label_ids': expected class ids"),
    (None, "sample 1: missing key 'image_label_ids'"),
])
def test_bad_labels_are_refused_and_change_nothing(tmp_path, labels, message):
    model = _load(tmp_path, batch_size=2)
    dl.train_dl_model_batch(model, _samples([[0], [1]]))
    before = snapshot(model)
    samples = _samples([[0], [1]], seed=4)
    if labels is None:
        del samples[1]["image_label_ids"]
    else:
        samples[1]["image_label_ids"] = labels
    with pytest.raises(dl.DLSampleError, match=message):
        dl.train_dl_model_batch(model, samples)
    assert_unchanged(before, model)


def test_results_list_every_confidence_and_the_classes_from_min_confidence(tmp_path):
    model = _load(tmp_path, class_names=["a", "b", "c"])
    samples = _samples(LABELS, seed=5)
    z, _, _, _, _ = _reference(model, samples, [1.0] * 3, 0.0)
    results = dl.apply_dl_model(model, samples)
    for row, result in zip(sigmoid(z), results):
        np.testing.assert_allclose(result["classification_all_confidences"], row, rtol=1e-5)
        chosen = [k for k in np.argsort(-row) if row[k] >= 0.5]
        assert result["classification_class_ids"] == chosen
        assert result["classification_class_names"] == [["a", "b", "c"][k] for k in chosen]
        np.testing.assert_allclose(result["classification_confidences"], row[chosen], rtol=1e-5)
    dl.set_dl_model_param(model, "min_confidence", 0.0)
    assert all(len(r["classification_class_ids"]) == 3 for r in dl.apply_dl_model(model, samples))
    dl.set_dl_model_param(model, "min_confidence", 1.0)
    assert all(r["classification_class_ids"] == [] for r in dl.apply_dl_model(model, samples) if max(
        r["classification_all_confidences"]) < 1.0)
    with pytest.raises(dl.DLParamError, match="min_confidence"):
        dl.set_dl_model_param(model, "min_confidence", 1.5)
    with pytest.raises(dl.DLParamError, match="unknown outputs"):
        dl.apply_dl_model(model, samples, outputs=["bbox_row1"])


def test_the_written_file_ends_in_a_sigmoid_and_any_runtime_gives_apply_s_confidences(tmp_path):
    model = _load(tmp_path, batch_size=6)
    samples = _samples(LABELS, seed=6)
    dl.train_dl_model_batch(model, samples)
    path = tmp_path / "multi.onnx"
    dl.write_dl_model(model, path)
    written = onnx.load(path)
    assert [n.op_type for n in written.graph.node][-1] == "Sigmoid" and written.graph.output[0].name == "confidences"
    session = runtime.ort().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.stack([s["image"].transpose(2, 0, 1) for s in samples]).astype(np.float32)
    plain = session.run(None, {session.get_inputs()[0].name: images})[0]
    applied = np.array([r["classification_all_confidences"] for r in dl.apply_dl_model(model, samples)])
    np.testing.assert_allclose(plain, applied, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_reading_the_written_file_continues_training_bit_for_bit(tmp_path, solver):
    steps = [_samples(LABELS, seed=10 + i) for i in range(4)]
    straight = _load(tmp_path, batch_size=6, solver_type=solver, learning_rate=0.05)
    for samples in steps:
        dl.train_dl_model_batch(straight, samples)
    resumed = _load(tmp_path, batch_size=6, solver_type=solver, learning_rate=0.05)
    for samples in steps[:2]:
        dl.train_dl_model_batch(resumed, samples)
    dl.write_dl_model(resumed, tmp_path / "half.onnx")
    resumed = dl.read_dl_model(tmp_path / "half.onnx")
    assert dl.get_dl_model_param(resumed, "type") == TYPE
    for samples in steps[2:]:
        dl.train_dl_model_batch(resumed, samples)
    for name, value in weights(straight).items():
        assert np.array_equal(weights(resumed)[name], value), name


def test_created_on_the_bundled_classifier():
    model = dl.create_dl_model_multi_label_classification(
        "classifier_compact", [3, 5, 9], {"class_names": ["x", "y", "z"], "image_dimensions": [48, 48, 3],
                                           "min_confidence": 0.3, "freeze_backbone": True})
    get = lambda name: dl.get_dl_model_param(model, name)  # noqa: E731
    assert get("type") == TYPE and get("class_ids") == [3, 5, 9] and get("class_names") == ["x", "y", "z"]
    assert get("min_confidence") == 0.3 and get("image_dimensions") == [48, 48, 3]
    assert 0 < get("num_trainable_params") < 1000  # the new layer only: 3 x (features + 1)
    samples = multi_label_samples(4, 48, 0, class_ids=(3, 5, 9))
    dl.set_dl_model_param(model, "batch_size", 4)
    assert np.isfinite(dl.train_dl_model_batch(model, samples)["total_loss"])
    with pytest.raises(dl.DLParamError, match="unknown model parameter 'anchor_spin'"):
        dl.create_dl_model_multi_label_classification("classifier_compact", [0, 1], {"anchor_spin": [0.0]})
    with pytest.raises(dl.DLParamError, match="'anchor_angles' does not apply to a multi_label_classification model"):
        dl.create_dl_model_multi_label_classification("classifier_compact", [0, 1], {"anchor_angles": [0.0]})
    with pytest.raises(dl.DLParamError, match="read-only"):
        dl.create_dl_model_multi_label_classification("classifier_compact", [0, 1], {"num_classes": 2})
    with pytest.raises(dl.DLParamError, match="unique"):
        dl.create_dl_model_multi_label_classification("classifier_compact", [1, 1])


def _brute_force_ap(scores, relevant):
    """AP from its definition: mean over relevant items of the precision at the lowest score >= the item's."""
    scores, relevant = np.asarray(scores, float), np.asarray(relevant, bool)
    total = 0.0
    for s in scores[relevant]:
        retrieved = scores >= s
        total += (retrieved & relevant).sum() / retrieved.sum()
    return total / relevant.sum()


def test_ranking_average_precision_matches_its_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        scores = np.round(rng.uniform(0, 1, n), int(rng.integers(1, 3)))  # rounded: many ties
        relevant = rng.uniform(size=n) < 0.4
        if relevant.any():
            assert ranking_average_precision(scores, relevant) == pytest.approx(_brute_force_ap(scores, relevant))
        else:
            assert np.isnan(ranking_average_precision(scores, relevant))
    assert ranking_average_precision([0.9, 0.8, 0.7], [0, 1, 1]) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_measures_at_the_threshold():
    samples = [{"image_label_ids": ids} for ids in ([0], [0, 1], [], [1])]
    confidences = [[0.9, 0.2], [0.6, 0.7], [0.4, 0.8], [0.1, 0.3]]
    results = [{"classification_all_confidences": c} for c in confidences]
    found = multi_label_measures(results, samples, [0, 1], 0.5)
    # class 0: predicted {0, 1}, true {0, 1}: P = R = 1; class 1: predicted {1, 2}, true {1, 3}: P = R = 1/2
    assert found["precision"] == {0: 1.0, 1: 0.5} and found["recall"] == {0: 1.0, 1: 0.5}
    assert found["f_score"] == {0: 1.0, 1: 0.5} and found["mean_f_score"] == 0.75
    assert found["ap_per_class"][0] == 1.0
    ap_1 = (1 / 2 + 2 / 3) / 2  # class 1 is present at ranks 2 and 3 of 0.8, 0.7, 0.3, 0.2
    assert found["ap_per_class"][1] == pytest.approx(ap_1)
    assert found["mean_ap"] == pytest.approx((1.0 + ap_1) / 2)


def test_csv_dataset_round_trip_and_errors(tmp_path):
    path = D.write_synthetic_dataset(TYPE, tmp_path / "data", count=12, size=32, seed=1)
    assert path.name == "labels.csv"
    dataset = D.read_dl_dataset(path)
    assert D.dataset_type(dataset) == TYPE and dataset["class_names"] == sorted(dataset["class_names"])
    expected = multi_label_samples(12, 32, 1)
    names = dataset["class_names"]
    for entry, sample in zip(dataset["samples"], expected):
        from onnx_dl.synthetic import SHAPES
        assert sorted(names[i] for i in entry["image_label_ids"]) == sorted(SHAPES[i] for i in sample["image_label_ids"])
    raw = D.gen_dl_samples(dataset, [0, 1])
    assert raw[0]["image"].shape == (32, 32, 3) and raw[0]["image_label_ids"] == dataset["samples"][0]["image_label_ids"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file_name,labels\na.png,cat,dog\n", encoding="utf-8")
    with pytest.raises(dl.DLError, match=r"row 1: expected 'file_name,labels'"):
        D.read_dl_dataset(bad)


def test_the_command_line_trains_a_multi_label_model(tmp_path):
    from onnx_dl import cli
    assert cli.main(["train", "--type", TYPE, "--samples", "64", "--epochs", "1", "--batch-size", "16",
                     "--output", str(tmp_path)]) == 0
    best = next(tmp_path.glob("*/best_model.onnx"))
    assert dl.get_dl_model_param(dl.read_dl_model(best), "type") == TYPE


@pytest.mark.slow
def test_generated_shapes_reach_mean_ap_0_9():
    """Done-when: images with 0 to 3 of four shapes; mean AP on held-out images, three seeds, each with room."""
    train = multi_label_samples(4000, 48, 1)
    held_out = multi_label_samples(200, 48, 2)
    found = []
    for seed in range(3):
        model = dl.create_dl_model_multi_label_classification("classifier_compact", [0, 1, 2, 3], {
            "image_dimensions": [48, 48, 3], "batch_size": 32, "solver_type": "adam", "learning_rate": 0.002})
        rng = np.random.default_rng(seed)
        for _ in range(600):
            dl.train_dl_model_batch(model, [train[i] for i in rng.choice(len(train), 32, replace=False)])
        found.append(evaluate_dl_model(model, samples=held_out)["mean_ap"])
    assert min(found) >= 0.9 and np.mean(found) >= 0.95, found
