"""`cogkit gateway`: serve the gateway. With no config file it starts on the embedded default
(a SQLite file, no other service); on first start it prints an admin key, once."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

# The cyclic collector's young-generation threshold while serving (CPython's default: 700). Every
# streamed request allocates a few thousand containers, nearly all freed by reference counting, yet
# at 700 the collector ran about 100 times a second at 16 streams. Measured mid-run in
# benchmarks/gateway_vs_litellm.py: 8.3 % of the gateway's CPU (0.43 s of 5.2 s); with start-up
# frozen and 5000, 0.3 %. What it still collects waits a little longer: a few MiB at most.
SERVING_GC_THRESHOLD = 5000


def tune_gc_for_serving() -> None:
    """Once the app is built: what was loaded at start-up (FastAPI, pydantic's schemas, SQLAlchemy's
    tables: most of the heap) is moved out of the collector's sight, so a full collection walks only
    what serving made; and young collections run less often (SERVING_GC_THRESHOLD)."""
    import gc
    gc.collect()
    gc.freeze()
    gc.set_threshold(SERVING_GC_THRESHOLD, *gc.get_threshold()[1:])


def gateway(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Gateway config YAML (providers, models, ...)"),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on"),
    port: int = typer.Option(8080, "--port", help="Port to listen on"),
) -> None:
    """Run the model gateway: OpenAI- and Anthropic-compatible APIs and /ai/run for every model."""
    import uvicorn

    from server.app import create_app
    from server.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as e:
        typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    app = create_app(cfg)
    admin_key = app.state.gateway.auth.first_start_admin_key()
    if admin_key:
        typer.echo(f"Admin key (shown once, keep it safe): {admin_key}")
    typer.echo(f"cogkit gateway on http://{host}:{port} ({len(cfg.models)} models, {len(cfg.providers)} providers)")
    tune_gc_for_serving()
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=cfg.logging.access_log,
                timeout_graceful_shutdown=10)


if __name__ == "__main__":
    typer.run(gateway)
