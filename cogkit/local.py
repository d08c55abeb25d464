"""Run one prediction (or training) of a project on this machine, through the
same runner the HTTP server uses, in the project's managed environment."""
from __future__ import annotations

import asyncio
import base64
import mimetypes
import os
from collections.abc import Callable
from typing import Any

from cogkit.config import Config
from cogkit.runtime.files import decode_data_uri
from cogkit.runtime.runner import Prediction
from cogkit.runtime.serve import make_runner

Listener = Callable[[str, Any], None]


class SetupFailed(Exception):
    pass


def file_to_data_uri(path: str) -> str:
    """`-i image=@photo.png`: the file travels as a data URI, as with Cog."""
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    with open(path, "rb") as f:
        return f"data:{media_type};base64,{base64.b64encode(f.read()).decode()}"


async def _run(config: Config, python: str, inputs: dict[str, Any], mode: str, listener: Listener,
               setup_listener: Callable[[str], None]) -> Prediction:
    runner, _ = make_runner(config, python)
    await runner.start()
    try:
        if not await runner.wait_ready():
            raise SetupFailed(f"setup failed: {runner.error}\n{runner.setup.logs}".rstrip())
        setup_listener(runner.setup.logs)
        prediction = Prediction(id=runner.new_id(), input=inputs, mode=mode)
        prediction.listeners.append(listener)
        await runner.submit(prediction)
        await prediction.done.wait()
        return prediction
    finally:
        await runner.stop()


def run_prediction(config: Config, python: str, inputs: dict[str, Any], mode: str = "predict",
                   listener: Listener = lambda _e, _d: None,
                   setup_listener: Callable[[str], None] = lambda _logs: None) -> Prediction:
    return asyncio.run(_run(config, python, inputs, mode, listener, setup_listener))


def write_file_outputs(output: Any, target: str | None, directory: str = ".") -> tuple[Any, list[str]]:
    """Write each data-URI output to a file (output.<ext>, output.1.<ext>, ...,
    or the -o path) and return the output with those values replaced by file
    names, plus the list of files written."""
    written: list[str] = []

    def place(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("data:"):
            data, media_type = decode_data_uri(value)
            ext = mimetypes.guess_extension(media_type) or ".bin"
            if target and not written:
                path = target
            else:
                path = os.path.join(directory, f"output{'.' + str(len(written)) if written else ''}{ext}")
            with open(path, "wb") as f:
                f.write(data)
            written.append(path)
            return path
        if isinstance(value, list):
            return [place(v) for v in value]
        if isinstance(value, dict):
            return {k: place(v) for k, v in value.items()}
        return value

    return place(output), written
