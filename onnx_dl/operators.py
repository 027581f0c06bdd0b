"""The HALCON operators on a model handle: parameters, one training step, inference."""

from __future__ import annotations

from typing import Any

from . import samples as sample_checks
from .errors import DLParamError
from .model import DLModel
from .tasks import detection_builder, multi_label_builder


def _model(model: Any) -> DLModel:
    if not isinstance(model, DLModel):
        raise DLParamError(f"expected a DLModel (from read_dl_model), got {type(model).__name__}")
    return model


def create_dl_model_detection(backbone: Any, num_classes: int, params: dict[str, Any] | None = None) -> DLModel:
    """A RetinaNet-style detection model on the feature maps of a classifier (HALCON's operator).

    ``backbone``: a bundled classifier name (``"classifier_compact"``), a path to an ONNX
    classifier, an ``onnx.ModelProto`` or a classification ``DLModel``; its classification part is
    removed. ``num_classes`` fixes the number of classes. ``params`` holds detection parameters
    (``min_level``, ``max_level``, ``anchor_num_subscales``, ``anchor_aspect_ratios``, ``capacity``,
    ``image_width``, ``image_height``, ``class_ids``, ``class_weights``, ``max_overlap``, ...) and
    any other settable parameter; missing ones take their defaults (the image size: the backbone's).
    The architecture parameters (levels, anchors, capacity, image size, instance type, docking
    layers) cannot be changed afterwards. The image sides must be divisible by 2**max_level.
    """
    return detection_builder.create(backbone, num_classes, params)


def create_dl_model_multi_label_classification(backbone: Any, class_ids: Any,
                                                params: dict[str, Any] | None = None) -> DLModel:
    """A multi-label classifier on a classifier backbone (HALCON's procedure of that name).

    ``backbone`` as for :func:`create_dl_model_detection`; its classification layer is replaced by one
    with ``len(class_ids)`` outputs (weights ~ Normal(0, 0.01), biases 0) and the network ends in a
    Sigmoid: one independent confidence per class. ``params``: any settable parameter
    (``min_confidence``, ``class_names``, ``image_dimensions``, the solver's, ...), checked as
    :func:`set_dl_model_param` checks it; the image size and value range default to the backbone's.
    """
    return multi_label_builder.create(backbone, class_ids, params)


def get_dl_model_param(model: DLModel, name: str) -> Any:
    """Return the value of model parameter ``name`` (HALCON's names)."""
    with _model(model).lock:
        return model.get_param(name)


def set_dl_model_param(model: DLModel, name: str, value: Any) -> None:
    """Set model parameter ``name``; an unknown name or a bad value raises and changes nothing.

    Setting ``class_ids`` to a different number of classes replaces the classification layer
    (new weights ~ Normal(0, 0.01), biases 0): the transfer-learning path. Every name, with what it
    does here (``image_size``, ``device``/``gpu``, ``runtime_init``, ``batchnorm_momentum``,
    ``optimize_for_inference``, the accepted no-ops, ...), is listed in :data:`onnx_dl.params.SPECS`.
    """
    with _model(model).lock:
        model.set_param(name, value)


def train_dl_model_batch(model: DLModel, samples: list[dict[str, Any]]) -> dict[str, float]:
    """One weight update of ``model`` from ``samples``; returns the loss values.

    ``len(samples)`` is a multiple of ``batch_size`` (exactly ``batch_size *
    batch_size_multiplier`` when the multiplier is above 1). Chunks of ``batch_size`` run
    forward and backward, their gradients add up to the gradient of the whole batch's loss, and
    one solver update follows. Returns ``total_loss`` and its parts (``loss_<name>``), which sum
    to it. A step whose samples all weigh 0 (every class weight 0, every pixel ignored) reports a
    cross-entropy of 0 and applies no update. A detector's step also updates the read-only
    ``positive_anchor_average`` that divides its losses (see :mod:`onnx_dl.tasks.detection`). On any
    error the model is left exactly as it was.
    """
    with _model(model).lock:
        model.check_trainable()  # 'optimize_for_inference' True refuses before any sample is checked
        params = model.params
        batch = sample_checks.check_sample_list(samples, "train_dl_model_batch")
        chunks = sample_checks.chunk_count(len(batch), params["batch_size"], params["batch_size_multiplier"])
        feeds, informative, state = model.kind.train_chunks(batch, params, chunks)
        trainer = model.trainer()
        result = trainer.step(feeds, params, update=informative)
        if informative:
            model.weights_changed()
            model.set_training_state(state)
        return result


def apply_dl_model(model: DLModel, samples: list[dict[str, Any]], outputs: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the model on ``samples`` (any number); one result dict per sample.

    Classification: ``classification_class_ids``, ``classification_class_names`` and
    ``classification_confidences``, sorted by descending confidence. Segmentation:
    ``segmentation_image`` (class id per pixel) and ``segmentation_confidence``. Detection: boxes
    ``bbox_row1``, ``bbox_col1``, ``bbox_row2``, ``bbox_col2``, ``bbox_class_id``, ``bbox_class_name``
    and ``bbox_confidence`` (after ``min_confidence``, NMS and ``max_num_detections``), by
    descending confidence. ``outputs`` selects keys.
    """
    return apply_with(model, samples, outputs)


def apply_with(model: DLModel, samples: list[dict[str, Any]], outputs: list[str] | None = None,
               overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``apply_dl_model`` with some post-processing parameters (e.g. ``min_confidence``) replaced for
    this call only: ``overrides`` never reach the model, whose parameters stay as they are."""
    with _model(model).lock:
        params = dict(model.params, **(overrides or {}))
        batch = sample_checks.check_sample_list(samples, "apply_dl_model")
        keys = list(model.kind.RESULT_KEYS) if outputs is None else list(outputs)
        images = sample_checks.images(batch, params)
        step = params["batch_size"]
        results: list[dict[str, Any]] = []
        for start in range(0, len(images), step):
            results += model.kind.results(model.predict(images[start:start + step]), params, keys)
        return results
