"""The gateway's configuration file (YAML), validated once at start.

Everything has a default, so `cogkit gateway` with no file serves an empty catalog on a
SQLite file. Models may be listed inline (`models:`) or in a separate catalog file
(`catalog: path.yaml`), which is the same list.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.platform.config import PlatformConfig


class ConfigError(Exception):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timeouts(_Strict):
    """Seconds. ttft: request sent -> first token; idle: between two stream events."""
    connect: float = 5.0
    ttft: float = 30.0
    idle: float = 30.0
    total: float = 600.0

    def merged(self, override: "Timeouts | None") -> "Timeouts":
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_unset=True))


class ProviderConfig(_Strict):
    name: str
    kind: Literal["openai", "anthropic", "google", "platform"]
    base_url: str
    api_key: str | None = None
    api_key_secret: str | None = None       # name of a secret stored encrypted (cogkit admin secrets)
    api_key_env: str | None = None          # or read from this environment variable
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts | None = None
    max_connections: int = 512             # keep-alive connections to this provider, at most
    passthrough: bool = False               # accept `name/<any model>` not listed in the catalog
    accepts_metadata: bool = False          # forward the caller's `metadata` upstream
    anthropic_version: str = "2023-06-01"


class Deployment(_Strict):
    provider: str
    model: str | None = None                # upstream model name; default: the catalog name minus "provider/"
    priority: int = 0                       # lower first
    input_price: float | None = None        # USD per 1M tokens, overrides the model's
    output_price: float | None = None


class ModelConfig(_Strict):
    name: str
    aliases: list[str] = Field(default_factory=list)
    deployments: list[Deployment] = Field(default_factory=list)
    input_price: float = 0.0                # USD per 1M input tokens
    output_price: float = 0.0               # USD per 1M output tokens
    context_window: int | None = None
    context_fallback: str | None = None     # model to use when a prompt exceeds this one's window
    kind: Literal["chat", "embedding", "completion", "platform"] | None = None
    description: str = ""


class RoutingConfig(_Strict):
    strategy: Literal["priority", "latency"] = "priority"
    max_attempts: int = 3                   # the failover budget: deployments tried per request
    retry_after_cap: float = 2.0            # seconds we wait at most for a 429's Retry-After
    cooldown_failures: int = 1              # consecutive failures that open a deployment's breaker
    cooldown: float = 30.0                  # seconds skipped; doubled per failed re-probe
    cooldown_max: float = 300.0


class StreamsConfig(_Strict):
    retention: float = 3600.0               # seconds a finished stream can still be resumed
    max_events: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    flush_interval: float = 0.1             # seconds between batched writes to the store
    poll_interval: float = 0.1              # how often a replica without the stream looks for new events
    memory_retention: float = 30.0          # seconds a finished stream stays in memory (then: the store)
    # Bytes of finished streams kept in memory, all together (Buffer.footprint: events and their
    # overhead); past it the oldest leave early. Bounded by bytes, not by time alone: under load, 30 s of
    # finished streams grew the gateway by hundreds of MiB (the soak in benchmarks/gateway_vs_litellm.py).
    memory_max_bytes: int = Field(32 * 1024 * 1024, ge=0)
    # Seconds a running stream's row may go without a heartbeat before its process is taken for dead and
    # the stream is settled by another gateway on the store (server/recovery.py); heartbeats every lease/3.
    lease: float = Field(10.0, gt=0)


class LimitsConfig(_Strict):
    """What one request may carry; past these the gateway answers 413 naming the limit, before any
    upstream sees the request. Defaults: what the big APIs accept (Anthropic: 32 MB per request)."""
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1)   # a request body, as sent
    max_json_depth: int = Field(default=64, ge=2)                  # nesting of a JSON body (a 400 past it)
    max_name_chars: int = Field(default=256, ge=1)                 # names and ids: tenants, keys, secrets
    max_file_bytes: int = Field(default=20 * 1024 * 1024, ge=1)    # one file input (a data: URL) to /ai/run


class CacheConfig(_Strict):
    enabled: bool = False                   # exact-match, non-streaming responses only
    ttl: float = 300.0
    max_entries: int = 10_000


class LoggingConfig(_Strict):
    level: str = "INFO"
    log_prompts: bool = False               # include request/response bodies in logs
    access_log: bool = False                # uvicorn's own access log


class GatewayConfig(_Strict):
    database_url: str | None = None         # default: sqlite file under the state dir
    redis_url: str | None = None
    state_dir: str | None = None            # where the default SQLite file goes (default: ~/.cogkit)
    master_key: str | None = None           # encrypts provider secrets; default: COGKIT_MASTER_KEY or a key file
    providers: list[ProviderConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)
    catalog: str | None = None              # a YAML file with more `models`
    timeouts: Timeouts = Field(default_factory=Timeouts)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    streams: StreamsConfig = Field(default_factory=StreamsConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    # Seconds a validated key is trusted without the store: how long a key revoked on another replica
    # may still work here (on the replica that revoked it, it stops at once).
    auth_cache_ttl: float = Field(5.0, ge=0)
    default_tenant: str = "default"
    platform: PlatformConfig | None = None  # run pushed models' replicas (server/platform)
    # Seconds a stored Responses API conversation can be continued (previous_response_id); OpenAI's: 30 days.
    conversation_retention: float = Field(30 * 86400.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "GatewayConfig":
        names = [p.name for p in self.providers]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"provider names must be unique: {', '.join(sorted(dupes))}")
        for m in self.models:
            for d in m.deployments:
                if d.provider not in names:
                    raise ValueError(f"model {m.name!r}: unknown provider {d.provider!r} (have: {', '.join(names)})")
        return self

    def db_url(self) -> str | None:
        """None: the store's default (~/.cogkit/gateway.db, or under $COGKIT_HOME)."""
        if self.database_url or os.environ.get("COGKIT_DATABASE_URL"):
            return self.database_url or os.environ["COGKIT_DATABASE_URL"]
        if self.state_dir:
            Path(self.state_dir).mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{Path(self.state_dir) / 'gateway.db'}"
        return None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e


