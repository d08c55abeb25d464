"""One class per upstream kind, all behind the Provider interface (see base.py)."""
from __future__ import annotations

from server.config import ProviderConfig, Timeouts
from server.providers.anthropic import AnthropicProvider
from server.providers.base import KeySource, Provider, Unsupported, UpstreamError
from server.providers.google import GoogleProvider
from server.providers.openai_compat import OpenAICompatProvider
from server.providers.platform import PlatformProvider

KINDS: dict[str, type[Provider]] = {
    "openai": OpenAICompatProvider, "anthropic": AnthropicProvider,
    "google": GoogleProvider, "platform": PlatformProvider,
}


def make_provider(cfg: ProviderConfig, timeouts: Timeouts, key_source: KeySource | None = None) -> Provider:
    return KINDS[cfg.kind](cfg, timeouts, key_source)


__all__ = ["Provider", "UpstreamError", "Unsupported", "make_provider", "KINDS"]
