"""The library's exceptions: every error a user can cause is a :class:`DLError`."""

from __future__ import annotations


class DLError(Exception):
    """Base class of every error raised by onnx_dl on bad input or a failed operation."""


class DLParamError(DLError, ValueError):
    """An unknown model parameter, a value of the wrong type or out of its valid range."""


class DLSampleError(DLError, ValueError):
    """A sample batch that does not fit the model: names the sample index, the key, what was
    expected and what came."""


class DLModelFileError(DLError, OSError):
    """A model file that cannot be read or written, or whose content is not a usable ONNX model."""


class DLRuntimeError(DLError, RuntimeError):
    """The execution engine is missing, misconfigured or failed."""


class DLNonFiniteError(DLError, FloatingPointError):
    """A training step whose loss or gradient went NaN or infinite; no update was applied."""


class DLDatasetError(DLError, ValueError):
    """A dataset folder or file that cannot be read or is inconsistent: names the file and what is wrong."""


class DLWarning(UserWarning):
    """Base class of the warnings onnx_dl gives: the call worked, but the result may not be what the user wants."""


class DLFoldedBatchNormWarning(DLWarning):
    """A network read for training whose batch norms the exporter folded into its convolutions: it trains
    as a network without batch norm. The message says how to export the model so that they are kept."""
