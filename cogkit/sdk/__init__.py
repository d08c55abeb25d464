"""The public predictor API. Imported in the model's own environment, so it
depends on the standard library only. The same names as Cog 0.23's `cog`
package; the `cog` compatibility package takes them from `__all__` here, and
adds Cog's deprecated ones."""
from collections.abc import AsyncIterator, Iterator

from cogkit.sdk import types
from cogkit.sdk.predictor import BasePredictor, BaseRunner, concurrent, streaming
from cogkit.sdk.scope import Scope, current_scope, emit_metric
from cogkit.sdk.types import *  # noqa: F403 - its __all__ is part of this one

# Cog spells it both ways over its history.
CancellationException = CancelationException  # noqa: F405
COG_VERSION = "0.23.1"  # the Cog SDK whose surface this one matches

__all__ = [
    *types.__all__, "AsyncIterator", "BasePredictor", "BaseRunner", "CancellationException", "Iterator", "Scope",
    "concurrent", "current_scope", "emit_metric", "streaming",
]
