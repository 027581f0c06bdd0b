"""The built-in model types, each one module of the contract :class:`onnx_dl.model_type.ModelType`:
:mod:`.classification`, :mod:`.segmentation`, :mod:`.detection` (with the detector builder
:mod:`.detection_builder` and its boxes-and-NMS export :mod:`.detection_postprocess`),
:mod:`.multi_label_classification` (with its builder :mod:`.multi_label_builder`),
:mod:`.ocr_recognition` (Deep OCR word recognition, CTC loss of :mod:`onnx_dl.ctc`).

Importing this package registers them (in this order, which is the order of choices the command
line and error messages show).
"""

from __future__ import annotations

from .. import model_type
from . import classification, detection, multi_label_classification, ocr_recognition, segmentation

for _module in (classification, segmentation, detection, multi_label_classification, ocr_recognition):
    model_type.register(_module)  # type: ignore[arg-type]  # modules satisfy the protocol structurally
