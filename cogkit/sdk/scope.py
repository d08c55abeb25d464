"""Per-prediction scope: metrics and context, carried in a contextvar so that
concurrent async predictions never see each other's."""
from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

MetricSink = Callable[[str, Any, str], None]


MODES = {"replace": "replace", "incr": "increment", "increment": "increment", "append": "append"}
MAX_NAME_LENGTH = 128
MAX_SEGMENTS = 4


class Metrics(dict):  # type: ignore[type-arg]
    """`scope.metrics`: a dict whose writes are recorded like record_metric(), as Cog's."""

    def __init__(self, scope: Scope) -> None:
        super().__init__()
        self._scope = scope

    def __setitem__(self, name: str, value: Any) -> None:
        self._scope.record_metric(name, value)

    def record(self, name: str, value: Any, mode: str = "replace") -> None:
        self._scope.record_metric(name, value, mode)

    def _store(self, name: str, value: Any) -> None:
        dict.__setitem__(self, name, value)


class Scope:
    def __init__(self, sink: MetricSink | None = None, context: dict[str, Any] | None = None) -> None:
        self._sink = sink
        self.context: dict[str, Any] = dict(context or {})
        self.metrics: Metrics = Metrics(self)

    def record_metric(self, name: str, value: Any, mode: str = "replace") -> None:
        """mode: replace (last value wins), incr (add), append (collect a list). A dotted
        name ("timing.preprocess") is a nested key; names follow Cog's rules."""
        if mode not in MODES:
            raise ValueError(f"record_metric mode must be replace, incr or append, not {mode!r}")
        validate_metric_name(name)
        merge_metric(self.metrics, name, value, MODES[mode])
        if self._sink is not None:
            self._sink(name, value, MODES[mode])


def validate_metric_name(name: str) -> None:
    """Cog's metric-name rules, with its messages."""
    if name == "predict_time":
        raise ValueError("'predict_time' is reserved by the runtime")
    if name.startswith("cog."):
        raise ValueError("the 'cog.' prefix is reserved for system metrics")
    if not name:
        raise ValueError("metric name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"metric name must be {MAX_NAME_LENGTH} characters or fewer (got {len(name)} characters)")
    segments = name.split(".")
    if len(segments) > MAX_SEGMENTS:
        raise ValueError(f"metric name must have at most {MAX_SEGMENTS} dot-separated segments "
                         f"(got {len(segments)})")
    for i, segment in enumerate(segments):
        if not segment:
            where = "start with a dot" if i == 0 else (
                "end with a dot" if i == len(segments) - 1 else "contain empty segments (consecutive dots)")
            raise ValueError(f"metric name must not {where}")
        if not (segment[0].isascii() and segment[0].isalpha()):
            raise ValueError(f"metric name segment '{segment}' must start with a letter")
        bad = next((c for c in segment if not (c.isascii() and (c.isalnum() or c == "_"))), None)
        if bad is not None:
            raise ValueError(f"metric name segment '{segment}' contains invalid character '{bad}'")
        if "__" in segment:
            raise ValueError(f"metric name segment '{segment}' must not contain consecutive underscores")
        if segment.endswith("_"):
            raise ValueError(f"metric name segment '{segment}' must end with a letter or digit")


def merge_metric(metrics: dict[str, Any], name: str, value: Any, mode: str) -> None:
    """Apply one recorded metric; "a.b" lands in metrics["a"]["b"]."""
    *parents, leaf = name.split(".")
    target = metrics
    for part in parents:
        child = target.get(part)
        if not isinstance(child, dict):
            child = {}
            _put(target, part, child)
        target = child
    if mode in ("incr", "increment"):
        _put(target, leaf, target.get(leaf, 0) + value)
    elif mode == "append":
        current = target.get(leaf)
        _put(target, leaf, [*current, value] if isinstance(current, list) else [value])
    else:
        _put(target, leaf, value)


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(target, Metrics):
        target._store(key, value)
    else:
        target[key] = value


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
