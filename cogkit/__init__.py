"""cogkit: the predictor SDK at the top level (so `from cogkit import BasePredictor`
works like `from cog import ...`), and the gateway client on first use."""
from typing import Any

from cogkit.sdk import *  # noqa: F403
from cogkit.sdk import __all__ as _sdk_all

__version__ = "0.1.0"
__all__ = [*_sdk_all, "Client", "AsyncClient"]


def __getattr__(name: str) -> Any:
    # The client pulls in httpx; the SDK must stay importable without it.
    if name in ("Client", "AsyncClient"):
        from cogkit import client

        return getattr(client, name)
    raise AttributeError(name)
