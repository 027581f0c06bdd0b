"""Write the bundled networks to models/ (run after changing onnx_dl/nets.py).

The wheel ships models/ as the package data ``onnx_dl.models`` (see pyproject.toml).

    python tools/build_models.py
"""

from __future__ import annotations

import json
from pathlib import Path

from onnx_dl import nets
from onnx_dl.serialization import FORMAT_VERSION, METADATA_KEY, write_atomically

MODELS = Path(__file__).resolve().parent.parent / "models"

BUNDLED = {
    "classifier_compact": (
        nets.classifier_compact(num_classes=10),
        {"type": "classification", "image_width": 224, "image_height": 224, "image_num_channels": 3,
         "image_range_min": -127.0, "image_range_max": 128.0, "batch_size": 8, "learning_rate": 0.01,
         "momentum": 0.9, "weight_prior": 0.0001, "solver_type": "sgd"},
    ),
    "segmentation_compact": (
        nets.segmentation_compact(num_classes=4),
        {"type": "segmentation", "image_width": 256, "image_height": 256, "image_num_channels": 3,
         "image_range_min": -127.0, "image_range_max": 128.0, "batch_size": 4, "learning_rate": 0.001,
         "momentum": 0.9, "weight_prior": 0.0001, "solver_type": "adam"},
    ),
    "ocr_recognition_compact": (
        nets.ocr_recognition_compact(num_classes=37, channels=1),
        {"type": "ocr_recognition", "image_width": 128, "image_height": 32, "image_num_channels": 1,
         "image_range_min": -127.0, "image_range_max": 128.0, "batch_size": 16, "learning_rate": 0.001,
         "momentum": 0.9, "weight_prior": 0.0, "solver_type": "adam",
         "alphabet": list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")},
    ),
}


def main() -> None:
    """Build every bundled network and write it with its default parameters."""
    MODELS.mkdir(exist_ok=True)
    for name, (model, params) in BUNDLED.items():
        entry = model.metadata_props.add()
        entry.key = METADATA_KEY
        entry.value = json.dumps({"format": FORMAT_VERSION, "params": params})
        write_atomically(MODELS / f"{name}.onnx", model.SerializeToString())
        print(f"wrote {MODELS / (name + '.onnx')}")


if __name__ == "__main__":
    main()
