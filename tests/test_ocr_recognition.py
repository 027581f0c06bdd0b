"""Deep OCR word recognition (model type 'ocr_recognition', issue 16): a training step against PyTorch,
parameters (alphabet, time steps), bad words, results and their decoding, export, foreign (N, T, K)
networks, exact resume, measures, dataset formats, the command line, and learning generated words."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_dl as dl
from conftest import assert_unchanged, snapshot, weights
from onnx_dl import dataset as D
from onnx_dl import synthetic
from onnx_dl.cli import main as cli
from onnx_dl.engine import runtime
from onnx_dl.evaluation import evaluate_dl_model
from onnx_dl.measures import edit_distance, ocr_recognition_measures
from onnx_dl.tasks import ocr_recognition as ocr

TYPE = "ocr_recognition"
RTOL = 1e-5
HEIGHT, WIDTH, STEP = 6, 24, 4  # the tiny network: T = 6 steps
ALPHABET = ["A", "B", "C"]


def tiny_network(classes: int = 4, seed: int = 0, steps_first: bool = False) -> onnx.ModelProto:
    """image (N, 1, 6, 24) -> Conv (kernel 6 x 4, stride 4, bias) -> (N, K, 1, 6) -> Squeeze -> scores (N, K, T)
    (``steps_first``: then Transpose to (N, T, K)): gradients of a plain convolution, no batch norm."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.05, (classes, 1, HEIGHT, STEP)).astype(np.float32), "conv.weight"),
             numpy_helper.from_array(rng.normal(0, 0.1, classes).astype(np.float32), "conv.bias"),
             numpy_helper.from_array(np.array([2], np.int64), "row_axis")]
    nodes = [helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["columns"], kernel_shape=[HEIGHT, STEP],
                              strides=[1, STEP]),
             helper.make_node("Squeeze", ["columns", "row_axis"], ["scores_nkt" if steps_first else "scores"])]
    if steps_first:
        nodes.append(helper.make_node("Transpose", ["scores_nkt"], ["scores"], perm=[0, 2, 1]))
    shape = ["N", "T", classes] if steps_first else ["N", classes, "T"]
    graph = helper.make_graph(nodes, "tiny_ocr", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                              ["N", 1, HEIGHT, "W"])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _load(tmp_path, network=None, **params) -> dl.DLModel:
    path = tmp_path / f"net_{len(list(tmp_path.iterdir()))}.onnx"
    onnx.save(network or tiny_network(), path)
    model = dl.read_dl_model(path, type=TYPE)
    settings = {"image_dimensions": [WIDTH, HEIGHT, 1], "alphabet": ALPHABET, **params}
    for name, value in settings.items():
        dl.set_dl_model_param(model, name, value)
    return model


def _samples(words: list[str], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.normal(0, 40, (HEIGHT, WIDTH, 1)).astype(np.float32), "word": w} for w in words]


WORDS = ["ABBA", "", "CCC", "B", "AC", "CAAB"]  # repeats, an empty word; "CCC" needs 5 of the 6 steps


