"""`cog.model`."""
from cogkit.sdk.types import BaseModel  # noqa: F401
