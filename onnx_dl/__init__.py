"""onnx_dl: HALCON's deep-learning training operators for plain ONNX models.

    import onnx_dl as dl
    model = dl.read_dl_model("classifier_compact")
    dl.set_dl_model_param(model, "class_ids", [0, 1, 2, 3])
    result = dl.train_dl_model_batch(model, samples)      # {'total_loss': ..., ...}
    dl.write_dl_model(model, "trained.onnx")
"""

from .errors import (
    DLError,
    DLFoldedBatchNormWarning,
    DLModelFileError,
    DLNonFiniteError,
    DLParamError,
    DLRuntimeError,
    DLSampleError,
    DLWarning,
)
from .detection_params import determine_dl_model_detection_param
from .halcon_preprocess import (
    create_dl_preprocess_param,
    create_dl_preprocess_param_from_model,
    gen_dl_samples,
    preprocess_dl_dataset,
    preprocess_dl_samples,
    read_dl_samples,
)
from .heatmap import gen_dl_model_heatmap
from .model import DLModel
from .operators import (
    apply_dl_model,
    create_dl_model_detection,
    create_dl_model_multi_label_classification,
    get_dl_model_param,
    set_dl_model_param,
    train_dl_model_batch,
)
from .serialization import bundled_models, read_dl_model, write_dl_model
from .system import get_system, set_system
from .evaluation import evaluate_dl_model
from .train_param import create_dl_train_param
from .training import train_dl_model
from .torch_export import export_torch
from .version import VERSION as __version__

__all__ = [
    "__version__",
    "DLError", "DLFoldedBatchNormWarning", "DLModel", "DLModelFileError", "DLNonFiniteError", "DLParamError",
    "DLRuntimeError", "DLSampleError", "DLWarning",
    "apply_dl_model", "bundled_models", "create_dl_model_detection",
    "create_dl_model_multi_label_classification", "determine_dl_model_detection_param", "export_torch",
    "create_dl_preprocess_param", "create_dl_preprocess_param_from_model", "gen_dl_model_heatmap", "gen_dl_samples",
    "preprocess_dl_dataset", "preprocess_dl_samples", "read_dl_samples",
    "get_dl_model_param", "get_system",
    "read_dl_model", "set_dl_model_param", "set_system", "train_dl_model_batch", "write_dl_model",
    "create_dl_train_param", "evaluate_dl_model", "train_dl_model",
]
