"""`cogkit gateway`: serve the gateway. With no config file it starts on the embedded default
(a SQLite file, no other service); on first start it prints an admin key, once."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


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
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=cfg.logging.access_log,
                timeout_graceful_shutdown=10)


if __name__ == "__main__":
    typer.run(gateway)
