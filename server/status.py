"""One vocabulary for how a request (and its stream) ended, shared by streams, the ledger, the logs
and the metrics. American spelling throughout: `canceled`, as Replicate's and OpenAI's APIs spell it."""
from __future__ import annotations

from typing import Final, Literal

Status = Literal["running", "ok", "error", "partial", "canceled"]

RUNNING: Final = "running"     # a stream still being pumped (never a request's final status)
OK: Final = "ok"               # answered in full
ERROR: Final = "error"         # failed before the answer began (or the gateway failed)
PARTIAL: Final = "partial"     # failed after the first token: the client got an in-band error
CANCELED: Final = "canceled"   # the client went away, or DELETEd the stream

FINAL: Final = (OK, ERROR, PARTIAL, CANCELED)   # what a usage row may say
