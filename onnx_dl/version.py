"""The package's version: the installed metadata's, so pyproject.toml stays its one source."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("onnx_dl")
except metadata.PackageNotFoundError:  # a source checkout that was never installed
    VERSION = "0+unknown"
