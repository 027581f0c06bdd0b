"""HALCON names of issue 17: the read-only model parameter 'summary' and the system setting 'seed_rand'."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import onnx_dl as dl
from onnx_dl import dataset as D
from onnx_dl import graph as g
from onnx_dl import preprocess as P
from onnx_dl import system, training


# -- summary ------------------------------------------------------------------------------------

def _rows(model: dl.DLModel) -> tuple[list[list[str]], str]:
    """(name, op, shape, #params, frozen) of each node line, and the total line."""
    lines = dl.get_dl_model_param(model, "summary")
    assert isinstance(lines, list) and all(isinstance(line, str) for line in lines)
    rows = []
    for line in lines[:-1]:
        fields = line.split()
        frozen = "0"
        if fields[-2:-1] == ["(frozen"]:
            frozen = fields[-1].rstrip(")")
            fields = fields[:-2]
        assert len(fields) == 4, line
        rows.append([*fields, frozen])
    return rows, lines[-1]


def _check_nodes(model: dl.DLModel, rows: list[list[str]]) -> None:
    nodes = model.inference_graph().graph.node
    assert [r[0] for r in rows] == [n.name or n.output[0] for n in nodes]  # one line per node, in graph order
    assert [r[1] for r in rows] == [n.op_type for n in nodes]


def test_summary_of_the_bundled_classifier() -> None:
    model = dl.read_dl_model("classifier_compact")
    rows, total = _rows(model)
    _check_nodes(model, rows)
    trainable = dl.get_dl_model_param(model, "num_trainable_params")
    assert sum(int(r[3]) for r in rows) == trainable and all(r[4] == "0" for r in rows)
    assert total == f"total: {len(rows)} nodes, {trainable} params ({trainable} trainable, 0 frozen)"
    width, height, channels = dl.get_dl_model_param(model, "image_dimensions")
    classes = dl.get_dl_model_param(model, "num_classes")
    assert rows[0][2] == f"{channels}x{height}x{width}"  # the first node keeps the image size, batch axis left out
    assert rows[-1][1] == "Softmax" and rows[-1][2] == str(classes)  # the output apply_dl_model reads, per image
    conv = next(r for r in rows if r[1] == "Conv")
    name = next(n for n in model.network().graph.node if n.name == conv[0]).input[1]
    assert int(conv[3]) >= int(np.prod(g.initializers(model.network())[name].dims))
    # the summary follows the image size
    dl.set_dl_model_param(model, "image_dimensions", [64, 48, channels])
    assert _rows(model)[0][0][2] == f"{channels}x48x64"


def test_summary_of_a_detector_counts_frozen_weights() -> None:
    model = dl.create_dl_model_detection("classifier_compact", 3, {"image_width": 64, "image_height": 64})
    rows, total = _rows(model)
    _check_nodes(model, rows)
    trainable = dl.get_dl_model_param(model, "num_trainable_params")
    assert sum(int(r[3]) for r in rows) == trainable
    # the last node writes one of the outputs apply_dl_model reads: its shape per image is that output's
    network = model.inference_graph()
    last = network.graph.node[-1]
    assert last.output[0] in [o.name for o in network.graph.output]
    expected = g.tensor_shapes(g.with_input_shape(network, [1, 3, 64, 64]))[last.output[0]][1:]
    assert rows[-1][2] == "x".join(map(str, expected))

    dl.set_dl_model_param(model, "freeze_backbone", True)
    rows, total = _rows(model)
    now_trainable = dl.get_dl_model_param(model, "num_trainable_params")
    frozen = sum(int(r[4]) for r in rows)
    assert 0 < now_trainable < trainable and frozen == trainable - now_trainable
    assert sum(int(r[3]) for r in rows) == now_trainable + frozen
    assert total.endswith(f"{trainable} params ({now_trainable} trainable, {frozen} frozen)")


def test_summary_is_read_only() -> None:
    model = dl.read_dl_model("classifier_compact")
    with pytest.raises(dl.DLParamError, match="read-only"):
        dl.set_dl_model_param(model, "summary", ["x"])


# -- seed_rand ----------------------------------------------------------------------------------

@pytest.fixture
def restore_seed() -> Iterator[None]:
    before = dl.get_system("seed_rand")
    try:
        yield
    finally:
        dl.set_system("seed_rand", before)


def test_seed_rand_default_and_validation(restore_seed: None) -> None:
    assert dl.get_system("seed_rand") == system.DEFAULT_SEED == 42
    generation = system.generation()
    dl.set_system("seed_rand", 7)
    assert dl.get_system("seed_rand") == 7 and system.generation() == generation  # sessions stay as they are
    dl.set_system("seed_rand", np.int64(0))
    assert dl.get_system("seed_rand") == 0 and type(dl.get_system("seed_rand")) is int
    for bad in (-1, 1.5, "3", True, None):
        with pytest.raises(dl.DLParamError, match="seed_rand"):
            dl.set_system("seed_rand", bad)
    assert dl.get_system("seed_rand") == 0


def _labelled(count: int) -> dict:
    samples = [{"image_file_name": f"{i}.png", "image_id": i, "image_label_id": i % 2} for i in range(count)]
    return {"class_ids": [0, 1], "class_names": ["a", "b"], "image_dir": "/", "samples": samples}


def _splits(seed: int | None = None) -> list[str]:
    dataset = _labelled(60)
    D.split_dl_dataset(dataset, 50, 25, seed=seed) if seed is not None else D.split_dl_dataset(dataset, 50, 25)
    return [s["split"] for s in dataset["samples"]]


def test_split_dl_dataset_defaults_to_seed_rand(restore_seed: None) -> None:
    assert _splits() == _splits() == _splits(42)  # the former default seed=42: the same split as before
    dl.set_system("seed_rand", 5)
    assert _splits() == _splits(5) != _splits(42)
    assert _splits(42) == _splits(seed=42)  # an explicit seed wins


def _images(count: int = 12) -> list[dict]:
    rng = np.random.default_rng(3)
    return [{"image": rng.uniform(-100, 100, (8, 8, 3)).astype(np.float32), "image_label_id": 0}
            for _ in range(count)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))


