"""The model-type contract (onnx_dl.model_type): every registered type provides it and works end to end
through the operators, evaluation and the dataset helpers; a new type is one module registered."""

from __future__ import annotations

import types

import numpy as np
import onnx
import pytest

import onnx_dl as dl
from onnx_dl import dataset as D
from onnx_dl import model_type, params
from onnx_dl.evaluation import evaluate_dl_model, main_measure
from onnx_dl.tasks import classification

SIZES = {"classification": 32, "segmentation": 32, "detection": 64, "multi_label_classification": 48,
         "ocr_recognition": 128}  # ocr_recognition: the width; word images are a quarter as high


def _model(kind: model_type.ModelType) -> dl.DLModel:
    size = SIZES[kind.NAME]
    if kind.NAME == "detection":
        return dl.create_dl_model_detection(kind.CLI_NETWORK, 3, {"image_width": size, "image_height": size,
                                                                  "min_level": 2, "max_level": 3, "capacity": "low"})
    if kind.NAME == "multi_label_classification":
        return dl.create_dl_model_multi_label_classification(kind.CLI_NETWORK, [0, 1, 2, 3],
                                                             {"image_dimensions": [size, size, 3]})
    model = dl.read_dl_model(kind.CLI_NETWORK, type=kind.NAME)
    if kind.NAME == "ocr_recognition":
        dl.set_dl_model_param(model, "image_dimensions", [size, size // 4, 1])
        return model
    dl.set_dl_model_param(model, "image_dimensions", [size, size, 3])
    return model


def test_the_built_in_types_are_registered_in_order() -> None:
    assert model_type.names() == ["classification", "segmentation", "detection", "multi_label_classification",
                                  "ocr_recognition"]


@pytest.mark.parametrize("kind", model_type.registered(), ids=model_type.names())
def test_each_type_provides_the_contract(kind: model_type.ModelType) -> None:
    assert isinstance(kind, model_type.ModelType)
    assert model_type.get(kind.NAME) is kind
    own = {spec.name for spec in kind.PARAMS}
    assert not own & set(params.SPECS), "a type's parameter shadows a common one"
    for spec in kind.PARAMS:
        assert spec.doc, spec.name
        if spec.default is not None and spec.settable:
            assert spec.check(spec.default) is None, spec.name
    assert set(kind.FIXED_AFTER_CREATION) <= set(params.type_specs(kind.NAME))
    assert set(kind.TRAINING_STATE) <= own
    assert set(kind.PARAM_CHECKS) <= set(params.type_specs(kind.NAME))
    assert kind.CLI_NETWORK in dl.bundled_models()
    defaults = params.defaults(kind.NAME)
    assert own - set(params.DERIVED) <= set(defaults)


@pytest.mark.parametrize("kind", model_type.registered(), ids=model_type.names())
def test_each_type_trains_applies_and_evaluates_its_synthetic_samples(kind: model_type.ModelType) -> None:
    """One step on the type's generated samples, its results keys, and its main measure in its measures."""
    model = _model(kind)
    samples = kind.synthetic_samples(4, SIZES[kind.NAME], 1)
    assert D.dataset_type({"samples": samples}) == kind.NAME
    dl.set_dl_model_param(model, "batch_size", 4)
    if kind.NAME == "classification":
        dl.set_dl_model_param(model, "class_ids", list(range(4)))
    if kind.NAME == "segmentation":
        dl.set_dl_model_param(model, "class_ids", list(range(4)))
    losses = dl.train_dl_model_batch(model, samples)
    assert all(np.isfinite(v) for v in losses.values()), losses
    results = dl.apply_dl_model(model, samples)
    assert len(results) == 4 and all(set(r) == set(kind.RESULT_KEYS) for r in results)
    measures = evaluate_dl_model(model, samples=samples)
    name, better = main_measure(kind.NAME)
    assert name == kind.MAIN_MEASURE and np.isfinite(measures[name])
    assert better(0.0, 1.0) is kind.LOWER_IS_BETTER


def test_an_incomplete_type_is_refused_naming_what_it_misses() -> None:
    partial = types.SimpleNamespace(NAME="partial", RESULT_KEYS=())
    with pytest.raises(TypeError, match="partial.*misses .*build_training_graph"):
        model_type.register(partial)  # type: ignore[arg-type]
    assert "partial" not in model_type.names()


def _plain_classifier(folder) -> str:
    """The bundled classifier as a plain ONNX file (no onnx_dl metadata: any type may be asked for)."""
    network = onnx.load(dl.serialization.resolve("classifier_compact"))
    del network.metadata_props[:]
    path = folder / "plain.onnx"
    onnx.save(network, path)
    return str(path)


def test_an_unknown_type_names_the_registered_ones(tmp_path) -> None:
    with pytest.raises(dl.DLParamError, match=r"model type 'ocr' is not supported; supported: \['classification'"):
        dl.read_dl_model(_plain_classifier(tmp_path), type="ocr")


@pytest.fixture
def toy_type(monkeypatch: pytest.MonkeyPatch) -> model_type.ModelType:
    """A new model type written as one module: a classifier with its own parameter and main measure."""
    module = types.ModuleType("toy_type")
    module.__dict__.update({name: getattr(classification, name) for name in dir(classification)
                            if not name.startswith("__")})
    module.NAME = "toy"
    module.PARAMS = (params.ParamSpec("toy_margin", "float", 0.5, "a parameter only toys have", params.at_least(0.0)),)
    module.MAIN_MEASURE, module.LOWER_IS_BETTER = "top1_error", True
    monkeypatch.setattr(model_type, "_TYPES", dict(model_type._TYPES))  # registered for this test only
    return model_type.register(module)  # type: ignore[arg-type]


def test_a_new_type_is_one_registered_module(toy_type: model_type.ModelType, tmp_path) -> None:
    """Parameters, training, applying, evaluating, writing and reading back: nothing else needs to know it."""
    model = dl.read_dl_model(_plain_classifier(tmp_path), type="toy")
    dl.set_dl_model_param(model, "image_dimensions", [32, 32, 3])
    dl.set_dl_model_param(model, "class_ids", list(range(4)))
    assert dl.get_dl_model_param(model, "toy_margin") == 0.5
    dl.set_dl_model_param(model, "toy_margin", 0.25)
    with pytest.raises(dl.DLParamError, match="toy_margin"):
        dl.set_dl_model_param(model, "toy_margin", -1.0)
    with pytest.raises(dl.DLParamError, match="does not apply to a classification model"):
        dl.get_dl_model_param(dl.read_dl_model("classifier_compact"), "toy_margin")
    samples = classification.synthetic_samples(4, 32, 0)
    dl.set_dl_model_param(model, "batch_size", 4)
    dl.train_dl_model_batch(model, samples)
    assert evaluate_dl_model(model, samples=samples)["top1_error"] <= 1.0
    dl.write_dl_model(model, tmp_path / "toy.onnx")
    again = dl.read_dl_model(tmp_path / "toy.onnx")
    assert dl.get_dl_model_param(again, "type") == "toy" and dl.get_dl_model_param(again, "toy_margin") == 0.25
