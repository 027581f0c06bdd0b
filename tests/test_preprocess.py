"""preprocess_dl_samples and augment_dl_samples: resizing against references, boxes and masks
that stay consistent with the image under every geometric change, value scaling, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnx_dl import preprocess as P
from onnx_dl import training
from onnx_dl.errors import DLSampleError


def _params(height: int, width: int, channels: int = 3, low: float = -127.0, high: float = 128.0) -> dict:
    return {"image_height": height, "image_width": width, "image_num_channels": channels,
            "image_range_min": low, "image_range_max": high}


def _bilinear_reference(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel-centred bilinear interpolation, one output pixel at a time, edges clamped."""
    rows, cols = image.shape[:2]
    out = np.zeros((height, width, image.shape[2]), np.float64)
    for i in range(height):
        for j in range(width):
            r = min(max((i + 0.5) * rows / height - 0.5, 0.0), rows - 1.0)
            c = min(max((j + 0.5) * cols / width - 0.5, 0.0), cols - 1.0)
            r0, c0 = int(np.floor(r)), int(np.floor(c))
            r1, c1 = min(r0 + 1, rows - 1), min(c0 + 1, cols - 1)
            fr, fc = r - r0, c - c0
            out[i, j] = ((1 - fr) * ((1 - fc) * image[r0, c0] + fc * image[r0, c1])
                         + fr * ((1 - fc) * image[r1, c0] + fc * image[r1, c1]))
    return out


@pytest.mark.parametrize("shape,target", [((5, 7), (9, 4)), ((8, 8), (16, 16)), ((6, 9), (4, 5))])
def test_bilinear_resize_matches_the_pixel_centred_formula(shape: tuple, target: tuple) -> None:
    image = np.random.default_rng(0).uniform(0, 255, (*shape, 3)).astype(np.float32)
    np.testing.assert_allclose(P.resize_bilinear(image, *target), _bilinear_reference(image, *target), rtol=1e-5,
                               atol=1e-3)


def test_bilinear_upscaling_agrees_with_pillow() -> None:
    plane = np.random.default_rng(1).uniform(0, 255, (6, 10)).astype(np.float32)
    pillow = np.asarray(Image.fromarray(plane, mode="F").resize((23, 15), Image.BILINEAR))
    np.testing.assert_allclose(P.resize_bilinear(plane[:, :, None], 15, 23)[:, :, 0], pillow, atol=2e-3)


def test_strong_shrinking_averages_instead_of_skipping_pixels() -> None:
    stripes = np.zeros((64, 64, 1), np.float32)
    stripes[:, ::2] = 255.0  # one-pixel stripes: point sampling would see only one colour
    small = P.resize_bilinear(stripes, 8, 8)
    np.testing.assert_allclose(small, 127.5, atol=1e-3)


