"""Compatibility package: existing Cog projects import `cog` unchanged. The
names of Cog 0.23's `cog`, with its deprecation messages for the old ones."""
import sys as _sys
from typing import Any as _Any

from cogkit import sdk as _sdk
from cogkit.sdk import *  # noqa: F403 - every public name of cogkit's SDK is one of Cog's
from cogkit.sdk import COG_VERSION as __version__
from cogkit.sdk.scope import emit_metric as _emit_metric

# Served through __getattr__ below, with Cog's deprecation message.
_DEPRECATED = ("ExperimentalFeatureWarning", "emit_metric")
del emit_metric  # noqa: F821 - the star import's; `cog.emit_metric` must go through __getattr__


class _ExperimentalFeatureWarning(FutureWarning):
    """Deprecated: no longer used by Cog; kept so `warnings.filterwarnings(...)` calls still work."""


def __getattr__(name: str) -> _Any:
    # As Cog: the message goes straight to stderr (no warnings filter can hide it), once.
    if name == _DEPRECATED[0]:
        print("cog: ExperimentalFeatureWarning is deprecated and will be removed in a future release. "
              "Remove `ExperimentalFeatureWarning` from your imports and any associated "
              "`warnings.filterwarnings(...)` calls.", file=_sys.stderr)
        globals()[name] = _ExperimentalFeatureWarning
        return _ExperimentalFeatureWarning
    if name == _DEPRECATED[1]:
        print("cog: emit_metric() is deprecated and will be removed in a future release. "
              "Use current_scope().record_metric(name, value) instead.", file=_sys.stderr)
        globals()[name] = _emit_metric
        return _emit_metric
    raise AttributeError(f"module 'cog' has no attribute {name!r}")


__all__ = ["__version__", *(name for name in _sdk.__all__ if name not in _DEPRECATED), *_DEPRECATED]
