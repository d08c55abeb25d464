"""Pydantic v2 models of the external wire formats (OpenAI, Anthropic, Gemini).

No logic, no storage, no HTTP framework. Every model is lenient (`extra="allow"`) so fields a
provider adds later pass through untouched; the fields they declare are validated so a bad client
body gets a 422 that names the field. Use `model_dump(exclude_unset=True)` to get back what was sent.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# A token count a client may ask for: an integer (not a bool, a float or a string), at least 1, and
# bounded so that a credit reservation for it stays a sane number (2**31 - 1 is above every model's limit).
MAX_TOKENS = 2**31 - 1
TokenCount = Annotated[int, Field(strict=True, ge=1, le=MAX_TOKENS)]


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


def tag(field: str, known: set[str], fallback: str = "other"):
    """Discriminator: the value of `field` when it is a known tag, else `fallback`, so unknown
    block/part kinds still validate (leniently) instead of failing the whole request."""

    def pick(value) -> str:
        kind = value.get(field) if isinstance(value, dict) else getattr(value, field, None)
        return kind if isinstance(kind, str) and kind in known else fallback

    return pick
