"""Datasets in HALCON's DLDataset layout: reading three file formats, writing, splitting, and
turning dataset entries into raw samples.

A DLDataset is a plain dict: ``class_ids``, ``class_names``, ``image_dir`` (absolute),
``samples`` (dicts with ``image_file_name`` relative to ``image_dir``, ``image_id`` and the
annotation: ``image_label_id``; or ``image_label_ids`` (multi-label: every class present); or ``bbox_row1``/``bbox_col1``/``bbox_row2``/``bbox_col2`` lists
with ``bbox_label_id``; or ``segmentation_file_name`` relative to ``segmentation_dir``), an
optional ``split`` per sample, and ``type`` (our addition: what the dataset annotates).

Formats: a folder with one sub-folder of images per class (classification), COCO JSON with
``bbox`` annotations (detection), images with PNG label masks of the same file stem
(segmentation), a CSV of image files and their class names (multi-label classification), and the
DLDataset itself as JSON (``write_dl_dataset``). ``read_dl_dataset`` takes the image folder
(``image_dir``) or finds it (COCO's ``annotations/`` layout), and checks that every file exists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import model_type, rotated_boxes, system
from .boxes import BOX_KEYS
from .errors import DLDatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "validation", "test")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


BYTE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")
"""Pillow modes of 8 bits per channel: HALCON's byte images."""


