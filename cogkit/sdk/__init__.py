"""The public predictor API. Imported in the model's own environment, so it
depends on the standard library only. The same names as Cog 0.23's `cog`
package (the `cog` compatibility package adds Cog's deprecated ones)."""
from collections.abc import AsyncIterator, Iterator

from cogkit.sdk.predictor import BasePredictor, BaseRunner, concurrent, streaming
from cogkit.sdk.scope import Scope, current_scope, emit_metric
from cogkit.sdk.types import (
    AsyncConcatenateIterator,
    BaseModel,
    CancelationException,
    ConcatenateIterator,
    FieldInfo,
    File,
    Input,
    Opaque,
    Path,
    Secret,
    URLFile,
    URLPath,
    Weights,
)

# Cog spells it both ways over its history.
CancellationException = CancelationException
COG_VERSION = "0.23.1"  # the Cog SDK whose surface this one matches

__all__ = [
    "AsyncConcatenateIterator", "AsyncIterator", "BaseModel", "BasePredictor", "BaseRunner",
    "CancelationException", "CancellationException", "ConcatenateIterator", "FieldInfo", "File", "Input",
    "Iterator", "Opaque", "Path", "Scope", "Secret", "URLFile", "URLPath", "Weights", "concurrent",
    "current_scope", "emit_metric", "streaming",
]
