"""What crosses the pipe between the runner (server side) and the worker
(child process in the model's environment). One JSON object per line.

Standard library only: the worker imports this in the model's environment.
"""
from __future__ import annotations

import json
from typing import Any, BinaryIO

# parent -> child
SETUP = "setup"          # {}
PREDICT = "predict"      # {id, mode: predict|train, input, context}
CANCEL = "cancel"        # {id}
HEALTHCHECK = "healthcheck"  # {}
SHUTDOWN = "shutdown"    # {}

# child -> parent
SETUP_DONE = "setup_done"  # {ok, error}
LOG = "log"                # {id|null, text}
OUTPUT = "output"          # {id, value}  one item of a streamed output
METRIC = "metric"          # {id, name, value, mode}
DONE = "done"              # {id, status: succeeded|failed|canceled, output?, error?}
HEALTH = "health"          # {ok, error}

# Files cross the pipe as local paths wrapped in this marker, so a string output
# that merely looks like a path is never mistaken for a file.
PATH_KEY = "__cogkit_path__"


def encode(kind: str, **fields: Any) -> bytes:
    return (json.dumps({"type": kind, **fields}, separators=(",", ":")) + "\n").encode()


def read(stream: BinaryIO) -> dict[str, Any] | None:
    """Next message, or None at end of stream."""
    line = stream.readline()
    if not line:
        return None
    return json.loads(line)


def read_line(line: bytes) -> dict[str, Any]:
    return json.loads(line)
