"""Make the README's example pictures: one short `onnx-dl train` run per model type on generated
shapes, then a few of each run's report pictures, shrunk, into tools/report-examples/.

    python tools/report_examples.py            # about three minutes on two cores

The commands it runs are printed; the pictures are the tool's own (the best model's report in the
run folder), only scaled down and reduced to a palette to keep the repository small.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parent / "report-examples"
RUNS = {  # model type: (extra arguments, pictures kept)
    "classification": (["--samples", "800", "--epochs", "3"],
                       ["training.png", "confusion_matrix_normalized.png", "predictions.png"]),
    "segmentation": (["--samples", "400", "--epochs", "3", "--batch-size", "8"],
                     ["class_iou.png", "predictions.png"]),
    "detection": (["--samples", "400", "--epochs", "4", "--batch-size", "8", "--image-size", "64"],
                  ["precision_recall.png", "predictions.png"]),
    "multi_label_classification": (["--samples", "1600", "--epochs", "4"], ["precision_recall.png"]),
}
MAX_SIDE = 640  # pixels of the longer side kept
PREDICTION_ROWS = 2  # rows of the prediction grid kept (two pairs of prediction and ground truth each)


def _shrink(source: Path, target: Path) -> None:
    with Image.open(source) as picture:
        picture = picture.convert("RGB")
        if source.name == "predictions.png":  # the worst few are enough for a README
            rows = max(1, round(picture.height / (picture.width / 4 * 1.3)))
            picture = picture.crop((0, 0, picture.width, picture.height * PREDICTION_ROWS // rows))
        picture.thumbnail((MAX_SIDE, MAX_SIDE))
        picture.quantize(colors=128).save(target, optimize=True)


def main() -> int:
    """Train, then copy the pictures."""
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        for kind, (extra, kept) in RUNS.items():
            command = [sys.executable, "-m", "onnx_dl.cli", "train", "--type", kind, "--output", folder, "--quiet",
                       *extra]
            print("$ onnx-dl " + " ".join(command[3:]).replace(folder, "runs"), flush=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            run = max(Path(folder).iterdir(), key=lambda p: p.stat().st_mtime)
            for name in kept:
                _shrink(run / name, OUT / f"{kind}_{name}")
            shutil.rmtree(run)
    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(OUT.parent)}: {path.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