def test_a_training_step_matches_torch(tmp_path):
    """CTC (the mean over the words of -log p, torch's ctc_loss(reduction='sum') / N) + the weight prior, and
    one plain SGD step: the weight change is lr times torch's gradient."""
    torch = pytest.importorskip("torch")
    model = _load(tmp_path, batch_size=6, solver_type="sgd", momentum=0.0, learning_rate=0.1, weight_prior=0.02)
    samples = _samples(WORDS, seed=1)
    before = weights(model)
    w = torch.tensor(before["conv.weight"].astype(np.float64), requires_grad=True)
    b = torch.tensor(before["conv.bias"].astype(np.float64), requires_grad=True)
    x = torch.tensor(np.stack([s["image"].transpose(2, 0, 1) for s in samples]).astype(np.float64))
    scores = torch.nn.functional.conv2d(x, w, b, stride=(1, STEP))[:, :, 0, :]  # (N, K, T)
    log_probs = torch.log_softmax(scores, dim=1).permute(2, 0, 1)
    targets = torch.tensor([ALPHABET.index(c) + 1 for word in WORDS for c in word], dtype=torch.long)
    ctc = torch.nn.functional.ctc_loss(log_probs, targets, torch.full((6,), WIDTH // STEP),
                                       torch.tensor([len(word) for word in WORDS]), reduction="sum") / 6
    prior = 0.01 * (w * w).sum()
    (ctc + prior).backward()
    result = dl.train_dl_model_batch(model, samples)
    assert set(result) == {"total_loss", "loss_ctc", "loss_weight_prior"}
    assert result["loss_ctc"] == pytest.approx(float(ctc), rel=RTOL)
    assert result["loss_weight_prior"] == pytest.approx(float(prior), rel=RTOL)
    assert result["total_loss"] == pytest.approx(float(ctc + prior), rel=RTOL)
    after = weights(model)
    np.testing.assert_allclose((before["conv.weight"] - after["conv.weight"]) / 0.1, w.grad.numpy(), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose((before["conv.bias"] - after["conv.bias"]) / 0.1, b.grad.numpy(), rtol=RTOL, atol=1e-6)


def test_a_foreign_network_with_scores_n_t_k_trains_the_same(tmp_path):
    """The step axis is the one that grows with the width: (N, T, K) scores give the same loss and update."""
    plain = _load(tmp_path, batch_size=6, learning_rate=0.05)
    steps_first = _load(tmp_path, tiny_network(steps_first=True), batch_size=6, learning_rate=0.05)
    assert dl.get_dl_model_param(steps_first, "num_time_steps") == dl.get_dl_model_param(plain, "num_time_steps") == 6
    assert dl.get_dl_model_param(steps_first, "num_classes") == 4
    samples = _samples(WORDS, seed=2)
    assert dl.train_dl_model_batch(steps_first, samples) == pytest.approx(dl.train_dl_model_batch(plain, samples),
                                                                         rel=1e-6)
    for name, value in weights(plain).items():
        np.testing.assert_allclose(weights(steps_first)[name], value, rtol=1e-6, atol=1e-7)
    assert [r["word"] for r in dl.apply_dl_model(steps_first, samples)] == \
        [r["word"] for r in dl.apply_dl_model(plain, samples)]


def test_the_bundled_network_and_its_parameters():
    model = dl.read_dl_model("ocr_recognition_compact")
    assert dl.get_dl_model_param(model, "type") == TYPE
    assert dl.get_dl_model_param(model, "image_dimensions") == [128, 32, 1]
    assert "".join(dl.get_dl_model_param(model, "alphabet")) == synthetic.WORD_ALPHABET
    assert dl.get_dl_model_param(model, "num_classes") == 37
    assert dl.get_dl_model_param(model, "class_names")[:2] == ["<blank>", "0"]
    assert dl.get_dl_model_param(model, "num_time_steps") == 16  # one step per 8 pixels
    dl.set_dl_model_param(model, "image_width", 200)
    assert dl.get_dl_model_param(model, "num_time_steps") == 25
    with pytest.raises(dl.DLParamError, match="'num_time_steps' is read-only"):
        dl.set_dl_model_param(model, "num_time_steps", 40)


def test_a_new_alphabet_keeps_each_known_character_s_weights(tmp_path):
    model = _load(tmp_path, batch_size=2)
    dl.set_dl_model_param(model, "alphabet", list("0123456789"))
    assert dl.get_dl_model_param(model, "num_classes") == 11
    assert dl.get_dl_model_param(model, "class_ids") == list(range(11))
    assert weights(model)["conv.weight"].shape[0] == 11
    losses = dl.train_dl_model_batch(model, [{"image": np.zeros((HEIGHT, WIDTH), np.float32), "word": "42"},
                                             {"image": np.ones((HEIGHT, WIDTH), np.float32), "word": "007"}])
    assert np.isfinite(losses["total_loss"])
    trained = {k: weights(model)[k].copy() for k in ("conv.weight", "conv.bias")}
    dl.set_dl_model_param(model, "alphabet", list("9876543210"))  # reordered: each character keeps its row
    order = [0, *range(10, 0, -1)]
    for name, value in trained.items():
        np.testing.assert_array_equal(weights(model)[name], value[order])
    dl.set_dl_model_param(model, "alphabet", list("01234abcdeX"))  # 0-4 kept, the rest fresh, one more class
    now = weights(model)["conv.weight"]
    assert now.shape[0] == 12
    np.testing.assert_array_equal(now[:6], trained["conv.weight"][:6])
    assert not np.array_equal(now[6:11], trained["conv.weight"][6:11])
    assert np.array_equal(weights(model)["conv.bias"][6:], np.zeros(6, np.float32))


@pytest.mark.parametrize("value, message", [
    ("AB", r"parameter 'alphabet': expected a non-empty list of single characters, got \['AB'\]"),
    (["A", "A", "B"], "expected distinct characters"),
    ([], "expected a non-empty list of single characters"),
    ([1, 2], "expected a string"),
])
def test_bad_alphabets_are_refused(tmp_path, value, message):
    model = _load(tmp_path)
    before = snapshot(model)
    with pytest.raises(dl.DLParamError, match=message):
        dl.set_dl_model_param(model, "alphabet", value)
    assert_unchanged(before, model)


def test_class_ids_must_agree_with_the_alphabet(tmp_path):
    model = _load(tmp_path)
    with pytest.raises(dl.DLParamError, match=r"parameter 'alphabet': expected 4 characters .* got 3"):
        dl.set_dl_model_param(model, "class_ids", [0, 1, 2, 3, 4])


@pytest.mark.parametrize("word, message", [
    ("ABD", r"sample 1, key 'word': character 'D' of 'ABD' is not in the model's alphabet 'ABC'"),
    ("ab", r"sample 1, key 'word': character 'a' of 'ab' is not in the model's alphabet"),
    ("ABCABCA", r"sample 1, key 'word': 'ABCABCA' needs 7 time steps \(7 characters \+ 0 blanks between repeated "
                r"ones\), the model has 6 at image_width 24"),
    ("AAAA", r"'AAAA' needs 7 time steps \(4 characters \+ 3 blanks between repeated ones\), the model has 6"),
    (7, r"sample 1, key 'word': expected a string, got int 7"),
    (None, r"sample 1, key 'word': expected a string, got NoneType None"),
])
def test_bad_words_are_refused_and_change_nothing(tmp_path, word, message):
    model = _load(tmp_path, batch_size=2)
    dl.train_dl_model_batch(model, _samples(["AB", "C"]))
    before = snapshot(model)
    samples = _samples(["AB", "C"])
    samples[1]["word"] = word
    with pytest.raises(dl.DLSampleError, match=message):
        dl.train_dl_model_batch(model, samples)
    assert_unchanged(before, model)


def test_a_missing_word_and_a_missing_alphabet_are_named(tmp_path):
    model = _load(tmp_path, batch_size=1)
    with pytest.raises(dl.DLSampleError, match=r"sample 0: missing key 'word'"):
        dl.train_dl_model_batch(model, [{"image": np.zeros((HEIGHT, WIDTH), np.float32)}])
    path = tmp_path / "foreign.onnx"
    onnx.save(tiny_network(), path)
    foreign = dl.read_dl_model(path, type=TYPE)
    dl.set_dl_model_param(foreign, "image_dimensions", [WIDTH, HEIGHT, 1])
    dl.set_dl_model_param(foreign, "batch_size", 1)
    with pytest.raises(dl.DLParamError, match=r"parameter 'alphabet' is not set: set 3 characters"):
        dl.train_dl_model_batch(foreign, _samples(["A"]))


def test_results_decode_the_best_path_with_confidence_and_candidates():
    # steps: A A blank A B blank -> "AAB"; candidates at the steps 0, 3, 4
    probabilities = np.array([[0.1, 0.2, 0.6, 0.1, 0.1, 0.9],   # blank
                              [0.6, 0.5, 0.2, 0.7, 0.2, 0.05],  # A
                              [0.2, 0.2, 0.1, 0.15, 0.6, 0.03],  # B
                              [0.1, 0.1, 0.1, 0.05, 0.1, 0.02]], np.float32)  # C
    params = {"alphabet": ALPHABET}
    (found,) = ocr.results([probabilities[None]], params, list(ocr.RESULT_KEYS))
    assert found["word"] == "AAB"
    assert found["word_confidence"] == pytest.approx(0.6 * 0.5 * 0.6 * 0.7 * 0.6 * 0.9, rel=1e-6)
    assert [c["candidate"] for c in found["char_candidates"]] == [["A", "B", "C"], ["A", "B", "C"], ["B", "A", "C"]]
    np.testing.assert_allclose(found["char_candidates"][2]["confidence"], [0.6, 0.2, 0.1], rtol=1e-6)
    assert ocr.results([probabilities[None]], params, ["word"]) == [{"word": "AAB"}]
    with pytest.raises(dl.DLParamError, match=r"unknown outputs \['words'\]"):
        ocr.results([probabilities[None]], params, ["words"])


def test_alphabet_mapping_reads_characters_as_others(tmp_path):
    model = _load(tmp_path, batch_size=6, learning_rate=0.5)
    samples = _samples(WORDS, seed=4)
    for _ in range(3):
        dl.train_dl_model_batch(model, samples)
    plain = [r["word"] for r in dl.apply_dl_model(model, samples, ["word"])]
    assert dl.get_dl_model_param(model, "alphabet_internal") == ALPHABET
    dl.set_dl_model_param(model, "alphabet_mapping", [0, 0, 2])  # 'B' read as 'A'
    assert [r["word"] for r in dl.apply_dl_model(model, samples, ["word"])] == [w.replace("B", "A") for w in plain]
    with pytest.raises(dl.DLParamError, match=r"'alphabet_mapping': expected one index per alphabet character"):
        dl.set_dl_model_param(model, "alphabet_mapping", [0, 1, 3])
    with pytest.raises(dl.DLParamError, match="'alphabet_internal' is read-only"):
        dl.set_dl_model_param(model, "alphabet_internal", ["X", "Y", "Z"])
    dl.set_dl_model_param(model, "alphabet", ["X", "Y", "Z"])  # a new alphabet: the mapping starts over
    assert dl.get_dl_model_param(model, "alphabet_mapping") is None
    assert dl.get_dl_model_param(model, "alphabet_internal") == ["X", "Y", "Z"]


def decode(probabilities: np.ndarray, alphabet: list[str]) -> list[str]:
    """The README's decoding of the exported per-step probabilities (N, K, T), written again here."""
    words = []
    for best in probabilities.argmax(axis=1):
        kept = [k for t, k in enumerate(best) if k != 0 and (t == 0 or k != best[t - 1])]
        words.append("".join(alphabet[k - 1] for k in kept))
    return words


def test_the_written_file_ends_in_per_step_probabilities_and_reads_back(tmp_path):
    model = _load(tmp_path, batch_size=6, learning_rate=0.5)
    samples = _samples(WORDS, seed=3)
    for _ in range(3):
        dl.train_dl_model_batch(model, samples)
    path = tmp_path / "ocr.onnx"
    dl.write_dl_model(model, path)
    written = onnx.load(path)
    assert [o.name for o in written.graph.output] == ["probabilities"]
    images = np.stack([s["image"].transpose(2, 0, 1) for s in samples])
    (probabilities,) = runtime.forward(written, {"image": images})
    assert probabilities.shape == (6, 4, 6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    results = dl.apply_dl_model(model, samples)
    assert decode(probabilities, ALPHABET) == [r["word"] for r in results]
    again = dl.read_dl_model(path)
    assert dl.get_dl_model_param(again, "alphabet") == ALPHABET
    assert dl.apply_dl_model(again, samples) == results


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_resume_is_bit_exact(tmp_path, solver):
    settings = {"batch_size": 4, "solver_type": solver, "learning_rate": 0.01, "weight_prior": 0.001}
    network = dl.read_dl_model("ocr_recognition_compact")
    dl.set_dl_model_param(network, "image_dimensions", [48, 16, 1])
    source = tmp_path / "start.onnx"
    dl.write_dl_model(network, source)
    batches = [synthetic.word_samples(4, 48, 16, seed, 1, 3) for seed in range(4)]
    straight, first = dl.read_dl_model(source), dl.read_dl_model(source)
    for model in (straight, first):
        for name, value in settings.items():
            dl.set_dl_model_param(model, name, value)
    straight_losses = [dl.train_dl_model_batch(straight, b) for b in batches]
    for b in batches[:2]:
        dl.train_dl_model_batch(first, b)
    dl.write_dl_model(first, tmp_path / "halfway.onnx")
    resumed = dl.read_dl_model(tmp_path / "halfway.onnx")
    assert [dl.train_dl_model_batch(resumed, b) for b in batches[2:]] == straight_losses[2:]
    for name, value in weights(straight).items():
        assert np.array_equal(weights(resumed)[name], value), name


@pytest.mark.parametrize("a, b, distance", [("", "", 0), ("ABC", "", 3), ("", "AB", 2), ("KITTEN", "SITTING", 3),
                                            ("ABCD", "ACBD", 2), ("AAB", "AB", 1)])
def test_edit_distance(a, b, distance):
    assert edit_distance(a, b) == distance == edit_distance(b, a)


def test_word_accuracy_and_character_error_rate():
    results = [{"word": "AB1"}, {"word": "XYZ"}, {"word": ""}, {"word": "Q"}]
    samples = [{"word": "AB1"}, {"word": "XY"}, {"word": "AB"}, {"word": "Q"}]
    found = ocr_recognition_measures(results, samples)
    assert found["word_accuracy"] == 0.5
    assert found["character_error_rate"] == pytest.approx((0 + 1 + 2 + 0) / 8)
    assert found["num_words"] == 4
    assert np.isnan(ocr_recognition_measures([{"word": "A"}], [{"word": ""}])["character_error_rate"])
    with pytest.raises(dl.DLSampleError, match=r"sample 1: missing key 'word'"):
        ocr_recognition_measures(results[:2], [{"word": "AB1"}, {"image_id": 4}])
    with pytest.raises(dl.DLSampleError, match=r"sample 0, key 'word': expected a string, got 123 \(int\)"):
        ocr_recognition_measures(results[:1], [{"word": 123}])


def test_csv_and_dldataset_formats(tmp_path):
    source = D.write_synthetic_dataset(TYPE, tmp_path / "data", count=6, size=64, seed=0)
    assert source.name == "labels.csv" and source.read_text().startswith("file_name,word\n")
    dataset = D.read_dl_dataset(source)
    assert dataset["type"] == TYPE and D.dataset_type(dataset) == TYPE
    words = [s["word"] for s in synthetic.word_samples(6, 64, 16, 0)]
    assert [s["word"] for s in dataset["samples"]] == words
    assert dataset["alphabet"] == sorted(set("".join(words)))
    assert dataset["class_names"] == ["<blank>", *dataset["alphabet"]]
    raw = D.gen_dl_samples(dataset, [0, 1])
    assert raw[0]["word"] == words[0] and raw[0]["image"].shape[:2] == (16, 64)
    D.write_dl_dataset(dataset, tmp_path / "data" / "dataset.json")
    again = D.read_dl_dataset(tmp_path / "data" / "dataset.json")
    assert again["type"] == TYPE and [s["word"] for s in again["samples"]] == words
    (tmp_path / "bad.csv").write_text("file_name,word\nimages/00000.png,AB,C\n")
    with pytest.raises(D.DLDatasetError, match=r"row 2: expected 'file_name,word'"):
        D.read_dl_dataset(tmp_path / "bad.csv")


def test_the_command_line_trains_on_a_folder_of_word_images(tmp_path, capsys):
    """``--dataset``: the folder of word images holding labels.csv (``file_name,word``)."""
    source = D.write_synthetic_dataset(TYPE, tmp_path / "data", count=24, size=96, seed=1)
    code = cli(["train", "--type", TYPE, "--dataset", str(source.parent), "--epochs", "1", "--batch-size", "8",
                "--image-size", "96", "--output", str(tmp_path / "runs"), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "ocr_recognition" in out and "word_accuracy" in out
    best = next((tmp_path / "runs").glob("*/best_model.onnx"))
    assert dl.get_dl_model_param(dl.read_dl_model(best), "image_dimensions") == [96, 24, 1]


@pytest.mark.slow
def test_generated_words_reach_word_accuracy_0_9():
    """1300 Adam steps of 16 generated words (3 to 8 digits and capitals, random font size, spacing, slant
    and noise) on the bundled network at 128 x 32; the rate falls to a fifth after 70 % of the steps.
    Held-out words: 0.92, 0.92 and 0.94 for seeds 0, 1, 2 (this test: seed 0; tools/ocr-results.md)."""
    threads = dl.get_system("thread_num")
    dl.set_system("thread_num", 1)  # the time CI budgets for: one core (a step is ~35 ms)
    try:
        model = dl.read_dl_model("ocr_recognition_compact")
        dl.set_dl_model_param(model, "learning_rate", 0.003)
        pool = synthetic.word_samples(4000, 128, 32, seed=0)
        held_out = synthetic.word_samples(200, 128, 32, seed=1000)
        steps = 1300
        for i in range(steps):
            if i == int(0.7 * steps):
                dl.set_dl_model_param(model, "learning_rate", 0.003 / 5)
            dl.train_dl_model_batch(model, [pool[(16 * i + j) * 7919 % len(pool)] for j in range(16)])
        measures = evaluate_dl_model(model, samples=held_out)
    finally:
        dl.set_system("thread_num", threads)
    assert measures["word_accuracy"] >= 0.9, measures


def test_reports_draw_words_and_rank_the_worst_first(tmp_path):
    from onnx_dl import drawing, reports

    params = {"type": TYPE, "class_ids": [0, 1, 2, 3], "class_names": ["<blank>", *ALPHABET]}
    image = np.full((HEIGHT, WIDTH), 200.0, np.float32)
    picture = drawing.draw(image, {"word": "AB", "word_confidence": 0.5, "char_candidates": []}, params)
    truth = drawing.draw(image, {"word": "ABC"}, params)
    assert picture.size == truth.size and picture.tobytes() != truth.tobytes()
    results = [{"word": "AB", "word_confidence": 0.9}, {"word": "XY", "word_confidence": 0.2},
               {"word": "AB", "word_confidence": 0.4}]
    samples = [{"word": "AB"}, {"word": "AB"}, {"word": "AB"}]
    assert list(np.argsort(-reports.error_scores(results, samples, params), kind="stable")) == [1, 2, 0]