def test_augment_dl_samples_defaults_to_seed_rand(restore_seed: None) -> None:
    samples, gen_param = _images(), {"augmentation_percentage": 100, "brightness_variation": 50}
    first = P.augment_dl_samples(samples, gen_param)
    assert _same(first, P.augment_dl_samples(samples, gen_param))  # reproducible
    assert _same(first, P.augment_dl_samples(samples, gen_param, 42))
    dl.set_system("seed_rand", 9)
    other = P.augment_dl_samples(samples, gen_param)
    assert _same(other, P.augment_dl_samples(samples, gen_param, 9)) and not _same(other, first)
    assert _same(P.augment_dl_samples(samples, gen_param, 42), first)  # an explicit seed wins


def test_augment_dl_samples_deprecated_seed_argument_is_unchanged(restore_seed: None) -> None:
    samples = _images()
    dl.set_system("seed_rand", 9)
    with pytest.warns(DeprecationWarning):
        old = P.augment_dl_samples(samples, 3, augmentation_percentage=100, crop_percentage=100)
    with pytest.warns(DeprecationWarning):
        explicit_zero = P.augment_dl_samples(samples, 3, 0, augmentation_percentage=100, crop_percentage=100)
    with pytest.warns(DeprecationWarning):
        keywords = P.augment_dl_samples(samples, seed=3, augmentation_percentage=100, crop_percentage=100)
    assert _same(old, explicit_zero) and _same(old, keywords)  # the second argument is the seed, not seed_rand
    with pytest.warns(DeprecationWarning):
        unseeded = P.augment_dl_samples(samples, augmentation_percentage=100, crop_percentage=100)
    with pytest.warns(DeprecationWarning):
        nine = P.augment_dl_samples(samples, 9, augmentation_percentage=100, crop_percentage=100)
    assert _same(unseeded, nine) and not _same(unseeded, old)  # no seed at all: seed_rand
    with pytest.raises(dl.DLSampleError, match="the seed came twice"):
        P.augment_dl_samples(samples, 3, 4, augmentation_percentage=100)


def test_train_dl_model_defaults_to_seed_rand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              restore_seed: None) -> None:
    dataset = D.read_dl_dataset(D.write_synthetic_dataset("classification", tmp_path / "data", 4, 32, seed=2))
    D.split_dl_dataset(dataset, 100, 0)
    model = dl.read_dl_model("classifier_compact")
    dl.set_dl_model_param(model, "batch_size", 1)
    seeds: list = []
    real = np.random.default_rng

    class Stop(Exception):
        pass

    def recording(seed: object = None) -> np.random.Generator:
        seeds.append(seed)
        return real(seed)

    def stop(*args: object) -> None:  # built right after the shuffling generator: no training runs
        raise Stop

    monkeypatch.setattr(np.random, "default_rng", recording)
    monkeypatch.setattr(training, "TrainResult", stop)
    for seed_rand, explicit, expected in [(None, None, 42), (11, None, 11), (11, 0, 0)]:
        if seed_rand is not None:
            dl.set_system("seed_rand", seed_rand)
        seeds.clear()
        with pytest.raises(Stop):
            training.train_dl_model(model, dataset, epochs=1, progress=False,
                                    **({} if explicit is None else {"seed": explicit}))
        assert seeds[-1] == expected
