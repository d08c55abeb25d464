"""The classes a model author subclasses. Both Cog generations are supported:
BasePredictor.predict() and the newer BaseRunner.run()."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class BasePredictor:
    def setup(self, weights: Any = None) -> None:  # noqa: B027 - optional hook
        """Load the model once, before any prediction. `weights` comes from COG_WEIGHTS."""

    def predict(self, **kwargs: Any) -> Any:
        raise NotImplementedError("predict() must be implemented")

    # healthcheck() is optional: define it to report UNHEALTHY when it returns False.


class BaseRunner(BasePredictor):
    def run(self, **kwargs: Any) -> Any:
        raise NotImplementedError("run() must be implemented")


def entry_method(predictor: Any, mode: str = "predict") -> Any:
    """The bound method that runs one prediction (or training) on a predictor object."""
    if mode == "train" and hasattr(predictor, "train"):
        return predictor.train
    if isinstance(predictor, BaseRunner) or (hasattr(predictor, "run") and not _overrides_predict(predictor)):
        return predictor.run
    return predictor.predict


def _overrides_predict(obj: Any) -> bool:
    return type(obj).predict is not BasePredictor.predict if isinstance(obj, BasePredictor) else hasattr(obj, "predict")


def streaming(fn: F | None = None) -> Any:
    """`@streaming`: the entry point may answer with server-sent events (Accept: text/event-stream)."""
    def decorate(inner: F) -> F:
        inner.__cog_streaming__ = True  # type: ignore[attr-defined]
        return inner
    return decorate if fn is None else decorate(fn)


def concurrent(fn: F | None = None, *, max: int = 1) -> Any:  # noqa: A002 - Cog's keyword
    """`@concurrent(max=N)`: up to N predictions at once (async entry points only), as Cog's."""
    import inspect

    if isinstance(max, bool) or not isinstance(max, int):
        raise TypeError("concurrent max must be an integer")
    if max < 1:
        raise ValueError("concurrent max must be at least 1")

    def decorate(inner: F) -> F:
        if max > 1 and not (inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner)):
            raise TypeError("concurrent max greater than 1 requires an async function")
        inner.__cog_concurrent_max__ = max  # type: ignore[attr-defined]
        return inner

    if fn is None:
        return decorate
    if not callable(fn):
        raise TypeError("concurrent must be used as @concurrent or @concurrent(max=...)")
    return decorate(fn)
