"""`cog.types`, as older projects import it: the names of cogkit.sdk.types."""
from cogkit.sdk.types import *  # noqa: F403
from cogkit.sdk.types import __all__  # noqa: F401
