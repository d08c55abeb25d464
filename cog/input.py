"""`cog.input`."""
from cogkit.sdk.types import FieldInfo, Input  # noqa: F401
