"""The gateway's commands in the `cogkit` CLI: `cogkit gateway` and the admin
commands that talk to a running gateway, and the platform's (`up`, `models`,
`deployments`, `call`). The CLI finds this through the
`cogkit.commands` entry-point group (pyproject.toml), so cogkit never imports server."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from server import admin_cli, platform_cli
    from server.gateway_cli import gateway

    app.command("gateway")(gateway)
    app.add_typer(admin_cli.keys_app, name="keys")
    app.add_typer(admin_cli.providers_app, name="providers")
    app.add_typer(admin_cli.tenants_app, name="tenants")
    platform_cli.register(app)              # up, models, deployments, call
