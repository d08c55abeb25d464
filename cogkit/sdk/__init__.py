"""The public predictor API. Imported in the model's own environment, so it
depends on the standard library only."""
from collections.abc import AsyncIterator, Iterator

from cogkit.sdk.predictor import BasePredictor, BaseRunner
from cogkit.sdk.scope import Scope, current_scope, emit_metric
from cogkit.sdk.types import (
    AsyncConcatenateIterator,
    BaseModel,
    CancelationException,
    ConcatenateIterator,
    File,
    Input,
    Path,
    Secret,
    URLPath,
)

# Cog spells it both ways over its history.
CancellationException = CancelationException

__all__ = [
    "AsyncConcatenateIterator", "AsyncIterator", "BaseModel", "BasePredictor", "BaseRunner",
    "CancelationException", "CancellationException", "ConcatenateIterator", "File", "Input",
    "Iterator", "Path", "Scope", "Secret", "URLPath", "current_scope", "emit_metric",
]
