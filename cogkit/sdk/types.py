"""Input and output types a predictor declares. Standard library only: this
module is imported inside the model's own environment."""
from __future__ import annotations

import dataclasses
import io
import pathlib
import typing
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

Item = TypeVar("Item")
# The public names (also the `cog.types` module of the compatibility package).
__all__ = ["AsyncConcatenateIterator", "BaseModel", "CancelationException", "ConcatenateIterator", "FieldInfo",
           "File", "Input", "Opaque", "Path", "Secret", "URLFile", "URLPath", "Weights"]


class _Missing:
    def __repr__(self) -> str:
        return "<required>"


MISSING: Any = _Missing()


@dataclasses.dataclass
class FieldInfo:
    """What `Input(...)` returns: the declaration of one input."""

    default: Any = MISSING
    description: str | None = None
    ge: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    regex: str | None = None
    choices: list[Any] | None = None
    deprecated: bool | None = None
    accept: str | None = None  # MIME filter for file inputs, e.g. "image/*"


def Input(  # noqa: N802 - Cog's public name
    default: Any = MISSING,
    *,
    description: str | None = None,
    ge: float | None = None,
    le: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    regex: str | None = None,
    choices: list[Any] | None = None,
    deprecated: bool | None = None,
    accept: str | None = None,
    **_ignored: Any,
) -> Any:
    return FieldInfo(default, description, ge, le, min_length, max_length, regex,
                     list(choices) if choices is not None else None, deprecated, accept)


class Path(pathlib.PosixPath):
    """A local file. Inputs arrive downloaded; outputs are uploaded or inlined."""


class URLPath(Path):
    """A Path that also remembers the URL it came from."""

    source_url: str = ""


class File(io.IOBase):
    """Deprecated in Cog in favour of Path; kept so old predictors still load."""


class URLFile(io.IOBase):
    """A file read lazily from an http(s) URL on first use, as Cog's URLFile."""

    def __init__(self, url: str, filename: str | None = None) -> None:
        import os
        import urllib.parse

        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError("URLFile requires URL to conform to HTTP or HTTPS protocol")
        self.name = filename or os.path.basename(parsed.path)
        self.url = url
        self._response: Any = None

    def _target(self) -> Any:
        if self._response is None:
            import urllib.request
            self._response = urllib.request.urlopen(self.url, timeout=10)
        return self._response

    def read(self, size: int = -1) -> bytes:
        return self._target().read(size)

    def readable(self) -> bool:
        return True

    def __iter__(self) -> Iterator[bytes]:  # type: ignore[override]
        return iter(self._target())

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name, self.url, self._response = state["name"], state["url"], None

    def __repr__(self) -> str:
        return f"<URLFile for {self.url!r}>"


# Old Cog (cog.types.Weights, for setup(weights=...)): what COG_WEIGHTS may be given as.
Weights = typing.Union[File, Path, str]


class _OpaqueMarker:
    """`Annotated[T, Opaque]`: T is an opaque JSON object, passed through as it is."""

    def __repr__(self) -> str:
        return "cog.Opaque"


Opaque = _OpaqueMarker()


class Secret:
    """A value that never appears in logs, reprs or responses."""

    def __init__(self, secret_value: str | None = None) -> None:
        self._secret_value = secret_value

    def get_secret_value(self) -> str | None:
        return self._secret_value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._secret_value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._secret_value == self._secret_value

    def __hash__(self) -> int:
        return hash(self._secret_value)


class ConcatenateIterator(Iterator[Item]):
    """Streamed text whose pieces are joined for display (LLM tokens)."""

    def __next__(self) -> Item:  # pragma: no cover - marker type only
        raise StopIteration


class AsyncConcatenateIterator(AsyncIterator[Item]):
    async def __anext__(self) -> Item:  # pragma: no cover - marker type only
        raise StopAsyncIteration


class BaseModel:
    """Structured output. Subclasses become dataclasses, so `class Output(BaseModel):
    text: str` works as in Cog, with no pydantic needed in the model's environment."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(cls)

    def dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    model_dump = dict


class CancelationException(Exception):
    """Raised inside a synchronous predict() when its prediction is canceled.

    Derives from Exception, like Cog's, so `except Exception` in user code that
    re-raises still works; the worker treats it as a cancel, not a failure."""


def is_iterator_type(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    try:
        return isinstance(origin, type) and issubclass(origin, (Iterator, AsyncIterator))
    except TypeError:
        return False
