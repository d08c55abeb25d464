"""Model strings -> the deployments that can serve them, with their prices.

A model string is a catalog name or alias (`gpt-4o-mini`, `openai/gpt-4o-mini`), a
`provider/model` pair for a provider configured with `passthrough: true`, or
`@namespace/model[:version]` for platform-hosted models. Anything else is an
UnknownModel carrying the closest names, for a helpful 404.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from server.config import GatewayConfig, ModelConfig

PER_MILLION = 1_000_000


class UnknownModel(Exception):
    def __init__(self, model: str, suggestions: list[str]) -> None:
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown model {model!r}{hint}")
        self.model, self.suggestions = model, suggestions


@dataclass(frozen=True)
class Target:
    """One deployment: who serves it, under which upstream name, at what price per token."""
    provider: str
    upstream_model: str
    priority: int = 0
    input_price: float = 0.0
    output_price: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.upstream_model}"

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens * self.input_price + output_tokens * self.output_price


@dataclass(frozen=True)
class Resolved:
    name: str                                # the catalog name (or the model string itself)
    targets: tuple[Target, ...]
    kind: str = "chat"
    context_window: int | None = None
    context_fallback: str | None = None
    version: str | None = None               # `:version` of a platform model string
    aliases: tuple[str, ...] = field(default_factory=tuple)


class Catalog:
    def __init__(self, config: GatewayConfig) -> None:
        self.providers = {p.name: p for p in config.providers}
        self.models: dict[str, ModelConfig] = {}
        self._index: dict[str, ModelConfig] = {}
        for m in config.models:
            self.models[m.name] = m
            for name in (m.name, *m.aliases):
                self._index[name] = m
        self._resolved = {name: self._from_model(m) for name, m in self._index.items()}

    def resolve(self, model_string: str) -> Resolved:
        hit = self._resolved.get(model_string)
        if hit is not None:
            return hit
        if model_string.startswith("@"):
            base, _, version = model_string.partition(":")
            hit = self._resolved.get(base)
            if hit is not None and version:
                targets = tuple(Target(t.provider, f"{t.upstream_model}:{version}", t.priority, t.input_price,
                                       t.output_price) for t in hit.targets)
                return Resolved(hit.name, targets, hit.kind, hit.context_window, hit.context_fallback, version)
            platform = [p for p in self.providers.values() if p.kind == "platform" and p.passthrough]
            if platform:
                return Resolved(model_string, (Target(platform[0].name, model_string[1:]),), "platform",
                                version=version or None)
        prefix, sep, rest = model_string.partition("/")
        provider = self.providers.get(prefix)
        if sep and rest and provider is not None and provider.passthrough:
            priced = self._priced_target(prefix, rest)
            kind = "platform" if provider.kind == "platform" else "chat"
            return Resolved(model_string, (priced or Target(prefix, rest),), kind)
        raise UnknownModel(model_string, self.suggest(model_string))

    def suggest(self, model_string: str) -> list[str]:
        names = list(self._index)
        close = difflib.get_close_matches(model_string, names, n=5, cutoff=0.4)
        if not close:   # `openai/gpt-4o-mini` vs `gpt-4o-mini`: compare the part after the provider too
            tail = model_string.rsplit("/", 1)[-1]
            close = difflib.get_close_matches(tail, names, n=5, cutoff=0.4)
        return close

    def listing(self) -> list[dict]:
        """GET /v1/models: OpenAI's shape, plus what a caller needs to choose a model."""
        out = []
        for m in self.models.values():
            r = self._resolved[m.name]
            out.append({
                "id": m.name, "object": "model", "created": 0,
                "owned_by": r.targets[0].provider if r.targets else "cogkit",
                "aliases": list(m.aliases), "kind": r.kind, "context_window": m.context_window,
                "pricing": {"input_per_million": m.input_price, "output_per_million": m.output_price},
                "providers": [t.provider for t in r.targets], "description": m.description,
            })
        return out

    def _priced_target(self, provider: str, upstream: str) -> Target | None:
        for r in self._resolved.values():
            for t in r.targets:
                if t.provider == provider and t.upstream_model == upstream:
                    return t
        return None

    def _from_model(self, m: ModelConfig) -> Resolved:
        deployments = list(m.deployments)
        if not deployments:   # `name: openai/gpt-4o` alone means "served by provider openai"
            prefix = m.name.lstrip("@").split("/", 1)[0]
            if prefix in self.providers:
                from server.config import Deployment
                deployments = [Deployment(provider=prefix)]
        targets = []
        for d in sorted(deployments, key=lambda d: d.priority):
            upstream = d.model or _default_upstream(m.name, d.provider)
            targets.append(Target(
                d.provider, upstream, d.priority,
                (d.input_price if d.input_price is not None else m.input_price) / PER_MILLION,
                (d.output_price if d.output_price is not None else m.output_price) / PER_MILLION))
        kinds = {self.providers[t.provider].kind for t in targets}
        kind = m.kind or ("platform" if kinds == {"platform"} else "chat")
        return Resolved(m.name, tuple(targets), kind, m.context_window, m.context_fallback,
                        aliases=tuple(m.aliases))


def _default_upstream(name: str, provider: str) -> str:
    name = name.lstrip("@")
    return name[len(provider) + 1:] if name.startswith(provider + "/") else name
