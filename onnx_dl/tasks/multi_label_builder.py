"""Building a multi-label classifier on a classifier backbone (HALCON's procedure
``create_dl_model_multi_label_classification``)."""

from __future__ import annotations

from typing import Any

from .. import params as P
from .. import score_head
from ..errors import DLParamError
from ..model import DLModel, from_network
from . import multi_label_classification as multi_label
from .detection_builder import classifier_backbone

_KEPT = ("image_width", "image_height", "image_range_min", "image_range_max")  # from the backbone unless given


def create(backbone: Any, class_ids: Any, params: dict[str, Any] | None = None, seed: int = 0) -> DLModel:
    """A multi-label classifier on ``backbone`` (see
    :func:`onnx_dl.operators.create_dl_model_multi_label_classification`)."""
    if params is not None and not isinstance(params, dict):
        raise DLParamError(f"params: expected a dict of model parameters, got {type(params).__name__}")
    ids = P.coerce("class_ids", class_ids, multi_label.NAME)
    classifier = classifier_backbone(backbone)
    network = classifier.network()
    network = score_head.replace_head(network, score_head.logits_output(network)[0], len(ids), seed)
    network = score_head.with_sigmoid(network, multi_label.CONFIDENCES, ["N", len(ids)])
    model = from_network(network, multi_label.NAME, {"class_ids": ids, **{n: classifier.params[n] for n in _KEPT}})
    for name, value in (params or {}).items():  # checked as set_dl_model_param checks them
        model.set_param(name, value)
    return model