def _expand_env(value: Any) -> Any:
    """`${VAR}` in strings, so keys can stay out of the file."""
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value


# The embedded default, used when no config file is given: the three official APIs,
# keys (and base URLs, as their SDKs read them) from the usual environment variables,
# any model name passed through, so `openai/gpt-4o-mini` works with only
# OPENAI_API_KEY set, as with LiteLLM.
def default_providers() -> list[dict[str, Any]]:
    official = [("openai", "https://api.openai.com/v1", "OPENAI"),
                ("anthropic", "https://api.anthropic.com", "ANTHROPIC"),
                ("google", "https://generativelanguage.googleapis.com/v1beta", "GEMINI")]
    return [{"name": kind, "kind": kind, "base_url": os.environ.get(f"{env}_BASE_URL", url),
             "api_key_env": f"{env}_API_KEY", "passthrough": True} for kind, url, env in official]


def load_config(path: Path | None = None, data: dict | None = None) -> GatewayConfig:
    raw: dict = dict(data) if data is not None else {"providers": default_providers()}
    base = Path.cwd()
    if path is not None:
        raw = _read_yaml(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        base = path.resolve().parent
    raw = _expand_env(raw)
    if raw.get("catalog"):
        catalog_path = Path(raw["catalog"])
        catalog_path = catalog_path if catalog_path.is_absolute() else base / catalog_path
        extra = _read_yaml(catalog_path)
        extra_models = extra.get("models", []) if isinstance(extra, dict) else extra
        raw["models"] = list(raw.get("models") or []) + list(extra_models or [])
    if raw.get("state_dir") and not Path(raw["state_dir"]).is_absolute():
        raw["state_dir"] = str(base / raw["state_dir"])
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"invalid gateway config{f' {path}' if path else ''}:\n" + "\n".join(lines)) from e
