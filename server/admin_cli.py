"""`cogkit keys ...`, `cogkit providers ...` (and `cogkit tenants ...`): talk to a
running gateway's admin API over HTTP.

    cogkit keys create --tenant acme --name ci --rpm 60
    echo "$OPENAI_API_KEY" | cogkit providers set openai          # value from stdin or a hidden prompt

Every command takes --url (env COGKIT_GATEWAY_URL, default http://127.0.0.1:8080)
and --admin-key (env COGKIT_ADMIN_KEY).
"""
from __future__ import annotations

import json
import sys
from typing import Optional

import httpx
import typer

DEFAULT_URL = "http://127.0.0.1:8080"

keys_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Manage gateway API keys.")
providers_app = typer.Typer(add_completion=False, no_args_is_help=True,
                            help="Manage provider credentials (BYOK), encrypted at rest in the gateway.")
tenants_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Manage gateway tenants and credits.")

UrlOpt = typer.Option(DEFAULT_URL, "--url", envvar="COGKIT_GATEWAY_URL", help="Gateway base URL")
AdminKeyOpt = typer.Option(None, "--admin-key", envvar="COGKIT_ADMIN_KEY", help="An admin API key",
                           show_default=False)
JsonOpt = typer.Option(False, "--json", help="Print the raw JSON response")


def _fail(message: str) -> None:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _call(method: str, url: str, admin_key: Optional[str], path: str, **kwargs) -> dict:
    if not admin_key:
        _fail("no admin key: pass --admin-key or set COGKIT_ADMIN_KEY")
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=30,
                          headers={"Authorization": f"Bearer {admin_key}"}) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the gateway at {url}: {exc}")
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        message = (error or {}).get("message") if isinstance(error, dict) else None
        _fail(f"{response.status_code}: {message or body.get('detail') or response.text}")
    return body


def _table(rows: list[dict], columns: list[str]) -> None:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _print(body, as_json: bool, rows: list[dict] | None = None, columns: list[str] | None = None) -> None:
    if as_json or rows is None:
        typer.echo(json.dumps(body, indent=2))
    else:
        _table(rows, columns or [])


# -- keys ---------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(tenant: str = typer.Option("default", "--tenant", "-t", help="Tenant id"),
                name: str = typer.Option("", "--name", "-n", help="A label for the key"),
                admin: bool = typer.Option(False, "--admin", help="May use the admin API"),
                rpm: Optional[int] = typer.Option(None, "--rpm", min=1, help="Requests per minute limit"),
                tpm: Optional[int] = typer.Option(None, "--tpm", min=1, help="Tokens per minute limit"),
                as_json: bool = JsonOpt, url: str = UrlOpt, admin_key: Optional[str] = AdminKeyOpt) -> None:
    """Create a key; prints it once (only the key on stdout, so it can be captured)."""
    body = _call("POST", url, admin_key, "/admin/keys",
                 json={"tenant_id": tenant, "name": name, "admin": admin, "rpm": rpm, "tpm": tpm})
    if as_json:
        _print(body, True)
        return
    typer.secho(f"Created key {body['id']} for tenant {body['tenant_id']}; it is shown only this once:", err=True)
    typer.echo(body["key"])


@keys_app.command("list")
def keys_list(tenant: Optional[str] = typer.Option(None, "--tenant", "-t", help="Only this tenant's keys"),
              as_json: bool = JsonOpt, url: str = UrlOpt, admin_key: Optional[str] = AdminKeyOpt) -> None:
    """List keys (id, display prefix, limits; never the key itself)."""
    body = _call("GET", url, admin_key, "/admin/keys", params={"tenant_id": tenant} if tenant else None)
    _print(body, as_json, body["data"], ["id", "prefix", "tenant_id", "name", "admin", "rpm", "tpm", "revoked"])


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (key_...)"),
                url: str = UrlOpt, admin_key: Optional[str] = AdminKeyOpt) -> None:
    """Revoke a key (every gateway process stops accepting it within a few seconds)."""
    _call("POST", url, admin_key, f"/admin/keys/{key_id}/revoke")
    typer.echo(f"Revoked {key_id}")


# -- providers ----------------------------------------------------------------------
def _read_secret(value: Optional[str]) -> str:
    if value:
        return value
    if not sys.stdin.isatty():
        return sys.stdin.read().strip()
    return typer.prompt("Secret value", hide_input=True).strip()


