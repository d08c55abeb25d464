"""Secrets never leave the gateway: every known secret value (a provider key from the config, the
environment or the encrypted store, BYOK included, and configured header values) is replaced by a
marker in anything relayed to a client or logged. Upstreams do quote the key they were given back
(OpenAI's 401: "Incorrect API key provided: sk-..."), so their messages are scrubbed where they
enter the gateway (the router), before any relay, log or usage row sees them."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MIN_SECRET_CHARS = 6          # shorter values are not treated as secrets (they would blank ordinary words)
MARK = "[redacted]"


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret (and its first and last 4+ characters, as upstreams abbreviate keys as
    "sk-ab***wxyz") replaced by MARK."""
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MARK)
        # the abbreviations upstreams print: a prefix and a suffix of the key around some mask
        if len(secret) >= 12:
            head, tail = secret[:6], secret[-4:]
            if head in text:
                text = text.replace(head, MARK)
            if tail in text and len(tail) >= 4 and any(c.isdigit() for c in tail):
                text = text.replace(tail, MARK)
    return text


def scrub(error: Any, secrets: Iterable[str | None]) -> None:
    """An UpstreamError made safe to relay and log: its message redacted, its raw body dropped."""
    error.message = redact(error.message, secrets)
    error.args = (error.message,)
    error.body = None