def read_image(path: str | os.PathLike[str], keep_bytes: bool = False) -> np.ndarray:
    """An image file as float32 (H, W, C) with values as stored (0..255 for 8-bit images); with
    ``keep_bytes`` an 8-bit file (:data:`BYTE_MODES`) comes as uint8 (HALCON's byte image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            byte = image.mode in BYTE_MODES
            if image.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1"):
                image = image.convert("RGB" if image.mode != "LA" else "L")
            array = np.asarray(image, dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DLDatasetError(f"cannot read image {str(path)!r}: {exc}") from exc
    array = array[..., None] if array.ndim == 2 else array
    return array.astype(np.uint8) if keep_bytes and byte else array


def read_label_image(path: str | os.PathLike[str]) -> np.ndarray:
    """A label image (class id per pixel) as int64 (H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DLDatasetError(f"cannot read label image {str(path)!r}: {exc}") from exc
    if array.ndim != 2:
        raise DLDatasetError(f"label image {str(path)!r}: expected one channel of class ids, got shape {array.shape}")
    return array.astype(np.int64)


def read_dl_dataset_classification(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """A classification dataset from ``folder/<class name>/<image>``; class ids 0.. by sorted name."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise DLDatasetError(f"dataset folder {str(folder)!r} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = []
    for class_id, name in enumerate(classes):
        for path in _image_files(root / name):
            samples.append({"image_file_name": f"{name}/{path.name}", "image_id": len(samples),
                            "image_label_id": class_id})
    if not samples:
        raise DLDatasetError(f"dataset folder {str(folder)!r}: expected one sub-folder of images per class, "
                             f"found {len(classes)} sub-folders and no images ({', '.join(IMAGE_SUFFIXES)})")
    return {"type": "classification", "class_ids": list(range(len(classes))), "class_names": classes,
            "image_dir": str(root), "samples": samples}


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DLDatasetError(f"cannot read {str(path)!r}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DLDatasetError(f"{str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                             f"column {exc.colno}") from exc


def read_dl_dataset_from_coco(json_path: str | os.PathLike[str],
                              image_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A detection dataset from COCO JSON (``images``, ``annotations`` with ``bbox``, ``categories``).

    COCO boxes ``[x, y, w, h]`` have pixel corners at integer positions; HALCON's pixel-centred
    boxes are ``col1 = x - 0.5, row1 = y - 0.5, col2 = x + w - 0.5, row2 = y + h - 0.5``.
    Category ids become ``class_ids``; ``iscrowd`` annotations are skipped. Without ``image_dir``
    the images are looked for as :func:`coco_image_dir` says: beside the JSON file, or in COCO's
    own layout (``annotations/instances_val2017.json`` with ``val2017/``).
    """
    path = Path(json_path)
    return _coco_dataset(_load_json(path), path, image_dir)[0]


def coco_image_dir(json_path: str | os.PathLike[str], first_file_name: str) -> tuple[Path, list[Path]]:
    """The image folder of a COCO file whose first listed image is ``first_file_name``, and the
    other folders searched in vain.

    The JSON file's folder when the image is there. Else, for a JSON file inside a folder named
    ``annotations`` (COCO's layout: ``annotations/instances_val2017.json`` beside ``val2017/``), the
    first of ``../<suffix>/`` (the file stem after its last ``_``: ``val2017``), ``../images/``,
    ``../train2017/``, ``../val2017/`` and ``..`` itself that holds the image. Nothing found: the
    JSON file's folder.
    """
    folder = Path(os.path.abspath(json_path)).parent  # absolute, so '..' is the folder above; links not followed
    if (folder / first_file_name).is_file() or folder.name.lower() != "annotations":
        return folder, []
    root = folder.parent
    names = [Path(json_path).stem.rsplit("_", 1)[-1], "images", "train2017", "val2017"]
    candidates = [root / name for name in dict.fromkeys(names)] + [root]
    for candidate in candidates:
        if (candidate / first_file_name).is_file():
            return candidate, []
    return folder, candidates


def _coco_dataset(coco: Any, path: Path,
                  image_dir: str | os.PathLike[str] | None) -> tuple[dict[str, Any], list[Path]]:
    """The detection dataset of the parsed COCO JSON ``coco`` read from ``path``, and the folders
    searched in vain for its images (see :func:`coco_image_dir`)."""
    where = str(path)
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations",
                                                                                       "categories")):
        raise DLDatasetError(f"{where!r}: expected COCO JSON with the lists 'images', 'annotations' and 'categories'")
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in coco["categories"])
        images = {int(i["id"]): str(i["file_name"]) for i in coco["images"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DLDatasetError(f"{where!r}: a category needs 'id' and 'name', an image 'id' and 'file_name' ({exc})") \
            from exc
    known = {cid for cid, _ in categories}
    boxes: dict[int, list[tuple[list[float], int]]] = {image_id: [] for image_id in images}
    for index, annotation in enumerate(coco["annotations"]):
        if annotation.get("iscrowd"):
            continue
        try:
            image_id, category = int(annotation["image_id"]), int(annotation["category_id"])
            x, y, w, h = (float(v) for v in annotation["bbox"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DLDatasetError(f"{where!r}, annotation {index}: expected 'image_id', 'category_id' and "
                                 f"'bbox' [x, y, w, h] ({exc})") from exc
        if category not in known:
            raise DLDatasetError(f"{where!r}, annotation {index}: category_id {category} is not in 'categories' "
                                 f"{sorted(known)}")
        if image_id not in boxes:
            raise DLDatasetError(f"{where!r}, annotation {index}: image_id {image_id} is not in 'images'")
        boxes[image_id].append(([y - 0.5, x - 0.5, y + h - 0.5, x + w - 0.5], category))
    samples = []
    for image_id, file_name in sorted(images.items()):
        found = boxes[image_id]
        sample: dict[str, Any] = {"image_file_name": file_name, "image_id": image_id,
                                  "bbox_label_id": [c for _, c in found]}
        for column, key in enumerate(BOX_KEYS):
            sample[key] = [box[column] for box, _ in found]
        samples.append(sample)
    folder, searched = Path(image_dir if image_dir is not None else path.parent), []
    if image_dir is None and images:
        folder, searched = coco_image_dir(path, next(iter(images.values())))
    return {"type": "detection", "class_ids": [c for c, _ in categories], "class_names": [n for _, n in categories],
            "image_dir": str(folder.resolve()), "samples": samples}, searched


def read_dl_dataset_dota(folder: str | os.PathLike[str], class_names: Sequence[str] | None = None,
                         include_difficult: bool = True, image_dir: str | os.PathLike[str] | None = None
                         ) -> dict[str, Any]:
    """An oriented-box detection dataset in DOTA's layout: ``folder/labelTxt/<stem>.txt`` per image in
    ``folder/images`` (or ``image_dir``), one object per line ``x1 y1 x2 y2 x3 y3 x4 y4 category
    difficult`` (the corners in pixel (column, row) coordinates; the header lines ``imagesource:`` and
    ``gsd:`` are skipped).

    Each polygon becomes its minimum-area rectangle (:func:`onnx_dl.rotated_boxes.from_polygon`: HALCON's
    ``smallest_rectangle2`` form, length1 >= length2, phi in (-pi/2, pi/2]), moved by -0.5 into the
    pixel-centred convention as COCO boxes are; the dataset is marked ``instance_type`` 'rectangle2' with
    ``ignore_direction`` (a polygon's point order carries no direction). Classes: ``class_names`` in that
    order (ids 0, 1, ...; other categories are an error), else every category found, sorted. Objects
    marked difficult (1) are left out with ``include_difficult=False``. Images without a label file have
    no boxes."""
    root = Path(folder).resolve()
    labels, images = root / "labelTxt", Path(image_dir).resolve() if image_dir is not None else root / "images"
    for where in (labels, images):
        if not where.is_dir():
            raise DLDatasetError(f"DOTA dataset {str(root)!r}: folder {str(where)!r} does not exist")
    objects: dict[str, tuple[np.ndarray, list[str]]] = {}  # per image: its boxes (G, 5) and categories
    for path in _image_files(images):
        found: list[tuple[list[float], str, int, int, str]] = []  # corners, category, difficult, line number, line
        label_file = labels / f"{path.stem}.txt"
        lines = label_file.read_text().splitlines() if label_file.is_file() else []
        for number, line in enumerate(lines, start=1):
            parts = line.split()
            if not parts or parts[0].startswith(("imagesource:", "gsd:")):
                continue
            try:
                corners = [float(v) for v in parts[:8]]
                category, difficult = parts[8], int(parts[9]) if len(parts) > 9 else 0
            except (ValueError, IndexError) as exc:
                raise DLDatasetError(f"{str(label_file)!r}, line {number}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 "
                                     f"category difficult', got {line!r}") from exc
            found.append((corners, category, difficult, number, line))
        points = np.asarray([f[0] for f in found], np.float64).reshape(-1, 4, 2)[..., ::-1] - 0.5  # (row, col)
        boxes = rotated_boxes.from_polygon(points) if len(points) else np.zeros((0, 5))
        for box, (_, _, _, number, line) in zip(boxes, found):
            if not (box[2] > 0 and box[3] > 0):
                raise DLDatasetError(f"{str(label_file)!r}, line {number}: expected a polygon enclosing an area, got "
                                     f"{line!r} (its rectangle has half edge lengths {box[2]:g} and {box[3]:g})")
        kept = [include_difficult or not f[2] for f in found]
        objects[path.name] = (boxes[np.asarray(kept, bool)], [f[1] for f, keep in zip(found, kept) if keep])
    if not objects:
        raise DLDatasetError(f"no images in {str(images)!r}")
    names = list(class_names) if class_names is not None else sorted({c for _, found in objects.values() for c in found})
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DLDatasetError(f"read_dl_dataset_dota: class_names {names} name {repeated} more than once")
    position = {name: i for i, name in enumerate(names)}
    samples = []
    for file_name, (boxes, found) in objects.items():
        unknown = sorted(set(found) - set(position))
        if unknown:
            raise DLDatasetError(f"{file_name!r}: categories {unknown} are not in class_names {names}")
        sample: dict[str, Any] = {"image_file_name": file_name, "image_id": len(samples),
                                  "bbox_label_id": [position[c] for c in found]}
        for column, key in enumerate(rotated_boxes.BOX_KEYS):
            sample[key] = [float(v) for v in boxes[:, column]]
        samples.append(sample)
    return {"type": "detection", "instance_type": "rectangle2", "ignore_direction": True,
            "class_ids": list(range(len(names))), "class_names": names, "image_dir": str(images), "samples": samples}


def read_dl_dataset_segmentation(image_dir: str | os.PathLike[str], segmentation_dir: str | os.PathLike[str],
                                 class_ids: Sequence[int], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A segmentation dataset: every image in ``image_dir`` with the PNG label mask of the same
    file stem in ``segmentation_dir`` (pixel values are class ids)."""
    images, labels = Path(image_dir).resolve(), Path(segmentation_dir).resolve()
    for folder in (images, labels):
        if not folder.is_dir():
            raise DLDatasetError(f"dataset folder {str(folder)!r} does not exist")
    masks = {p.stem: p.name for p in labels.iterdir() if p.suffix.lower() == ".png"}
    samples = []
    for path in _image_files(images):
        if path.stem not in masks:
            raise DLDatasetError(f"image {str(path)!r} has no label mask {path.stem}.png in {str(labels)!r}")
        samples.append({"image_file_name": path.name, "image_id": len(samples),
                        "segmentation_file_name": masks[path.stem]})
    if not samples:
        raise DLDatasetError(f"no images in {str(images)!r}")
    names = list(class_names) if class_names is not None else [str(c) for c in class_ids]
    return {"type": "segmentation", "class_ids": [int(c) for c in class_ids], "class_names": names,
            "image_dir": str(images), "segmentation_dir": str(labels), "samples": samples}


def read_dl_dataset_multi_label(csv_path: str | os.PathLike[str],
                                 image_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A multi-label dataset from a CSV file: one row per image, ``file_name,labels`` where ``labels``
    holds the image's class names separated by ``;`` (empty: no class). A header row starting with
    ``file_name`` is skipped. Class ids 0, 1, ... follow the class names in sorted order; ``image_dir``
    defaults to the CSV file's folder."""
    import csv

    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    except OSError as exc:
        raise DLDatasetError(f"cannot read {str(path)!r}: {exc}") from exc
    if rows and rows[0][0].strip() == "file_name":
        rows = rows[1:]
    entries = []
    for number, row in enumerate(rows, start=1):
        if len(row) > 2 or not row[0].strip():
            raise DLDatasetError(f"{str(path)!r}, row {number}: expected 'file_name,labels' (labels separated by "
                                 f"';'), got {row}")
        names = sorted({name.strip() for name in (row[1] if len(row) > 1 else "").split(";") if name.strip()})
        entries.append((row[0].strip(), names))
    if not entries:
        raise DLDatasetError(f"{str(path)!r}: no images listed")
    classes = sorted({name for _, names in entries for name in names})
    position = {name: i for i, name in enumerate(classes)}
    samples = [{"image_file_name": file_name, "image_id": index, "image_label_ids": [position[n] for n in names]}
               for index, (file_name, names) in enumerate(entries)]
    folder = Path(image_dir) if image_dir is not None else path.parent
    return {"type": "multi_label_classification", "class_ids": list(range(len(classes))), "class_names": classes,
            "image_dir": str(folder.resolve()), "samples": samples}


def read_dl_dataset_ocr_recognition(csv_path: str | os.PathLike[str],
                                    image_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A word-recognition dataset from a CSV file: the header ``file_name,word``, then one row per word image
    (CSV quoting for a word holding a comma or quote). The alphabet is the sorted set of the words'
    characters (``class_ids`` 0..len: the CTC blank, then one per character); ``image_dir`` defaults to the
    CSV file's folder."""
    import csv

    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if row]
    except OSError as exc:
        raise DLDatasetError(f"cannot read {str(path)!r}: {exc}") from exc
    samples = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not row[0].strip():
            raise DLDatasetError(f"{str(path)!r}, row {number}: expected 'file_name,word', got {row}")
        samples.append({"image_file_name": row[0].strip(), "image_id": len(samples), "word": row[1]})
    if not samples:
        raise DLDatasetError(f"{str(path)!r}: no images listed")
    alphabet = sorted({ch for sample in samples for ch in sample["word"]})
    folder = Path(image_dir) if image_dir is not None else path.parent
    return {"type": "ocr_recognition", "alphabet": alphabet, "class_ids": list(range(len(alphabet) + 1)),
            "class_names": ["<blank>", *alphabet], "image_dir": str(folder.resolve()), "samples": samples}


def _csv_header(path: Path) -> list[str]:
    """The first row of a CSV file, stripped (empty when unreadable: the reader reports the error)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [cell.strip() for cell in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError):
        return []


def dataset_type(dataset: dict[str, Any]) -> str:
    """What the dataset annotates: its ``type``, else read off the keys of its first sample."""
    if dataset.get("type") in model_type.names():
        return str(dataset["type"])
    first = dataset["samples"][0] if dataset.get("samples") else {}
    found = [t.NAME for t in model_type.registered() if any(key in first for key in t.DATASET_KEYS)]
    return found[0] if found else model_type.names()[0]


def read_dl_dataset(source: str | os.PathLike[str], type: str | None = None,
                    image_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A dataset from ``source``: a class-folder tree, a DOTA folder (``labelTxt/`` and ``images/``:
    oriented boxes, :func:`read_dl_dataset_dota`), COCO JSON, a multi-label CSV, a word-recognition CSV
    (header ``file_name,word``; or the folder holding it as ``labels.csv``) or DLDataset JSON (detected).

    ``image_dir`` is the folder the image file names are relative to (COCO JSON, the CSV file, a
    DLDataset's own ``image_dir`` replaced); a class-folder tree refuses it. Without it, COCO images
    are found as :func:`coco_image_dir` says. Every image file (and every label image of a
    segmentation dataset) must exist: one :class:`DLDatasetError` lists those that do not.
    """
    path = Path(source)
    searched: list[Path] = []
    if path.is_dir() and _csv_header(path / "labels.csv") == ["file_name", "word"]:
        path = path / "labels.csv"  # a folder of word images with its word list
    if path.is_dir() and (path / "labelTxt").is_dir():
        dataset = read_dl_dataset_dota(path, image_dir=image_dir)
    elif path.is_dir():
        if image_dir is not None:
            raise DLDatasetError(f"dataset {str(source)!r} is a class-folder tree: its images are in its class "
                                 f"sub-folders, an image folder (image_dir {str(image_dir)!r}) does not apply")
        dataset = read_dl_dataset_classification(path)
    elif not path.is_file():
        raise DLDatasetError(f"dataset {str(source)!r} does not exist")
    elif path.suffix.lower() == ".csv" and _csv_header(path) == ["file_name", "word"]:
        dataset = read_dl_dataset_ocr_recognition(path, image_dir)
    elif path.suffix.lower() == ".csv":
        dataset = read_dl_dataset_multi_label(path, image_dir)
    else:
        content = _load_json(path)
        if isinstance(content, dict) and "annotations" in content and "categories" in content:
            dataset, searched = _coco_dataset(content, path, image_dir)
        elif isinstance(content, dict) and isinstance(content.get("samples"), list):
            dataset = _checked_dataset(content, path)
            if image_dir is not None:
                dataset["image_dir"] = str(Path(image_dir).resolve())
        else:
            raise DLDatasetError(f"{str(path)!r}: neither COCO JSON (images, annotations, categories) nor a DLDataset "
                                 f"(class_ids, class_names, image_dir, samples)")
    if type is not None and dataset_type(dataset) != type:
        raise DLDatasetError(f"dataset {str(source)!r} annotates {dataset_type(dataset)}, expected {type}")
    _check_files(dataset, str(source), searched)
    return dataset


def _check_files(dataset: dict[str, Any], source: str, searched: Sequence[Path] = ()) -> None:
    """Raise one :class:`DLDatasetError` naming the image and label files of ``dataset`` that do not
    exist (the first five, the count and the folder); ``searched``: the other folders looked in."""
    problems, images_missing = [], False
    for folder_key, name_key, what in (("image_dir", "image_file_name", "image files"),
                                       ("segmentation_dir", "segmentation_file_name", "label images")):
        named = [(index, s.get(name_key)) for index, s in enumerate(dataset["samples"])
                 if name_key in s or name_key == "image_file_name"]
        if not named:
            continue
        if folder_key not in dataset:
            problems.append(f"samples name {what} but the dataset has no {folder_key}")
            continue
        folder = str(dataset[folder_key])
        missing = [name if isinstance(name, str) else f"<sample {index}: no {name_key}>" for index, name in named
                   if not isinstance(name, str) or not os.path.isfile(os.path.join(folder, name))]
        if not missing:
            continue
        images_missing |= name_key == "image_file_name"
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        absent = "" if os.path.isdir(folder) else " (no such folder)"
        text = f"{len(missing)} of {len(named)} {what} missing in {folder!r}{absent}: " \
               f"{', '.join(repr(name) for name in missing[:5])}{more}"
        if searched and name_key == "image_file_name":
            text += f" (also searched {', '.join(repr(str(p)) for p in searched)})"
        problems.append(text)
    if problems:
        hint = "; give the image folder with image_dir (onnx-dl: --image-dir)" if images_missing else ""
        raise DLDatasetError(f"dataset {source!r}: {'; '.join(problems)}{hint}")


def _checked_dataset(content: dict[str, Any], path: Path) -> dict[str, Any]:
    """A DLDataset read from JSON, with relative folders resolved against the file's folder."""
    missing = [k for k in ("class_ids", "class_names", "image_dir", "samples") if k not in content]
    if missing:
        raise DLDatasetError(f"{str(path)!r}: the DLDataset lacks {missing}")
    if len(content["class_ids"]) != len(content["class_names"]):
        raise DLDatasetError(f"{str(path)!r}: {len(content['class_ids'])} class_ids but "
                             f"{len(content['class_names'])} class_names")
    dataset = dict(content)
    for key in ("image_dir", "segmentation_dir"):
        if key in dataset:
            dataset[key] = str((path.parent / dataset[key]).resolve())
    known = set(dataset["class_ids"])
    for index, sample in enumerate(dataset["samples"]):
        labels = ([sample["image_label_id"]] if "image_label_id" in sample
                  else sample.get("image_label_ids", sample.get("bbox_label_id", [])))
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise DLDatasetError(f"{str(path)!r}, sample {index}: label ids {unknown} are not in class_ids "
                                 f"{sorted(known)}")
    dataset["type"] = dataset_type(dataset)
    return dataset


def write_dl_dataset(dataset: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``dataset`` as JSON (atomically); folders inside the file's folder are stored relative."""
    from .serialization import write_atomically

    target = Path(path)
    content = dict(dataset)
    for key in ("image_dir", "segmentation_dir"):
        if key in content:
            folder = Path(content[key]).resolve()
            try:
                content[key] = str(folder.relative_to(target.parent.resolve()))
            except ValueError:
                content[key] = str(folder)
    write_atomically(target, json.dumps(jsonable(content), indent=1).encode("utf-8"))


def jsonable(value: Any) -> Any:
    """``value`` with NumPy arrays and scalars turned into lists and Python numbers, in any nesting
    of dicts (keys become strings), lists and tuples; NaN becomes None (null: JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def _stratum(dataset: dict[str, Any], sample: dict[str, Any]) -> int:
    """The class a sample is stratified by: its label, or the most frequent box label (-1: none)."""
    if "image_label_id" in sample:
        return int(sample["image_label_id"])
    labels = sample.get("bbox_label_id", sample.get("image_label_ids"))
    if labels is not None and len(labels):
        values, counts = np.unique(np.asarray(labels), return_counts=True)
        return int(values[counts.argmax()])
    return -1


def split_dl_dataset(dataset: dict[str, Any], train_percent: float = 70.0, validation_percent: float = 15.0,
                     seed: int | None = None) -> None:
    """Set ``split`` ('train', 'validation', 'test') of every sample in place, stratified by class.

    Per class, the samples are shuffled with ``seed`` and the first round(n * train_percent / 100)
    go to train, the next round(n * validation_percent / 100) to validation, the rest to test; a
    class with samples always puts at least one into train. ``seed=None`` (the default) uses
    ``get_system('seed_rand')`` (42 unless set: the same split as the former default ``seed=42``).
    """
    seed = system.seed(seed)
    if train_percent <= 0 or validation_percent < 0 or train_percent + validation_percent > 100:
        raise DLDatasetError(f"split_dl_dataset: expected 0 < train_percent and train_percent + validation_percent "
                             f"<= 100, got {train_percent} and {validation_percent}")
    rng = np.random.default_rng(seed)
    strata: dict[int, list[int]] = {}
    for index, sample in enumerate(dataset["samples"]):
        strata.setdefault(_stratum(dataset, sample), []).append(index)
    for key in sorted(strata):
        members = rng.permutation(strata[key])
        train = max(1, round(len(members) * train_percent / 100))
        validation = round(len(members) * validation_percent / 100)
        for position, index in enumerate(members):
            split = "train" if position < train else "validation" if position < train + validation else "test"
            dataset["samples"][int(index)]["split"] = split


def split_indices(dataset: dict[str, Any], split: str) -> list[int]:
    """Indices of the samples in ``split`` ('train', 'validation', 'test')."""
    if split not in SPLITS:
        raise DLDatasetError(f"split: expected one of {list(SPLITS)}, got {split!r}")
    return [i for i, s in enumerate(dataset["samples"]) if s.get("split") == split]


def gen_dl_samples(dataset: dict[str, Any], indices: Sequence[int], keep_bytes: bool = False) -> list[dict[str, Any]]:
    """Raw samples of the dataset entries ``indices``: ``image`` float32 (H, W, C) as stored (``keep_bytes``:
    uint8 for 8-bit files, :func:`read_image`),
    ``image_id`` and the annotation (``image_label_id``; ``image_label_ids``; box arrays and ``bbox_label_id``;
    ``segmentation_image`` int64 (H, W))."""
    entries = dataset["samples"]
    image_dir = Path(dataset["image_dir"])
    result = []
    for index in indices:
        if not 0 <= int(index) < len(entries):
            raise DLDatasetError(f"gen_dl_samples: index {index} outside 0..{len(entries) - 1}")
        entry = entries[int(index)]
        path = image_dir / entry["image_file_name"]
        sample: dict[str, Any] = {"image": read_image(path, keep_bytes=True) if keep_bytes else read_image(path),
                                  "image_id": entry.get("image_id", int(index))}
        if "image_label_id" in entry:
            sample["image_label_id"] = entry["image_label_id"]
        if "image_label_ids" in entry:
            sample["image_label_ids"] = list(entry["image_label_ids"])
        if "word" in entry:
            sample["word"] = str(entry["word"])
        if "bbox_label_id" in entry and any(key in entry for key in rotated_boxes.BOX_KEYS):
            for key in rotated_boxes.BOX_KEYS:
                sample[key] = np.asarray(entry[key], np.float64)
            sample["bbox_label_id"] = np.asarray(entry["bbox_label_id"], np.int64)
        elif "bbox_label_id" in entry:
            for key in BOX_KEYS:
                sample[key] = np.asarray(entry[key], np.float32)
            sample["bbox_label_id"] = np.asarray(entry["bbox_label_id"], np.int64)
        if "segmentation_file_name" in entry:
            sample["segmentation_image"] = read_label_image(Path(dataset["segmentation_dir"])
                                                            / entry["segmentation_file_name"])
        result.append(sample)
    return result


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8)).save(path)


def write_synthetic_dataset(type: str, folder: str | os.PathLike[str], count: int = 400,
                            size: int = 64, seed: int = 0) -> Path:
    """Write ``count`` generated shapes (``onnx_dl.synthetic``) of ``type`` to ``folder`` in that
    type's file format and return what :func:`read_dl_dataset` takes: the class-folder tree
    (classification), ``annotations.json`` (COCO, detection), ``dataset.json`` (DLDataset with
    ``images/`` and ``labels/``, segmentation) or ``labels.csv`` (multi-label classification; word
    recognition: ``file_name,word``, images ``size`` x ``size // 4``)."""
    from . import synthetic

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    if type == "classification":
        names = list(synthetic.SHAPES)
        for name in names:
            (root / name).mkdir(exist_ok=True)
        for index, sample in enumerate(model_type.get(type).synthetic_samples(count, size, seed)):
            _write_png(root / names[sample["image_label_id"]] / f"{index:05d}.png", sample["image"] + 127.0)
        return root
    if type == "detection":
        names = list(synthetic.SHAPES[:3])
        (root / "images").mkdir(exist_ok=True)
        images, annotations = [], []
        for index, sample in enumerate(model_type.get(type).synthetic_samples(count, size, seed)):
            file_name = f"images/{index:05d}.png"
            _write_png(root / file_name, sample["image"] + 127.0)
            images.append({"id": index, "file_name": file_name, "width": size, "height": size})
            for r1, c1, r2, c2, label in zip(*(sample[k] for k in BOX_KEYS), sample["bbox_label_id"]):
                annotations.append({"id": len(annotations), "image_id": index, "category_id": int(label),
                                    "bbox": [float(c1) + 0.5, float(r1) + 0.5, float(c2 - c1), float(r2 - r1)],
                                    "iscrowd": 0, "area": float((c2 - c1) * (r2 - r1))})
        coco = {"images": images, "annotations": annotations,
                "categories": [{"id": i, "name": n} for i, n in enumerate(names)]}
        (root / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")
        return root / "annotations.json"
    if type == "segmentation":
        (root / "images").mkdir(exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        for index, sample in enumerate(model_type.get(type).synthetic_samples(count, size, seed)):
            _write_png(root / "images" / f"{index:05d}.png", sample["image"] + 127.0)
            _write_png(root / "labels" / f"{index:05d}.png", sample["segmentation_image"])
        dataset = read_dl_dataset_segmentation(root / "images", root / "labels", [0, 1, 2, 3],
                                               ["background", *synthetic.SHAPES[:3]])
        write_dl_dataset(dataset, root / "dataset.json")
        return root / "dataset.json"
    if type == "multi_label_classification":
        (root / "images").mkdir(exist_ok=True)
        rows = ["file_name,labels"]
        for index, sample in enumerate(model_type.get(type).synthetic_samples(count, size, seed)):
            _write_png(root / "images" / f"{index:05d}.png", sample["image"] + 127.0)
            rows.append(f"images/{index:05d}.png," + ";".join(synthetic.SHAPES[i] for i in sample["image_label_ids"]))
        (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        return root / "labels.csv"
    if type == "ocr_recognition":  # size: the width; word images are a quarter as high
        import csv
        import io

        (root / "images").mkdir(exist_ok=True)
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["file_name", "word"])
        for index, sample in enumerate(model_type.get(type).synthetic_samples(count, size, seed)):
            _write_png(root / "images" / f"{index:05d}.png", sample["image"][:, :, 0] + 127.0)
            writer.writerow([f"images/{index:05d}.png", sample["word"]])
        (root / "labels.csv").write_text(table.getvalue(), encoding="utf-8")
        return root / "labels.csv"
    raise DLDatasetError(f"write_synthetic_dataset: no file format for type {type!r}; formats: classification, "
                         f"detection, segmentation, multi_label_classification, ocr_recognition")
