"""preprocess_dl_samples and augment_dl_samples: resizing against references, boxes and masks
that stay consistent with the image under every geometric change, value scaling, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnx_dl import preprocess as P
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


def test_augment_is_seeded_uses_every_method_and_keeps_samples_consistent() -> None:
    samples = [_rectangles_sample() for _ in range(60)]
    first = P.augment_dl_samples(samples, 3, augmentation_percentage=100, crop_percentage=100)
    again = P.augment_dl_samples(samples, 3, augmentation_percentage=100, crop_percentage=100)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
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


def test_augment_percentage_and_settings() -> None:
    samples = [_rectangles_sample() for _ in range(5)]
    for kept, original in zip(P.augment_dl_samples(samples, 0, augmentation_percentage=0), samples):
        assert kept is not original and np.array_equal(kept["image"], original["image"])
    half = P.augment_dl_samples([_rectangles_sample() for _ in range(400)], 1)
    share = np.mean([not np.array_equal(s["image"], samples[0]["image"]) for s in half])
    assert 0.4 < share < 0.6
    wide = P.augment_dl_samples([_rectangles_sample((40, 50))] * 20, 2, augmentation_percentage=100,
                                mirror_axes="", brightness_variation=0, contrast_variation=0, crop_percentage=100)
    for turned in wide:  # a non-square image turns by 180 degrees only
        _consistent(turned)
        np.testing.assert_array_equal(turned["image"], _rectangles_sample((40, 50))["image"][::-1, ::-1])
    with pytest.raises(DLSampleError, match="rotate_step: expected 0, 90 or 180, got 45"):
        P.augment_dl_samples(samples, 0, rotate_step=45)
    with pytest.raises(DLSampleError, match="mirror_axes"):
        P.augment_dl_samples(samples, 0, mirror_axes="x")