@providers_app.command("set")
def providers_set(name: str = typer.Argument(..., help="Provider (deployment) name, e.g. openai"),
                  tenant: Optional[str] = typer.Option(None, "--tenant", "-t", help="Per tenant; omit for global"),
                  value: Optional[str] = typer.Option(None, "--value",
                                                      help="The secret (visible to `ps`: prefer stdin or the prompt)"),
                  url: str = UrlOpt, admin_key: Optional[str] = AdminKeyOpt) -> None:
    """Store a provider credential, read from stdin or a hidden prompt."""
    secret = _read_secret(value)
    if not secret:
        _fail("empty secret value")
    body = _call("PUT", url, admin_key, f"/admin/providers/{name}", json={"value": secret, "tenant_id": tenant})
    scope = f"tenant {tenant}" if tenant else "global"
    typer.echo(f"Stored {name} ({scope}), ending ...{body.get('last4') or '****'}")


@providers_app.command("list")
def providers_list(tenant: Optional[str] = typer.Option(None, "--tenant", "-t",
                                                        help="The tenant's and global ones; omit for all"),
                   as_json: bool = JsonOpt, url: str = UrlOpt, admin_key: Optional[str] = AdminKeyOpt) -> None:
    """List stored credentials: name and last 4 characters only."""
    body = _call("GET", url, admin_key, "/admin/providers", params={"tenant_id": tenant} if tenant else None)
    rows = [r | {"tenant_id": r["tenant_id"] or "(global)", "last4": f"...{r['last4']}" if r["last4"] else "****"}
            for r in body["data"]]
    _print(body, as_json, rows, ["name", "tenant_id", "last4", "updated_at"])


@providers_app.command("delete")
def providers_delete(name: str = typer.Argument(...),
                     tenant: Optional[str] = typer.Option(None, "--tenant", "-t", help="Omit for the global one"),
                     url: str = UrlOpt, admin_key: Optional[str] = AdminKeyOpt) -> None:
    """Delete a stored credential."""
    _call("DELETE", url, admin_key, f"/admin/providers/{name}", params={"tenant_id": tenant} if tenant else None)
    typer.echo(f"Deleted {name}")


# -- tenants ------------------------------------------------------------------------
@tenants_app.command("create")
def tenants_create(tenant_id: str = typer.Argument(..., help="Slug: a-z 0-9 _ . -"),
                   name: Optional[str] = typer.Option(None, "--name"),
                   credits: Optional[float] = typer.Option(None, "--credits", help="Balance in USD; omit for unlimited"),
                   url: str = UrlOpt, admin_key: Optional[str] = AdminKeyOpt) -> None:
    """Create a tenant."""
    _call("POST", url, admin_key, "/admin/tenants", json={"id": tenant_id, "name": name, "credits": credits})
    typer.echo(f"Created tenant {tenant_id}")


@tenants_app.command("list")
def tenants_list(as_json: bool = JsonOpt, url: str = UrlOpt, admin_key: Optional[str] = AdminKeyOpt) -> None:
    """List tenants with their credits."""
    body = _call("GET", url, admin_key, "/admin/tenants")
    rows = [t | {k: ("unlimited" if v is None and k in ("balance", "available") else v)
                 for k, v in t["credits"].items()} for t in body["data"]]
    _print(body, as_json, rows, ["id", "name", "balance", "reserved", "available", "spent"])


@tenants_app.command("credits")
def tenants_credits(tenant_id: str = typer.Argument(...),
                    set_: Optional[float] = typer.Option(None, "--set", help="Set the balance (USD)"),
                    add: Optional[float] = typer.Option(None, "--add", help="Add to the balance (USD)"),
                    unlimited: bool = typer.Option(False, "--unlimited", help="No limit"),
                    url: str = UrlOpt, admin_key: Optional[str] = AdminKeyOpt) -> None:
    """Show, set or top up a tenant's credits."""
    if [set_ is not None, add is not None, unlimited].count(True) > 1:
        _fail("give at most one of --set, --add, --unlimited")
    if set_ is not None or unlimited:
        body = _call("PUT", url, admin_key, f"/admin/tenants/{tenant_id}/credits", json={"balance": set_})
    elif add is not None:
        body = _call("POST", url, admin_key, f"/admin/tenants/{tenant_id}/credits", json={"amount": add})
    else:
        body = _call("GET", url, admin_key, f"/admin/tenants/{tenant_id}")["credits"]
    typer.echo(json.dumps(body, indent=2))
