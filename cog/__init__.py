"""Compatibility package: existing Cog projects import `cog` unchanged. The
names of Cog 0.23's `cog`, with its deprecation messages for the old ones."""
import sys as _sys
from typing import Any as _Any

from cogkit.sdk import (
    AsyncConcatenateIterator,
    AsyncIterator,
    BaseModel,
    BasePredictor,
    BaseRunner,
    CancelationException,
    CancellationException,
    ConcatenateIterator,
    FieldInfo,
    File,
    Input,
    Iterator,
    Opaque,
    Path,
    Scope,
    Secret,
    URLFile,
    URLPath,
    concurrent,
    current_scope,
    streaming,
)
from cogkit.sdk import COG_VERSION as __version__
from cogkit.sdk.scope import emit_metric as _emit_metric


class _ExperimentalFeatureWarning(FutureWarning):
    """Deprecated: no longer used by Cog; kept so `warnings.filterwarnings(...)` calls still work."""


def __getattr__(name: str) -> _Any:
    # As Cog: the message goes straight to stderr (no warnings filter can hide it), once.
    if name == "ExperimentalFeatureWarning":
        print("cog: ExperimentalFeatureWarning is deprecated and will be removed in a future release. "
              "Remove `ExperimentalFeatureWarning` from your imports and any associated "
              "`warnings.filterwarnings(...)` calls.", file=_sys.stderr)
        globals()[name] = _ExperimentalFeatureWarning
        return _ExperimentalFeatureWarning
    if name == "emit_metric":
        print("cog: emit_metric() is deprecated and will be removed in a future release. "
              "Use current_scope().record_metric(name, value) instead.", file=_sys.stderr)
        globals()[name] = _emit_metric
        return _emit_metric
    raise AttributeError(f"module 'cog' has no attribute {name!r}")


__all__ = [
    "__version__", "BaseRunner", "BasePredictor", "BaseModel", "Opaque", "Input", "FieldInfo", "Path", "Secret",
    "File", "URLFile", "URLPath", "ConcatenateIterator", "AsyncConcatenateIterator", "CancelationException",
    "current_scope", "streaming", "concurrent", "ExperimentalFeatureWarning", "emit_metric",
    # also here, from older Cog releases
    "AsyncIterator", "CancellationException", "Iterator", "Scope",
]
