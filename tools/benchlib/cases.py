"""What ``tools/bench.py`` measures: one case per model type, both solvers, the model and fixed batch of
a case, and the check that both sides compute the same losses before anything is timed.

Imports onnx_dl only inside functions, so that a worker can time the import itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LOSS_TOLERANCE = 1e-4  # |onnx_dl - torch| <= tol * max(1, |torch|) for every loss of the checked steps
CHECK_STEPS = 2  # the first steps whose losses must agree (the second checks the update rule)


@dataclass(frozen=True)
class Case:
    """One model type as benchmarked: its network, image size, batch and sample generator."""

    model_type: str
    source: str  # a bundled network, or the backbone handed to ``create``
    size: int
    batch: int
    samples: str  # function name in onnx_dl.synthetic: (count, size=, seed=) -> samples
    steps_per_block: int  # full mode; quick mode uses a quarter
    params: dict[str, Any] = field(default_factory=dict)  # model parameters set before training
    create: str | None = None  # onnx_dl operator building the model: create(source, num_classes, params)
    num_classes: int = 0  # for ``create``
    class_weights: bool = True  # train with unequal class weights (a weighted loss)

    def available(self) -> bool:
        """Whether the installed onnx_dl offers this case."""
        import onnx_dl
        return self.create is None or hasattr(onnx_dl, self.create)


CASES = {case.model_type: case for case in (
    Case("classification", "classifier_compact", 224, 8, "classification_samples", 20),
    Case("segmentation", "segmentation_compact", 256, 4, "segmentation_samples", 4),
    Case("detection", "classifier_compact", 256, 4, "detection_samples", 20, {"min_level": 3, "max_level": 5},
         create="create_dl_model_detection", num_classes=3, class_weights=False),
)}

SOLVERS = {
    "sgd": {"solver_type": "sgd", "learning_rate": 0.01, "momentum": 0.9},
    "adam": {"solver_type": "adam", "learning_rate": 0.001},
}


def prepare(case: Case, solver: str) -> tuple[Any, list[dict[str, Any]]]:
    """The model with the case's settings, and the fixed batch every step trains on (both sides)."""
    import numpy as np

    import onnx_dl as dl
    from onnx_dl import synthetic

    if case.create is not None:
        model = getattr(dl, case.create)(case.source, case.num_classes,
                                         {"image_width": case.size, "image_height": case.size, **case.params})
        settings = {"batch_size": case.batch, "weight_prior": 1e-4, **SOLVERS[solver]}
    else:
        model = dl.read_dl_model(case.source)
        settings = {"image_dimensions": [case.size, case.size, model.params["image_num_channels"]],
                    "batch_size": case.batch, "weight_prior": 1e-4, **case.params, **SOLVERS[solver]}
    for name, value in settings.items():
        dl.set_dl_model_param(model, name, value)
    if case.class_weights:
        classes = len(model.params["class_ids"])
        dl.set_dl_model_param(model, "class_weights", np.linspace(0.5, 1.5, classes).tolist())
    samples = getattr(synthetic, case.samples)(case.batch, size=case.size, seed=7)
    return model, samples


def check_losses(ours: list[dict[str, float]], theirs: list[dict[str, float]], label: str) -> float:
    """The largest loss difference of the checked steps; stops the run beyond the tolerance."""
    worst = 0.0
    for step, (a, b) in enumerate(zip(ours, theirs), start=1):
        for name, value in b.items():
            diff = abs(a[name] - value)
            worst = max(worst, diff / max(1.0, abs(value)))
            if diff > LOSS_TOLERANCE * max(1.0, abs(value)):
                raise SystemExit(f"{label}: step {step} {name}: onnx_dl {a[name]:.7f} vs PyTorch {value:.7f} "
                                 f"differ by {diff:.2e} > {LOSS_TOLERANCE}; the comparison is not like for like")
    return worst
