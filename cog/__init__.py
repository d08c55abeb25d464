"""Compatibility package: existing Cog projects import `cog` unchanged."""
from cogkit.sdk import *  # noqa: F403
from cogkit.sdk import __all__  # noqa: F401
