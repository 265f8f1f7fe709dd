"""Errors of the model layer (registry, readers, tokenizer)."""

from __future__ import annotations

from exo_core.errors import ExoError


class ModelError(ExoError):
    """Base class of model errors."""


class ModelNotFoundError(ModelError):
    """The model id or path names nothing that can be loaded here (message says how to provide it)."""


class ModelFormatError(ModelError):
    """A model file exists but is malformed or uses something this reader does not support."""
