"""The documented import path of the segmentation helpers (README, "Segmentation"): HALCON's class
weights from label images and weight images, defined with the model type in
:mod:`onnx_dl.tasks.segmentation`."""

from __future__ import annotations

from .tasks.segmentation import calculate_class_weights, gen_weight_images

__all__ = ["calculate_class_weights", "gen_weight_images"]
