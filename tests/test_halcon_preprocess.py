"""HALCON's preprocessing procedures: the DLPreprocessParam dict, the byte-image rule, domains, background ids,
key restriction, and preprocess_dl_dataset -> read_dl_samples equal to preprocessing in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import onnx_dl as dl
from onnx_dl import halcon_preprocess as H
from onnx_dl import preprocess as P
from onnx_dl.dataset import read_dl_dataset, write_synthetic_dataset
from onnx_dl.errors import DLDatasetError, DLParamError, DLSampleError


def _param(width: int, height: int, channels: int = 3, model_type: str = "classification", **keys: Any) -> dict:
    return H.create_dl_preprocess_param(model_type, width, height, channels, -127, 128, **keys)


def _assert_samples_equal(found: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(found) == len(expected)
    for a, b in zip(found, expected):
        assert a.keys() == b.keys()
        for key in a:
            assert type(a[key]) is type(b[key]), key
            if isinstance(a[key], np.ndarray):
                assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_create_dl_preprocess_param_holds_halcons_keys() -> None:
    param = _param(4, 2)
    assert param == {"model_type": "classification", "image_width": 4, "image_height": 2, "image_num_channels": 3,
                     "image_range_min": -127.0, "image_range_max": 128.0, "normalization_type": "none",
                     "domain_handling": "full_domain", "ignore_class_ids": [], "set_background_id": [],
                     "class_ids_background": []}
    model = dl.read_dl_model("segmentation_compact")
    dl.set_dl_model_param(model, "ignore_class_ids", [255])
    from_model = H.create_dl_preprocess_param_from_model(model, "all_channels", "crop_domain", 0, [3])
    width, height, channels = dl.get_dl_model_param(model, "image_dimensions")
    assert from_model == {**H.create_dl_preprocess_param("segmentation", width, height, channels,
                                                         model.params["image_range_min"],
                                                         model.params["image_range_max"], "all_channels",
                                                         "crop_domain", [255], 0, [3])}
    assert from_model["set_background_id"] == [0] and from_model["ignore_class_ids"] == [255]


def test_none_rescales_byte_images_only() -> None:
    values = np.array([[0, 1], [127, 255]], np.uint8)
    param = _param(2, 2, channels=1)
    byte, real, short = H.preprocess_dl_samples([{"image": values}, {"image": values.astype(np.float32) / 7},
                                                 {"image": values.astype(np.uint16) * 3}], param)
    np.testing.assert_array_equal(byte["image"], [[-127, -126], [0, 128]])  # v * 255 / 255 - 127
    np.testing.assert_array_equal(real["image"], values.astype(np.float32) / 7)  # not a byte image: kept
    np.testing.assert_array_equal(short["image"], values.astype(np.float32) * 3)
    assert byte["image"].dtype == real["image"].dtype == np.float32
    # the top-level procedure is this one; the model-parameter function refuses the dict rather than ignore its keys
    _assert_samples_equal(dl.preprocess_dl_samples([{"image": values.astype(np.float32) / 7}], param), [real])
    with pytest.raises(DLSampleError, match="got a DLPreprocessParam .* pass it to onnx_dl.preprocess_dl_samples"):
        P.preprocess_dl_samples([{"image": values}], param)


def test_resize_and_the_other_normalizations_by_hand() -> None:
    image = (np.arange(4 * 8, dtype=np.uint8) * 3).reshape(4, 8)
    resized = H.preprocess_dl_samples([{"image": image}], _param(4, 2, channels=1))[0]["image"]
    # rows sampled at 0.5 and 2.5, columns at 0.5, 2.5, 4.5, 6.5 of v = 3 * (8 r + c); then v - 127
    expected = 3 * (8 * np.array([0.5, 2.5])[:, None] + np.array([0.5, 2.5, 4.5, 6.5])[None, :]) - 127
    np.testing.assert_allclose(resized, expected, rtol=0, atol=1e-4)
    two = np.array([[[10, 0], [20, 5]], [[30, 5], [50, 5]]], np.float32)  # (2, 2, 2): channel 1 nearly constant
    stretched = H.preprocess_dl_samples([{"image": two}], _param(2, 2, 2, normalization_type="all_channels"))[0]
    np.testing.assert_allclose(stretched["image"][:, :, 0], [[-127, -63.25], [0.5, 128]], atol=1e-5)  # (v-10)*255/40-127
    np.testing.assert_allclose(stretched["image"][:, :, 1], [[-127, 128], [128, 128]], atol=1e-5)
    first = H.preprocess_dl_samples([{"image": two}], _param(2, 2, 2, normalization_type="first_channel"))[0]
    np.testing.assert_allclose(first["image"][:, :, 1], (two[:, :, 1] - 10) * 255 / 40 - 127, atol=1e-5)
    constant = _param(2, 2, 2, normalization_type="constant_values", gen_param={
        "mean_values_normalization": [10, 1], "deviation_values_normalization": [2, 0.5]})
    done = H.preprocess_dl_samples([{"image": two.astype(np.uint8)}], constant)[0]["image"]
    np.testing.assert_allclose(done, (two - np.array([10, 1])) / np.array([2, 0.5]), atol=1e-6)


def test_crop_domain_cuts_image_labels_and_boxes_to_the_domain() -> None:
    image = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6)
    boxes = {"bbox_row1": np.array([0.5, 3.0], np.float32), "bbox_col1": np.array([1.5, 0.0], np.float32),
             "bbox_row2": np.array([2.5, 3.4], np.float32), "bbox_col2": np.array([3.5, 1.0], np.float32),
             "bbox_label_id": np.array([1, 2])}
    param = _param(3, 2, 1, "detection", domain_handling="crop_domain")
    by_box, by_mask = H.preprocess_dl_samples([
        {"image": image, "domain": [1, 2, 2, 4], **boxes},
        {"image": image, "domain": np.pad(np.ones((2, 3), bool), ((1, 1), (2, 1))), **boxes}], param)
    np.testing.assert_array_equal(by_box["image"], image[1:3, 2:5].astype(np.float32) - 127)
    # clipped to rows 0.5..2.5 and cols 1.5..4.5, moved by (1, 2); the second box is outside: dropped
    got = [by_box[k].tolist() for k in ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2", "bbox_label_id")]
    assert got == [[-0.5], [-0.5], [1.5], [1.5], [1]]
    _assert_samples_equal([by_mask], [by_box])
    assert "domain" not in by_box
    full = H.preprocess_dl_samples([{"image": image, "domain": [1, 2, 2, 4]}], _param(6, 4, 1))[0]
    np.testing.assert_array_equal(full["image"], image.astype(np.float32) - 127)  # full_domain ignores it
    no_domain = H.preprocess_dl_samples([{"image": image}], _param(6, 4, 1, domain_handling="crop_domain"))[0]
    np.testing.assert_array_equal(no_domain["image"], full["image"])


def test_background_ids_are_remapped_before_resizing() -> None:
    labels = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    param = _param(4, 2, 3, "segmentation", set_background_id=0, class_ids_background=[2, 3])
    sample = {"image": np.zeros((2, 4, 3), np.uint8), "segmentation_image": labels}
    done = H.preprocess_dl_samples([sample], param)[0]
    np.testing.assert_array_equal(done["segmentation_image"], [[0, 1, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(sample["segmentation_image"], labels)  # the input is left as it was
    smaller = H.preprocess_dl_samples([sample], _param(2, 1, 3, "segmentation", set_background_id=[9],
                                                       class_ids_background=[1]))[0]
    # nearest neighbour at row 0.5 -> 1 and columns 0.5 -> 1, 2.5 -> 3 of [3, 2, 9, 0] (1 -> 9)
    np.testing.assert_array_equal(smaller["segmentation_image"], [[2, 0]])


@pytest.mark.parametrize("keys, message", [
    ({"normalization_type": "z"}, "key 'normalization_type': expected one of"),
    ({"domain_handling": "keep_domain"}, "'keep_domain' is HALCON's for anomaly detection"),
    ({"set_background_id": 0, "class_ids_background": [1]}, "only for segmentation models"),
    ({"ignore_class_ids": ["a"]}, "key 'ignore_class_ids': expected a list of integer class ids"),
    ({"gen_param": {"mean_values_normalization": [1, 2, 3]}}, "only with normalization_type 'constant_values'"),
    ({"gen_param": {"colour": 1}}, "unknown key 'colour'"),
    ({"gen_param": {"ignore_direction": True}}, "only for detection models"),
])
def test_bad_preprocess_params_are_refused_by_name(keys: dict, message: str) -> None:
    with pytest.raises(DLParamError, match="create_dl_preprocess_param") as error:
        _param(4, 4, **keys)
    assert message in str(error.value)


def test_bad_sizes_ranges_and_background_ids_are_refused() -> None:
    with pytest.raises(DLParamError, match="key 'image_width': expected an integer >= 1, got 0"):
        H.create_dl_preprocess_param("classification", 0, 4, 3, -127, 128)
    with pytest.raises(DLParamError, match="min < max, got 5 and 5"):
        H.create_dl_preprocess_param("classification", 4, 4, 3, 5, 5)
    with pytest.raises(DLParamError, match="key 'model_type': expected one of"):
        H.create_dl_preprocess_param("ocr", 4, 4, 3, -127, 128)
    with pytest.raises(DLParamError, match="expected both or neither"):
        _param(4, 4, 3, "segmentation", set_background_id=0)
    with pytest.raises(DLParamError, match="expected ids not in ignore_class_ids"):
        _param(4, 4, 3, "segmentation", ignore_class_ids=[255], set_background_id=255, class_ids_background=[1])
    with pytest.raises(DLParamError, match="missing key 'domain_handling'"):
        H.check_preprocess_param({k: v for k, v in _param(4, 4).items() if k != "domain_handling"})
    param = _param(4, 4, domain_handling="crop_domain")
    with pytest.raises(DLSampleError, match="sample 0 \\(image_id 7\\), key 'domain': expected a box"):
        H.preprocess_dl_samples([{"image": np.zeros((4, 4, 3), np.uint8), "image_id": 7, "domain": [0, 0, 4, 3]}],
                                param)
    with pytest.raises(DLSampleError, match="sample 1 \\(image_id 8\\), key 'segmentation_image': expected the raw"):
        H.preprocess_dl_samples([{"image": np.zeros((4, 4, 3), np.uint8)},
                                 {"image": np.zeros((4, 4, 3), np.uint8), "image_id": 8,
                                  "segmentation_image": np.zeros((3, 4), np.int64)}], _param(4, 4, 3, "segmentation"))
    with pytest.raises(DLParamError, match="normalization_type / input_range apply to a model's parameters only"):
        H.preprocess_dl_samples([{"image": np.zeros((4, 4, 3), np.uint8)}], param, "all_channels")


def test_the_former_call_with_model_parameters_is_unchanged() -> None:
    model = dl.read_dl_model("classifier_compact")
    dl.set_dl_model_param(model, "image_dimensions", [8, 8, 3])
    raw = [{"image": np.random.default_rng(0).uniform(0, 255, (16, 12, 3)).astype(np.float32), "image_label_id": 1}]
    _assert_samples_equal(H.preprocess_dl_samples(raw, model.params), P.preprocess_dl_samples(raw, model.params))
    _assert_samples_equal(H.preprocess_dl_samples(raw, model.params, "all_channels"),
                          P.preprocess_dl_samples(raw, model.params, "all_channels"))


@pytest.fixture(scope="module")
def segmentation_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("segmentation")
    return read_dl_dataset(write_synthetic_dataset("segmentation", folder, count=6, size=24, seed=3))


def test_gen_dl_samples_restricts_the_keys(segmentation_dataset: dict[str, Any]) -> None:
    full = H.gen_dl_samples(segmentation_dataset, [0, 1])
    assert set(full[0]) == {"image", "image_id", "segmentation_image"} and full[0]["image"].dtype == np.uint8
    only = H.gen_dl_samples(segmentation_dataset, [0, 1], "image_only")
    assert [set(s) for s in only] == [{"image", "image_id"}] * 2
    np.testing.assert_array_equal(only[1]["image"], full[1]["image"])
    assert set(H.gen_dl_samples(segmentation_dataset, [2], "segmentation")[0]) == set(full[0])
    with pytest.raises(DLDatasetError, match="sample 0 \\(image_id 0\\) has no classification annotation"):
        H.gen_dl_samples(segmentation_dataset, [0], "classification")
    taken = H.gen_dl_samples(segmentation_dataset, [0], "classification", {"ignore_missing_labels": True})
    assert set(taken[0]) == {"image", "image_id"}
    with pytest.raises(DLParamError, match="restrict_keys_dlsample: expected one of"):
        H.gen_dl_samples(segmentation_dataset, [0], "anomaly_detection")
    with pytest.raises(DLParamError, match="gen_param: expected only 'ignore_missing_labels'"):
        H.gen_dl_samples(segmentation_dataset, [0], "off", {"ignore_missing": True})


def test_preprocess_dl_dataset_then_read_dl_samples_equals_preprocessing_in_memory(
        segmentation_dataset: dict[str, Any], tmp_path: Path) -> None:
    dataset = {**segmentation_dataset, "samples": [dict(s) for s in segmentation_dataset["samples"]]}
    param = _param(16, 12, 3, "segmentation", set_background_id=0, class_ids_background=[3])
    indices = list(range(len(dataset["samples"])))
    in_memory = H.preprocess_dl_samples(H.gen_dl_samples(dataset, indices), param)
    H.preprocess_dl_dataset(dataset, tmp_path, param)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [f"{i}_dlsample.npz" for i in indices]
    assert dataset["dlsample_dir"] == str(tmp_path / "samples") and dataset["preprocess_param"] == param
    _assert_samples_equal(H.read_dl_samples(dataset, indices), in_memory)
    assert all(not (s["segmentation_image"] == 3).any() for s in in_memory)  # remapped before writing
    stored = read_dl_dataset(tmp_path / "dl_dataset.json")  # the written dataset reads back and finds its files
    _assert_samples_equal(H.read_dl_samples(stored, [4, 1]), [in_memory[4], in_memory[1]])
    with pytest.raises(DLDatasetError, match="6 sample files exist .*'overwrite_files': True"):
        H.preprocess_dl_dataset(dataset, tmp_path, param)
    H.preprocess_dl_dataset(dataset, tmp_path, param, {"overwrite_files": True})
    assert not [p for p in tmp_path.rglob("*.tmp")]
    with pytest.raises(DLDatasetError, match="index 6 outside 0..5"):
        H.read_dl_samples(dataset, [6])
    with pytest.raises(DLDatasetError, match="no 'dlsample_dir': preprocess it with preprocess_dl_dataset first"):
        H.read_dl_samples(segmentation_dataset, [0])


def test_samples_of_every_value_kind_read_back_as_they_were(tmp_path: Path) -> None:
    sample = {"image": np.ones((2, 2), np.float32), "image_id": 5, "image_label_id": np.int64(2), "name": "a",
              "image_label_ids": [1, 3], "weight": 0.5, "nothing": None, "flag": True}
    path = tmp_path / "s.npz"
    path.write_bytes(H._sample_bytes(sample, 0))
    dataset = {"dlsample_dir": str(tmp_path), "samples": [{"dlsample_file_name": "s.npz"}]}
    _assert_samples_equal(H.read_dl_samples(dataset, [0]), [sample])
    with pytest.raises(DLSampleError, match="sample 0, key 'bad': expected an array, a number, a string or a list"):
        H._sample_bytes({"bad": {"a": 1}}, 0)


def test_oriented_box_options_travel_in_the_preprocess_param() -> None:
    """instance_type, ignore_direction and class_ids_no_orientation are detection keys of their own (not
    'constant_values' keys): set directly or taken from an oriented detector, they reach the box handling."""
    import math

    import onnx_dl as dl
    from onnx_dl.synthetic import oriented_detection_samples

    param = dl.create_dl_preprocess_param("detection", 32, 32, 3, -127, 128, "none", gen_param={
        "instance_type": "rectangle2", "ignore_direction": True, "class_ids_no_orientation": [1]})
    assert param["instance_type"] == "rectangle2" and param["class_ids_no_orientation"] == [1]
    model = dl.create_dl_model_detection("classifier_compact", 3, {
        "image_width": 32, "image_height": 32, "instance_type": "rectangle2", "ignore_direction": True,
        "anchor_angles": [0.0, math.pi / 2], "class_ids_no_orientation": [1], "min_level": 2, "max_level": 3})
    from_model = dl.create_dl_preprocess_param_from_model(model)
    assert {k: from_model[k] for k in ("instance_type", "ignore_direction", "class_ids_no_orientation")} == {
        "instance_type": "rectangle2", "ignore_direction": True, "class_ids_no_orientation": [1]}
    raw = oriented_detection_samples(6, 64, seed=5, max_shapes=3)
    raw = [dict(s, image=s["image"] + 127.0) for s in raw]
    for sample in dl.preprocess_dl_samples(raw, from_model):
        flat = np.asarray(sample["bbox_label_id"]) == 1
        assert np.all(np.asarray(sample["bbox_phi"])[flat] == 0.0)
        assert np.all(np.abs(np.asarray(sample["bbox_phi"])) <= math.pi / 2)
    with pytest.raises(dl.DLParamError, match=r"keys \['mean_values_normalization'\]: only with normalization_type"):
        dl.create_dl_preprocess_param("detection", 32, 32, 3, -127, 128, "none", gen_param={
            "mean_values_normalization": [1.0, 2.0, 3.0]})
