"""Per-prediction scope: metrics and context, carried in a contextvar so that
concurrent async predictions never see each other's."""
from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

MetricSink = Callable[[str, Any, str], None]


class Scope:
    def __init__(self, sink: MetricSink | None = None, context: dict[str, Any] | None = None) -> None:
        self._sink = sink
        self.context: dict[str, Any] = dict(context or {})
        self.metrics: dict[str, Any] = {}

    def record_metric(self, name: str, value: Any, mode: str = "replace") -> None:
        """mode: replace (last value wins), incr (add), append (collect a list)."""
        if mode not in ("replace", "incr", "append"):
            raise ValueError(f"record_metric mode must be replace, incr or append, not {mode!r}")
        merge_metric(self.metrics, name, value, mode)
        if self._sink is not None:
            self._sink(name, value, mode)


def merge_metric(metrics: dict[str, Any], name: str, value: Any, mode: str) -> None:
    if mode == "incr":
        metrics[name] = metrics.get(name, 0) + value
    elif mode == "append":
        metrics.setdefault(name, []).append(value)
    else:
        metrics[name] = value


_current: contextvars.ContextVar[Scope] = contextvars.ContextVar("cogkit_scope")


def current_scope() -> Scope:
    try:
        return _current.get()
    except LookupError:
        # Outside a prediction (e.g. in setup or a plain script): a throwaway scope.
        scope = Scope()
        _current.set(scope)
        return scope


def emit_metric(name: str, value: Any) -> None:
    current_scope().record_metric(name, value)


def use_scope(scope: Scope) -> contextvars.Token[Scope]:
    return _current.set(scope)


def reset_scope(token: contextvars.Token[Scope]) -> None:
    _current.reset(token)