def test_nearest_resize_keeps_label_values() -> None:
    labels = np.array([[0, 1], [2, 3]])
    assert P.resize_nearest(labels, 4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    big = np.random.default_rng(2).integers(0, 5, (37, 23))
    assert set(np.unique(P.resize_nearest(big, 10, 17))) <= set(np.unique(big))


def _rectangles_sample(size: tuple[int, int] = (40, 40), channels: int = 3) -> dict:
    """Two rectangles, painted into the image and the label image, with their tight pixel-centred boxes."""
    rows, cols = size
    image = np.full((rows, cols, channels), 30.0, np.float32)
    labels = np.zeros(size, np.int64)
    boxes = []
    for label, (r1, c1, r2, c2) in [(1, (4, 6, 11, 20)), (2, (22, 25, 35, 33))]:  # inclusive pixel extents
        image[r1:r2 + 1, c1:c2 + 1] = 200.0 + label
        labels[r1:r2 + 1, c1:c2 + 1] = label
        boxes.append([r1 - 0.5, c1 - 0.5, r2 + 0.5, c2 + 0.5])
    b = np.array(boxes, np.float32)
    return {"image": image, "segmentation_image": labels, "weight_image": (labels + 1).astype(np.float32),
            "bbox_row1": b[:, 0], "bbox_col1": b[:, 1], "bbox_row2": b[:, 2], "bbox_col2": b[:, 3],
            "bbox_label_id": np.array([1, 2]), "image_id": 7}


def _tight_boxes(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    result = []
    for label in ids:
        rows, cols = np.nonzero(labels == label)
        result.append([rows.min() - 0.5, cols.min() - 0.5, rows.max() + 0.5, cols.max() + 0.5])
    return np.array(result)


def _boxes(sample: dict) -> np.ndarray:
    return np.stack([sample[k] for k in ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2")], axis=1)


def test_preprocess_resizes_scales_and_moves_boxes_and_masks() -> None:
    raw = _rectangles_sample()
    (done,) = P.preprocess_dl_samples([raw], _params(80, 60))
    assert done["image"].shape == (80, 60, 3) and done["image"].dtype == np.float32
    assert done["segmentation_image"].shape == (80, 60) and done["weight_image"].shape == (80, 60)
    np.testing.assert_allclose(done["image"][0, 0], 30.0 - 127.0)  # v' = v - 127 for the default range
    # rows scale by 2, columns by 1.5: the boxes are the tight extents of the resized masks
    np.testing.assert_allclose(_boxes(done), _tight_boxes(done["segmentation_image"], done["bbox_label_id"]),
                               atol=0.75)
    np.testing.assert_allclose(_boxes(done), (_boxes(raw) + 0.5) * [2, 1.5, 2, 1.5] - 0.5, rtol=1e-6)
    assert raw["image"].shape == (40, 40, 3)  # the input is left as it was
    assert done["image_id"] == 7


def test_value_range_and_normalization_types() -> None:
    image = np.array([[[0.0, 10.0, 20.0], [255.0, 50.0, 20.0]]], np.float32)
    sample = {"image": image}
    (none,) = P.preprocess_dl_samples([sample], _params(1, 2))
    np.testing.assert_allclose(none["image"], image - 127.0)
    (unit,) = P.preprocess_dl_samples([sample], _params(1, 2, low=0.0, high=1.0))
    np.testing.assert_allclose(unit["image"], image / 255.0, rtol=1e-6)
    (stretched,) = P.preprocess_dl_samples([sample], _params(1, 2, low=-1.0, high=1.0), "all_channels")
    np.testing.assert_allclose(stretched["image"][0, :, 0], [-1.0, 1.0])
    np.testing.assert_allclose(stretched["image"][0, :, 2], [-1.0, -1.0])  # a constant channel maps to the low end
    (first,) = P.preprocess_dl_samples([sample], _params(1, 2, low=-1.0, high=1.0), "first_channel")
    np.testing.assert_allclose(first["image"][0, :, 1], [10 / 127.5 - 1, 50 / 127.5 - 1], rtol=1e-6)
    (imagenet,) = P.preprocess_dl_samples([sample], _params(1, 2), "constant_values")
    np.testing.assert_allclose(imagenet["image"][0, 1], (image[0, 1] - P.IMAGENET_MEAN) / P.IMAGENET_DEVIATION,
                               rtol=1e-6)


def test_channels_convert_between_gray_and_rgb() -> None:
    rgb = np.array([[[100.0, 50.0, 200.0]]], np.float32)
    (gray,) = P.preprocess_dl_samples([{"image": rgb}], _params(1, 1, channels=1))
    assert gray["image"].shape == (1, 1)
    np.testing.assert_allclose(gray["image"][0, 0], 0.299 * 100 + 0.587 * 50 + 0.114 * 200 - 127, rtol=1e-6)
    (colour,) = P.preprocess_dl_samples([{"image": np.full((2, 2), 9.0)}], _params(2, 2))
    np.testing.assert_allclose(colour["image"], np.full((2, 2, 3), 9.0 - 127))


def test_preprocess_errors_name_sample_key_and_image() -> None:
    with pytest.raises(DLSampleError, match="sample 0: missing key 'image'"):
        P.preprocess_dl_samples([{"image_label_id": 1}], _params(4, 4))
    with pytest.raises(DLSampleError, match="takes 3 channels, got an image with 2"):
        P.preprocess_dl_samples([{"image": np.zeros((4, 4, 2))}], _params(4, 4))
    sample = _rectangles_sample()
    sample["bbox_row2"] = sample["bbox_row1"].copy()
    with pytest.raises(DLSampleError, match=r"sample 0, key 'bbox_row2': expected a value greater than bbox_row1"):
        P.preprocess_dl_samples([sample], _params(20, 20))
    sample = _rectangles_sample()
    sample["segmentation_image"] = sample["segmentation_image"][:10]
    with pytest.raises(DLSampleError, match="'segmentation_image': expected the raw image's size"):
        P.preprocess_dl_samples([sample], _params(20, 20))
    sample = _rectangles_sample()
    sample["bbox_label_id"] = np.array([1])
    with pytest.raises(DLSampleError, match="sample 0, key 'bbox_label_id': expected one value per box"):
        P.preprocess_dl_samples([sample], _params(20, 20))


def _consistent(sample: dict) -> None:
    """Boxes equal the tight extents of the objects in the label image; the weight image follows too."""
    np.testing.assert_allclose(_boxes(sample), _tight_boxes(sample["segmentation_image"], sample["bbox_label_id"]),
                               atol=1e-6)
    np.testing.assert_array_equal(sample["weight_image"], sample["segmentation_image"] + 1)
    np.testing.assert_array_equal(sample["image"][..., 0] > 100, sample["segmentation_image"] > 0)


@pytest.mark.parametrize("rows,cols", [(True, False), (False, True), (True, True)])
def test_mirror_keeps_boxes_masks_and_weights_together(rows: bool, cols: bool) -> None:
    _consistent(P.mirror(_rectangles_sample((40, 50)), rows, cols))


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_rotation_keeps_boxes_masks_and_weights_together(turns: int) -> None:
    turned = P.rotate(_rectangles_sample((40, 50)), turns)
    assert turned["image"].shape[:2] == ((50, 40) if turns % 2 else (40, 50))
    _consistent(turned)


def test_crop_clips_and_scales_boxes_and_drops_cut_away_objects() -> None:
    sample = _rectangles_sample()
    cropped = P.crop(sample, 2, 4, 20, 20)  # holds all of object 1, object 2 (centre row 28.5) is cut away
    assert cropped["image"].shape == (40, 40, 3) and cropped["bbox_label_id"].tolist() == [1]
    np.testing.assert_allclose(_boxes(cropped), _tight_boxes(cropped["segmentation_image"], [1]), atol=1.0)
    np.testing.assert_allclose(_boxes(cropped)[0], (np.array([4 - 0.5, 6 - 0.5, 11.5, 20.5]) - [2, 4, 2, 4] + 0.5)
                               * 2 - 0.5)
    partial = P.crop(sample, 0, 0, 30, 30)  # object 2's centre (28.5, 29) is inside: clipped to the region
    assert partial["bbox_label_id"].tolist() == [1, 2]
    np.testing.assert_allclose(_boxes(partial)[1], (np.array([21.5, 24.5, 29.5, 29.5]) + 0.5) * 40 / 30 - 0.5)


OLD_DEFAULTS_WITHOUT_CROP = {"mirror": "rc", "rotate": 90, "brightness_variation": 20, "contrast_variation": 0.2}


def _classification_sample(size: tuple[int, int] = (24, 24), channels: int = 3, seed: int = 0) -> dict:
    """A smooth colour image with an image_label_id (a classification sample)."""
    rows, cols = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
    image = np.stack([rows * 3.0, cols * 2.0, rows + cols], axis=2)[:, :, :channels] - 40.0
    image += np.random.default_rng(seed).uniform(-5, 5, image.shape).astype(np.float32)
    return {"image": image.astype(np.float32), "image_label_id": 2, "image_id": seed}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key]


def _same_sample(a: dict, b: dict) -> bool:
    try:
        _same(a, b)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("gen_param", [None, {}, {"augmentation_percentage": 100}, dict(P.AUGMENT_DEFAULTS,
                                                                                         augmentation_percentage=100)])
def test_augmentation_defaults_change_nothing_unless_a_method_is_named(gen_param: dict | None) -> None:
    samples = [_rectangles_sample(), _rectangles_sample((40, 50), channels=1), _classification_sample(),
               _classification_sample(channels=1), {"image": np.arange(12, dtype=np.float32).reshape(3, 4)}]
    done = P.augment_dl_samples(samples, gen_param, seed=5)
    assert len(done) == len(samples)
    for kept, original in zip(done, samples):
        assert kept is not original
        _same(kept, original)  # bit for bit, dtypes and shapes included


def test_augment_is_seeded_uses_every_method_and_keeps_samples_consistent() -> None:
    samples = [_rectangles_sample() for _ in range(60)]
    gen_param = {"augmentation_percentage": 100, **OLD_DEFAULTS_WITHOUT_CROP}
    first = P.augment_dl_samples(samples, gen_param, 3)
    again = P.augment_dl_samples(samples, gen_param, seed=3)
    for a, b in zip(first, again):
        _same(a, b)
    other = P.augment_dl_samples(samples, gen_param, 4)
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(first, other))
    changed = {"geometry": 0, "values": 0}
    for sample in first:
        geometric = not np.array_equal(sample["segmentation_image"], samples[0]["segmentation_image"])
        changed["geometry" if geometric else "values"] += 1
        if geometric:
            _consistent(sample)
        else:  # brightness or contrast: an affine change of the values only
            assert not np.array_equal(sample["image"], samples[0]["image"])
            np.testing.assert_array_equal(_boxes(sample), _boxes(samples[0]))
    assert changed["geometry"] > 10 and changed["values"] > 10
    assert np.array_equal(samples[0]["image"], _rectangles_sample()["image"])  # the input is left as it was


def test_every_method_on_is_seeded_for_classification_samples() -> None:
    samples = [_classification_sample(seed=i) for i in range(40)]
    gen_param = {"augmentation_percentage": 100, "mirror": "rc", "rotate": 180, "brightness_variation": 10,
                 "brightness_variation_spot": 10, "contrast_variation": 0.3, "saturation_variation": 0.5,
                 "crop_percentage": 70, "crop_pixel": 3, "rotate_range": 20}
    first = P.augment_dl_samples(samples, gen_param, np.random.default_rng(8))
    for a, b in zip(first, P.augment_dl_samples(samples, gen_param, np.random.default_rng(8))):
        _same(a, b)
    for done, original in zip(first, samples):
        assert done["image"].shape == original["image"].shape and done["image"].dtype == np.float32
        assert done["image_label_id"] == 2 and not np.array_equal(done["image"], original["image"])


def test_augment_percentage_and_settings() -> None:
    samples = [_rectangles_sample() for _ in range(5)]
    for kept, original in zip(P.augment_dl_samples(samples, {"augmentation_percentage": 0, "mirror": "rc"}), samples):
        assert kept is not original and np.array_equal(kept["image"], original["image"])
    half = P.augment_dl_samples([_rectangles_sample() for _ in range(400)], OLD_DEFAULTS_WITHOUT_CROP, 1)
    share = np.mean([not np.array_equal(s["image"], samples[0]["image"]) for s in half])
    assert 0.4 < share < 0.6  # HALCON's default augmentation_percentage is 50
    wide = P.augment_dl_samples([_rectangles_sample((40, 50))] * 20, {"augmentation_percentage": 100, "rotate": 90}, 2)
    for turned in wide:  # a non-square image turns by 180 degrees only
        _consistent(turned)
        np.testing.assert_array_equal(turned["image"], _rectangles_sample((40, 50))["image"][::-1, ::-1])


@pytest.mark.parametrize("axes", ["r", "c", "rc"])
def test_augment_mirror_alone_moves_boxes_and_masks(axes: str) -> None:
    original = _rectangles_sample((40, 50))
    image = original["image"]
    allowed = {"r": [image[::-1]], "c": [image[:, ::-1]], "rc": [image[::-1], image[:, ::-1], image[::-1, ::-1]]}
    seen = set()
    for done in P.augment_dl_samples([original] * 30, {"augmentation_percentage": 100, "mirror": axes}, 0):
        _consistent(done)
        matches = [i for i, candidate in enumerate(allowed[axes]) if np.array_equal(done["image"], candidate)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == len(allowed[axes])  # every non-empty subset of the axes comes up


def test_augment_rotate_alone_turns_square_images_by_quarter_turns() -> None:
    original = _rectangles_sample()
    turns = set()
    for done in P.augment_dl_samples([original] * 30, {"augmentation_percentage": 100, "rotate": 90}, 0):
        _consistent(done)
        (k,) = [k for k in (1, 2, 3) if np.array_equal(done["image"], np.rot90(original["image"], k))]
        turns.add(k)
    assert turns == {1, 2, 3}
    for done in P.augment_dl_samples([original] * 5, {"augmentation_percentage": 100, "rotate": 180}, 0):
        _consistent(done)
        np.testing.assert_array_equal(done["image"], original["image"][::-1, ::-1])


def test_augment_brightness_and_contrast_alone_change_values_only() -> None:
    original = _rectangles_sample()
    for done in P.augment_dl_samples([original] * 10, {"augmentation_percentage": 100, "brightness_variation": 15}, 0):
        offset = done["image"] - original["image"]
        assert np.ptp(offset) < 1e-4 and 0 < abs(offset.flat[0]) <= 15
        np.testing.assert_array_equal(_boxes(done), _boxes(original))
        np.testing.assert_array_equal(done["segmentation_image"], original["segmentation_image"])
    for done in P.augment_dl_samples([original] * 10, {"augmentation_percentage": 100, "contrast_variation": 0.3}, 0):
        np.testing.assert_allclose(done["image"].mean(), original["image"].mean(), rtol=1e-5)
        ratio = (done["image"] - done["image"].mean()) / (original["image"] - original["image"].mean())
        assert np.ptp(ratio) < 1e-3 and 0.7 <= ratio.flat[0] <= 1.3


def test_augment_brightness_spot_is_a_smooth_bounded_spot() -> None:
    original = _classification_sample((30, 40))
    width, variation = 40, 50.0
    peaks = []
    for done in P.augment_dl_samples([original] * 20, {"augmentation_percentage": 100,
                                                        "brightness_variation_spot": variation}, 4):
        change = (done["image"] - original["image"]).astype(np.float64)
        np.testing.assert_allclose(change[:, :, 1:], np.repeat(change[:, :, :1], 2, axis=2), atol=1e-4)
        spot = change[:, :, 0]
        assert np.abs(spot).max() <= variation + 1e-3
        assert np.abs(spot).max() > 0 and np.ptp(spot) > 0  # a spot, not a constant offset
        assert (np.all(spot >= -1e-4) or np.all(spot <= 1e-4))  # one sign: peak * gaussian
        # smooth: sigma >= 0.5 * width bounds the slope by |peak| / (sigma * sqrt(e)) < 2 * variation / width
        assert np.abs(np.diff(spot, axis=0)).max() <= 2 * variation / width
        assert np.abs(np.diff(spot, axis=1)).max() <= 2 * variation / width
        peaks.append(spot.flat[np.abs(spot).argmax()])
    assert min(peaks) < 0 < max(peaks)
    (grey,) = P.augment_dl_samples([_classification_sample(channels=1)], {"augmentation_percentage": 100,
                                                                         "brightness_variation_spot": 9}, 0)
    assert grey["image"].shape == (24, 24, 1)


def test_augment_saturation_keeps_grey_and_the_channel_mean() -> None:
    gen_param = {"augmentation_percentage": 100, "saturation_variation": 0.5}
    grey_samples = [_classification_sample(channels=1), {"image": np.arange(20, dtype=np.float32).reshape(4, 5)},
                    {"image": np.repeat(_classification_sample(channels=1)["image"], 3, axis=2)}]
    for done, original in zip(P.augment_dl_samples(grey_samples, gen_param, 0), grey_samples):
        _same(done, original)  # no colour, nothing to change
    original = _classification_sample()
    factors = []
    for done in P.augment_dl_samples([original] * 10, gen_param, 1):
        np.testing.assert_allclose(done["image"].mean(axis=2), original["image"].mean(axis=2), atol=1e-4)
        deviation = original["image"] - original["image"].mean(axis=2, keepdims=True)
        changed = done["image"] - done["image"].mean(axis=2, keepdims=True)
        big = np.abs(deviation) > 1
        ratio = changed[big] / deviation[big]
        assert np.ptp(ratio) < 1e-3 and 0.5 <= ratio[0] <= 1.5
        factors.append(ratio[0])
    assert np.ptp(factors) > 0.1


def test_rotate_by_angle_quarter_turn_identity_border_and_pillow() -> None:
    image = np.random.default_rng(3).uniform(0, 255, (21, 21, 3)).astype(np.float32)
    np.testing.assert_array_equal(P.rotate_by_angle(image, 0), image)
    np.testing.assert_allclose(P.rotate_by_angle(image, 90)[1:-1, 1:-1], np.rot90(image)[1:-1, 1:-1], atol=1e-4)
    np.testing.assert_allclose(P.rotate_by_angle(image, -90), np.rot90(image, -1), atol=1e-4)
    ringed = image.copy()  # a constant border: rotated corners read the replicated border
    ringed[0], ringed[-1], ringed[:, 0], ringed[:, -1] = 7.0, 7.0, 7.0, 7.0
    turned = P.rotate_by_angle(ringed, 45)
    for corner in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        np.testing.assert_allclose(turned[corner], 7.0, atol=1e-4)
    wide = np.random.default_rng(4).uniform(0, 255, (15, 22)).astype(np.float32)
    for angle in (30, -17):  # Pillow rotates counter-clockwise about the same centre, bilinear
        pillow = np.asarray(Image.fromarray(wide, mode="F").rotate(angle, Image.BILINEAR, fillcolor=-1000.0))
        inside = np.zeros(wide.shape, bool)
        inside[4:-4, 4:-4] = True
        inside &= pillow > -1
        assert inside.sum() > 20
        np.testing.assert_allclose(P.rotate_by_angle(wide, angle)[inside], pillow[inside], atol=1e-3)


def test_augment_rotate_range_turns_by_whole_degrees_in_range() -> None:
    original = _classification_sample((20, 26))
    angles = set()
    for done in P.augment_dl_samples([original] * 12, {"augmentation_percentage": 100, "rotate_range": 5}, 2):
        (angle,) = [a for a in range(-5, 6) if np.array_equal(done["image"], P.rotate_by_angle(original["image"], a))]
        angles.add(angle)
        assert done["image"].shape == original["image"].shape
    assert len(angles) > 3


def test_augment_crop_pixel_and_crop_percentage_keep_the_size() -> None:
    original = _classification_sample((20, 26))
    offsets = set()
    for done in P.augment_dl_samples([original] * 12, {"augmentation_percentage": 100, "crop_pixel": 4}, 0):
        assert done["image"].shape == original["image"].shape
        (offset,) = [(t, c) for t in range(5) for c in range(5)
                     if np.array_equal(done["image"], P.crop(original, t, c, 16, 22)["image"])]
        offsets.add(offset)
    assert len(offsets) > 3
    for done in P.augment_dl_samples([original] * 5, {"augmentation_percentage": 100, "crop_percentage": 50}, 0):
        assert done["image"].shape == original["image"].shape
        assert any(np.array_equal(done["image"], P.crop(original, t, c, 10, 13)["image"])
                   for t in range(11) for c in range(14))


@pytest.mark.parametrize("key,value", [("crop_percentage", 80), ("crop_pixel", 2), ("rotate_range", 10)])
@pytest.mark.parametrize("kind", ["detection", "segmentation"])
def test_classification_only_keys_raise_for_other_samples(key: str, value: int, kind: str) -> None:
    sample = _rectangles_sample()
    if kind == "detection":
        sample.pop("segmentation_image")
        sample.pop("weight_image")
    else:
        for name in ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2", "bbox_label_id"):
            sample.pop(name)
    with pytest.raises(DLSampleError, match=rf"'{key}': applies to classification samples only.*sample 1 is a {kind}"):
        P.augment_dl_samples([_classification_sample(), sample], {key: value, "augmentation_percentage": 0})
    off = {"crop_percentage": 100, "crop_pixel": 0, "rotate_range": 0}[key]  # switched off: no complaint
    P.augment_dl_samples([sample], {key: off, "augmentation_percentage": 100})
    multi_label = {"image": np.zeros((8, 8, 3), np.float32), "image_label_ids": [0, 2]}
    P.augment_dl_samples([multi_label], {key: value, "augmentation_percentage": 100})


@pytest.mark.parametrize("gen_param,message", [
    ({"mirror_axes": "r"}, "unknown key 'mirror_axes': expected one of augmentation_percentage, mirror"),
    ({"remove_pixel": 0.1}, "unknown key 'remove_pixel'"),
    ({"ignore_direction": "yes"}, "key 'ignore_direction': expected True or False, got 'yes'"),
    ({"class_ids_no_orientation": [-1]}, "key 'class_ids_no_orientation': expected a list of class ids >= 0"),
    ({"rotate": 45}, "key 'rotate': expected 0, 90 or 180, got 45"),
    ({"mirror": "x"}, "key 'mirror': expected 'off', 'r', 'c' or 'rc', got 'x'"),
    ({"mirror": ""}, "key 'mirror': expected 'off', 'r', 'c' or 'rc', got ''"),
    ({"augmentation_percentage": 150}, "key 'augmentation_percentage': expected a number in 0..100, got 150"),
    ({"brightness_variation": -1}, "key 'brightness_variation': expected a number in 0..255, got -1"),
    ({"brightness_variation_spot": 300}, "key 'brightness_variation_spot': expected a number in 0..255, got 300"),
    ({"contrast_variation": 1.5}, "key 'contrast_variation': expected a number in 0..1, got 1.5"),
    ({"saturation_variation": "0.2"}, "key 'saturation_variation': expected a number in 0..1, got '0.2'"),
    ({"crop_percentage": 0}, "key 'crop_percentage': expected a number in 1..100, got 0"),
    ({"crop_pixel": 2.5}, "key 'crop_pixel': expected an integer >= 0 \\(0: off\\), got 2.5"),
    ({"rotate_range": 200}, "key 'rotate_range': expected an integer in 0..180, got 200"),
    ({"rotate": True}, "key 'rotate': expected 0, 90 or 180, got True \\(bool\\)"),
    ([("mirror", "r")], "gen_param: expected a dict of HALCON keys"),
])
def test_unknown_keys_and_bad_values_raise_naming_the_key(gen_param: dict, message: str) -> None:
    with pytest.raises(DLSampleError, match=message):
        P.augment_dl_samples([_classification_sample()], gen_param)


def test_crop_pixel_must_leave_pixels() -> None:
    with pytest.raises(DLSampleError, match="'crop_pixel': expected fewer pixels than the image's smaller side, "
                                            "got 20 for sample 0 of size 20 x 26"):
        P.augment_dl_samples([_classification_sample((20, 26))], {"crop_pixel": 20})


def test_deprecated_keyword_form_still_works_and_warns() -> None:
    samples = [_rectangles_sample() for _ in range(60)]
    with pytest.warns(DeprecationWarning, match=r"mirror_axes -> 'mirror', rotate_step -> 'rotate'"):
        old = P.augment_dl_samples(samples, 3, augmentation_percentage=100, crop_percentage=100)
    # the old defaults: mirror 'rc', rotate 90, brightness 20, contrast 0.2; the same draws as the new form
    new = P.augment_dl_samples(samples, {"augmentation_percentage": 100, **OLD_DEFAULTS_WITHOUT_CROP}, 3)
    for a, b in zip(old, new):
        _same(a, b)
    with pytest.warns(DeprecationWarning, match="deprecated"):  # a Generator as second argument: every old default
        half = P.augment_dl_samples([_rectangles_sample() for _ in range(200)], np.random.default_rng(1))
    share = np.mean([not np.array_equal(s["image"], samples[0]["image"]) for s in half])
    assert 0.35 < share < 0.65
    with pytest.warns(DeprecationWarning):  # the old form crops every sample type, boxes included
        cropped = P.augment_dl_samples(samples[:5], 0, augmentation_percentage=100, mirror_axes="", rotate_step=0,
                                       brightness_variation=0, contrast_variation=0, crop_percentage=60)
    for done in cropped:
        assert any(_same_sample(done, P.crop(samples[0], t, c, 24, 24)) for t in range(17) for c in range(17))
    named = r"rotate_step \(HALCON key 'rotate'\): expected 0, 90 or 180, got 45"
    with pytest.warns(DeprecationWarning), pytest.raises(DLSampleError, match=named):
        P.augment_dl_samples(samples, 0, rotate_step=45)
    with pytest.warns(DeprecationWarning), pytest.raises(DLSampleError, match=r"mirror_axes \(HALCON key 'mirror'\)"):
        P.augment_dl_samples(samples, 0, mirror_axes="x")
    with pytest.warns(DeprecationWarning):
        (kept,) = P.augment_dl_samples(samples[:1], 0, augmentation_percentage=100, mirror_axes="", rotate_step=0,
                                       brightness_variation=0, contrast_variation=0, crop_percentage=100)
    _same(kept, samples[0])
    with pytest.raises(DLSampleError, match="seed came twice"):
        P.augment_dl_samples(samples, 3, seed=4)
    with pytest.raises(DLSampleError, match="got both"):
        P.augment_dl_samples(samples, {"mirror": "r"}, mirror_axes="c")


def test_training_augmentation_keeps_the_old_behaviour_explicitly() -> None:
    assert training.training_augmentation(False, True) is None
    classification = training.training_augmentation(True, True)
    assert classification == training.TRAINING_AUGMENTATION and classification["crop_percentage"] == 80
    assert classification == {"augmentation_percentage": 50, "mirror": "rc", "rotate": 90, "brightness_variation": 20,
                              "contrast_variation": 0.2, "crop_percentage": 80}
    for kind in ("detection", "segmentation"):  # HALCON crops classification samples only
        assert training.training_augmentation(True, False) == {"augmentation_percentage": 50,
                                                              **OLD_DEFAULTS_WITHOUT_CROP}
    assert training.training_augmentation({"mirror": "c"}, False) == {"mirror": "c"}
    with pytest.raises(DLSampleError, match="unknown key 'mirror_axes'"):
        training.training_augmentation({"mirror_axes": "c"}, False)
    with pytest.raises(training.DLParamError, match="augment: expected False, True or a dict"):
        training.training_augmentation("yes", False)  # type: ignore[arg-type]
    samples = [_rectangles_sample() for _ in range(40)]  # True is the old keyword form's behaviour, minus the crop
    with pytest.warns(DeprecationWarning):
        old = P.augment_dl_samples(samples, 6, crop_percentage=100)
    for a, b in zip(old, P.augment_dl_samples(samples, training.training_augmentation(True, False), 6)):
        _same(a, b)


def test_word_samples_are_not_mirrored_turned_or_cropped() -> None:
    """A word read backwards is another word: train_dl_model(augment=True) varies only brightness and
    contrast of OCR samples, and augment_dl_samples refuses to mirror or turn them."""
    assert training.training_augmentation(True, False, words=True) == {
        "augmentation_percentage": 50, "brightness_variation": 20, "contrast_variation": 0.2}
    word = {"image": np.zeros((8, 32, 1), np.float32), "word": "AB12"}
    assert P.sample_kind(word) == "ocr_recognition"
    for key, value in (("mirror", "c"), ("rotate", 180)):
        with pytest.raises(DLSampleError, match=r"sample 0 is a word \(key 'word'\); mirrored or turned"):
            P.augment_dl_samples([word], {key: value, "augmentation_percentage": 100})
    with pytest.raises(DLSampleError, match=r"'crop_percentage': applies to classification samples only.*it has a word"):
        P.augment_dl_samples([word], {"crop_percentage": 80})
    brighter = P.augment_dl_samples([word], {"brightness_variation": 10, "augmentation_percentage": 100}, seed=0)[0]
    assert brighter["word"] == "AB12" and brighter["image"].shape == (8, 32, 1)
