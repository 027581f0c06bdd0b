"""Deep OCR word recognition (HALCON's model type ``ocr_recognition``): a word image in, its string out
(the model-type contract of :mod:`onnx_dl.model_type`).

The network maps an image to one column of class scores per horizontal step, (N, K, T) (or (N, T, K)
for a foreign network; the step axis is the one that grows with the image width); class 0 is the CTC
blank and class k >= 1 the character ``alphabet[k - 1]``. Samples carry ``word``, a string over the
alphabet. The loss is CTC (:func:`onnx_dl.ctc.ctc_loss`), the mean over the words of the step. Setting
``alphabet`` rebuilds the score layer per character: a character already known keeps its weights, a new
one starts fresh (a reordered alphabet relabels nothing);
``class_ids`` are 0..K-1 and ``class_names`` blank + the alphabet, both derived from it (HALCON's
Deep OCR names: ``alphabet``, ``alphabet_internal``, the network's characters, and ``alphabet_mapping``,
characters read as others at inference).

``apply_dl_model`` decodes the best path (the most likely class per step, repeats collapsed, blanks
dropped) and returns ``word``; ``word_confidence``, the probability of that best path,
prod_t max_k y_t(k); and ``char_candidates``, per recognised character its
:data:`NUM_CHAR_CANDIDATES` most likely characters at the step that emitted it (blank excluded) with
their probabilities, best first. The written model ends in the per-step class probabilities (N, K, T).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from .. import ctc, score_head, synthetic, training_graph
from .. import measures as measure
from .. import samples as sample_checks
from ..errors import DLParamError, DLSampleError
from ..graph import tensor_shapes, with_input_shape
from ..onnx_builder import GraphBuilder
from ..params import ParamSpec, image_shape, nonnegative_ids

NAME = "ocr_recognition"
WORD = "word"
DATASET_KEYS = (WORD,)
RESULT_KEYS = ("word", "word_confidence", "char_candidates")
PROBABILITIES = "probabilities"  # the output a written model ends in: (N, K, T), softmax over K
BLANK_NAME = "<blank>"
NUM_CHAR_CANDIDATES = 3
SCORE_RANK = 3  # (N, K, T)
STEPS = "num_time_steps"


def single_characters(value: list[str]) -> str | None:
    """Check: a non-empty list of distinct single characters."""
    if not value or any(len(ch) != 1 for ch in value):
        return "a non-empty list of single characters"
    return None if len(set(value)) == len(value) else "distinct characters"


PARAMS = (ParamSpec("alphabet", "str_list", None, "the characters the model reads, one per class after the CTC "
                    "blank (class k is alphabet[k - 1]); a new alphabet keeps each known character's weights, new ones "
                    "start fresh", single_characters),
          ParamSpec("alphabet_internal", "str_list", None, "the characters of the network's score layer, class k "
                    "being alphabet_internal[k - 1]: the alphabet the network was last given (read-only)",
                    settable=False),
          ParamSpec("alphabet_mapping", "int_list", None, "inference only: for each character of the alphabet, the "
                    "index of the alphabet character apply_dl_model reports instead (e.g. 'O' read as '0'); None: "
                    "each as itself; reset by a new alphabet", nonnegative_ids),
          ParamSpec(STEPS, "int", None, "the time steps T (columns of class scores) the network gives at the image "
                    "size: a word needs its length plus one step per pair of equal neighbours (read-only)",
                    settable=False))
PARAM_CHECKS: dict[str, Callable[[Any], str | None]] = {}
FIXED_AFTER_CREATION: frozenset[str] = frozenset()
TRAINING_STATE: tuple[str, ...] = ()
DEFAULT_CLASS_WEIGHT = 1.0
MAIN_MEASURE, LOWER_IS_BETTER = "word_accuracy", False
EVALUATION_OVERRIDES: dict[str, Any] = {}
CLI_NETWORK, CLI_IMAGE_SIZE = "ocr_recognition_compact", 128  # the width; the height is a quarter of it


# -- the network's scores -----------------------------------------------------------------------------

def _score_shape(network: onnx.ModelProto, dims: list[int], logits: str) -> list[int | None] | None:
    try:
        return tensor_shapes(with_input_shape(network, dims)).get(logits)
    except Exception:  # a network that does not take the width (shape inference raises)
        return None


def layout(network: onnx.ModelProto, params: dict[str, Any]) -> tuple[str, bool, int, int]:
    """(scores, steps_first, K, T) at the model's image size: the tensor the type reads (the input of a
    final Softmax, else the first output), whether it is (N, T, K) instead of (N, K, T), the class count
    and the number of steps. The step axis is the one that grows when the image gets wider; for a network
    of one width only, the class axis is the one matching the alphabet (else axis 1)."""
    logits = score_head.logits_output(network)[0]
    channels, height, width = image_shape(params)
    shape = _score_shape(network, [1, channels, height, width], logits)
    if not shape or len(shape) != 3 or None in shape[1:]:
        raise DLParamError(f"output {logits!r}: expected per-step class scores (N, K, T) or (N, T, K) for "
                           f"{width} x {height} images, got shape {shape}")
    wider = _score_shape(network, [1, channels, height, 2 * width], logits)
    if wider and len(wider) == 3 and wider[1] != shape[1] and wider[2] == shape[2]:
        steps_first = True
    elif wider and len(wider) == 3 and wider[2] != shape[2]:
        steps_first = False
    else:
        alphabet = params.get("alphabet")
        steps_first = alphabet is not None and shape[2] == len(alphabet) + 1 != shape[1]
    classes, steps = (shape[2], shape[1]) if steps_first else (shape[1], shape[2])
    return logits, steps_first, int(classes), int(steps)  # type: ignore[arg-type]


def check_params(params: dict[str, Any]) -> None:
    """The alphabet (when set) has one character per class after the blank."""
    alphabet = params.get("alphabet")
    if alphabet is not None and len(alphabet) + 1 != len(params["class_ids"]):
        raise DLParamError(f"parameter 'alphabet': expected {len(params['class_ids']) - 1} characters (the network "
                           f"predicts the blank and {len(params['class_ids']) - 1} classes), got {len(alphabet)}")
    mapping = params.get("alphabet_mapping")
    if mapping is not None and (alphabet is None or len(mapping) != len(alphabet)
                                or max(mapping, default=0) >= len(alphabet)):
        size = "no alphabet" if alphabet is None else f"{len(alphabet)} characters"
        raise DLParamError(f"parameter 'alphabet_mapping': expected one index per alphabet character, each below the "
                           f"alphabet's length ({size}), got {mapping}")


def implied_params(name: str, value: Any, params: dict[str, Any]) -> dict[str, Any]:
    """What setting ``alphabet`` also sets (an optional hook of the handle, :meth:`onnx_dl.model.DLModel.set_param`):
    ``class_ids`` 0..len (a new length: a new score layer), ``class_names`` blank + alphabet, no class weights,
    no ``alphabet_mapping``."""
    if name != "alphabet":
        return {}
    return {"class_ids": list(range(len(value) + 1)), "class_names": [BLANK_NAME, *value], "class_weights": None,
            "alphabet_mapping": None}


def network_for(name: str, value: Any, network: onnx.ModelProto, params: dict[str, Any]) -> onnx.ModelProto | None:
    """The network a new ``alphabet`` needs (an optional hook of the handle): when the model already has an
    alphabet, a score layer whose class for each character keeps that character's trained weights (the blank
    its own; new characters start fresh), so a reordered or changed alphabet never relabels what was learned
    (:func:`onnx_dl.score_head.remap_head`); None when nothing changes or no alphabet was set before (the
    first alphabet names the network's classes)."""
    old = params.get("alphabet")
    if name != "alphabet" or old is None or list(value) == list(old):
        return None
    logits, steps_first, _, _ = layout(network, params)
    if steps_first:
        raise DLParamError(f"the network's scores {logits!r} are (N, T, K): its score layer cannot be rebuilt here, so "
                           f"its alphabet {old} cannot change (got {list(value)})")
    position = {ch: k + 1 for k, ch in enumerate(old)}
    return score_head.remap_head(network, logits, [0, *(position.get(ch) for ch in value)])


def network_params(network: onnx.ModelProto, params: dict[str, Any],
                   previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the handle reads off the network whenever it or the parameters change (an optional hook,
    :func:`onnx_dl.model.network_params`): the read-only ``num_time_steps`` T at the image size (kept from
    ``previous``, the same network's parameters before, when the image shape and alphabet are unchanged:
    shape inference on every parameter set, a learning rate per step among them, costs milliseconds),
    ``alphabet_internal`` and ``class_names`` (blank first) from the alphabet."""
    unchanged = previous is not None and STEPS in previous and image_shape(previous) == image_shape(params) \
        and previous.get("alphabet") == params.get("alphabet")
    found: dict[str, Any] = {STEPS: previous[STEPS] if unchanged else layout(network, params)[3]}
    if params.get("alphabet") is not None:
        found["class_names"] = [BLANK_NAME, *params["alphabet"]]
        found["alphabet_internal"] = list(params["alphabet"])
    return found


def head_weights(network: onnx.ModelProto) -> set[str]:
    """What ``freeze_backbone`` keeps trainable: the layer that produces the scores."""
    return set(score_head.head_weights(network, score_head.logits_output(network)[0]))


def output_shapes(network: onnx.ModelProto, params: dict[str, Any]) -> dict[str, list[int]]:
    """{scores: (K, T) or (T, K)} per image."""
    logits, steps_first, classes, steps = layout(network, params)
    return {logits: [steps, classes] if steps_first else [classes, steps]}


def num_classes(network: onnx.ModelProto, params: dict[str, Any]) -> int:
    """K: the blank and one class per character."""
    return layout(network, params)[2]


def with_classes(network: onnx.ModelProto, params: dict[str, Any], class_ids: list[int]) -> onnx.ModelProto:
    """The network with a new score layer of ``len(class_ids)`` outputs (networks with scores (N, K, T))."""
    logits, steps_first, _, _ = layout(network, params)
    if steps_first:
        raise DLParamError(f"the network's scores {logits!r} are (N, T, K): its class count cannot be changed here; "
                           f"give it an alphabet of K - 1 characters")
    return score_head.replace_head(network, logits, len(class_ids))


def inference_graph(network: onnx.ModelProto, params: dict[str, Any]) -> onnx.ModelProto:
    """A copy of the network ending in per-step class probabilities (N, K, T), the softmax over K (a network
    already ending in a Softmax over axis 1 is copied as is)."""
    logits, steps_first, classes, _ = layout(network, params)
    model = onnx.ModelProto()
    model.CopyFrom(network)
    if logits != model.graph.output[0].name:
        return model
    del model.graph.output[:]
    b = GraphBuilder(model.graph)
    scores = b.op("Transpose", [logits], "scores_nkt", perm=[0, 2, 1]) if steps_first else logits
    b.op("Softmax", [scores], name=PROBABILITIES, axis=1)
    b.output(PROBABILITIES, ["N", classes, "T"])
    return model


def build_training_graph(network: onnx.ModelProto, params: dict[str, Any],
                         trainable: list[str] | None = None) -> training_graph.TrainingGraph:
    """The training graph: CTC on the scores at the model's image size."""
    logits, steps_first, classes, steps = layout(network, params)
    return training_graph.ocr_recognition(network, image_shape(params), classes, steps, logits, steps_first,
                                          trainable)


# -- samples and results --------------------------------------------------------------------------------

def alphabet_of(params: dict[str, Any]) -> list[str]:
    """The model's alphabet, or an error saying it must be set."""
    if params.get("alphabet") is None:
        raise DLParamError(f"parameter 'alphabet' is not set: set {len(params['class_ids']) - 1} characters (one per "
                           f"class after the CTC blank) with set_dl_model_param(model, 'alphabet', [...])")
    return list(params["alphabet"])


def word_labels(samples: list[dict[str, Any]], alphabet: list[str], steps: int, width: int) -> list[list[int]]:
    """Each sample's ``word`` as classes 1..K-1, refused when it is not a string, holds a character outside
    the alphabet or needs more than ``steps`` time steps (its characters plus one blank between each pair
    of equal neighbours)."""
    position = {ch: k + 1 for k, ch in enumerate(alphabet)}
    words = []
    for index, sample in enumerate(samples):
        word = sample_checks.require(sample, index, WORD)
        if not isinstance(word, str):
            raise DLSampleError(f"sample {index}, key 'word': expected a string, got {sample_checks.describe(word)}")
        unknown = next((ch for ch in word if ch not in position), None)
        if unknown is not None:
            raise DLSampleError(f"sample {index}, key 'word': character {unknown!r} of {word!r} is not in the "
                                f"model's alphabet {''.join(alphabet)!r}")
        labels = [position[ch] for ch in word]
        needed = ctc.required_steps(labels)
        if needed > steps:
            raise DLSampleError(f"sample {index}, key 'word': {word!r} needs {needed} time steps ({len(word)} "
                                f"characters + {needed - len(word)} blanks between repeated ones), the model has "
                                f"{steps} at image_width {width}")
        words.append(labels)
    return words


def train_chunks(samples: list[dict[str, Any]], params: dict[str, Any],
                 chunks: int) -> tuple[list[list[np.ndarray]], bool, dict[str, Any]]:
    """Feeds of each chunk (image, the CTC label tensors of :func:`onnx_dl.ctc.label_tensors`, the step-wide
    number of words); every step carries weight; no training state."""
    alphabet = alphabet_of(params)
    images = sample_checks.images(samples, params)
    steps = params[STEPS]
    words = word_labels(samples, alphabet, steps, params["image_width"])
    tensors = ctc.label_tensors(words, len(alphabet) + 1, steps)
    feeds = [(images, True), (tensors.skip, True), (tensors.start, True), (tensors.end, True), (tensors.onehot, True),
             (np.array(float(len(samples)), np.float32), False)]
    return sample_checks.split_chunks(feeds, chunks), True, {}


def results(outputs: list[np.ndarray], params: dict[str, Any], keys: list[str]) -> list[dict[str, Any]]:
    """Per sample the best-path ``word``, its ``word_confidence`` and the ``char_candidates`` (see the
    module docstring) from the per-step probabilities (N, K, T)."""
    unknown = [key for key in keys if key not in RESULT_KEYS]
    if unknown:
        raise DLParamError(f"apply_dl_model: unknown outputs {unknown}; an ocr_recognition model offers "
                           f"{list(RESULT_KEYS)}")
    alphabet = alphabet_of(params)
    if params.get("alphabet_mapping") is not None:  # class k reads as alphabet[mapping[k - 1]]
        alphabet = [alphabet[i] for i in params["alphabet_mapping"]]
    found = []
    for probabilities in outputs[0]:
        classes, steps = ctc.best_path(probabilities)
        candidates = []
        for t in steps:
            order = np.argsort(-probabilities[1:, t], kind="stable")[:NUM_CHAR_CANDIDATES]
            candidates.append({"candidate": [alphabet[k] for k in order],
                               "confidence": [float(probabilities[k + 1, t]) for k in order]})
        full = {"word": "".join(alphabet[k - 1] for k in classes),
                "word_confidence": ctc.best_path_confidence(probabilities), "char_candidates": candidates}
        found.append({key: full[key] for key in keys})
    return found


def measures(results: list[dict[str, Any]], samples: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Word accuracy and character error rate (:func:`onnx_dl.measures.ocr_recognition_measures`)."""
    return measure.ocr_recognition_measures(results, samples)


def synthetic_samples(count: int, size: int = 128, seed: int = 0) -> list[dict[str, Any]]:
    """Generated words of 3 to 8 digits and capitals, ``size`` wide and ``size // 4`` high
    (:func:`onnx_dl.synthetic.word_samples`)."""
    return synthetic.word_samples(count, size, size // 4, seed)


def dataset_params(dataset: dict[str, Any]) -> dict[str, Any]:
    """The alphabet of a dataset: its ``alphabet``, else the sorted characters of its words."""
    if dataset.get("alphabet"):
        return {"alphabet": list(dataset["alphabet"])}
    return {"alphabet": sorted({ch for s in dataset["samples"] for ch in str(s.get(WORD, ""))})}

