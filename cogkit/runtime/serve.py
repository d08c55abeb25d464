"""Wire config + schema + runner + routes together and run uvicorn."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

from cogkit.config import Config, load_config
from cogkit.inputs import file_fields
from cogkit.runtime.http import create_app
from cogkit.runtime.runner import Runner
from cogkit.schema import build_openapi


def make_runner(config: Config, python: str, upload_url: str | None = None) -> tuple[Runner, dict[str, Any]]:
    openapi = build_openapi(config.project_dir, config.predict, config.train)
    fields = {"predict": file_fields(openapi, "predict") if config.predict else {},
              "train": file_fields(openapi, "train") if config.train else {}}
    runner = Runner(str(config.project_dir), python, config.predict, config.train, fields,
                    concurrency=config.concurrency_max, upload_url=upload_url, env=config.environment)
    return runner, openapi


def build_app(config: Config, python: str, upload_url: str | None = None,
              request_shutdown: Callable[[], None] = lambda: None) -> FastAPI:
    runner, openapi = make_runner(config, python, upload_url)
    app = create_app(runner, openapi, request_shutdown)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runner.start()  # setup runs in the background; /health-check says STARTING
        yield
        await runner.stop()

    app.router.lifespan_context = lifespan
    return app


def serve(project: str, python: str, host: str, port: int, upload_url: str | None = None) -> None:
    server: uvicorn.Server | None = None

    def request_shutdown() -> None:
        assert server is not None
        server.should_exit = True

    app = build_app(load_config(project), python, upload_url, request_shutdown)
    # No access log: it was filtered out at "warning" anyway, after being formatted for every request.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    server.run()
