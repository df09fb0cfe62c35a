"""Transcript-based cell segmentation for imaging spatial transcriptomics."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from . import datasets, io, models, pl, pp, tl

try:
    __version__ = version("segger")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

logging.getLogger("segger").addHandler(logging.NullHandler())

__all__ = ["datasets", "io", "models", "pl", "pp", "tl"]
