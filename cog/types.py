"""`cog.types`, as older projects import it."""
from cogkit.sdk.types import (  # noqa: F401
    AsyncConcatenateIterator, BaseModel, CancelationException, ConcatenateIterator, FieldInfo, File, Input, Opaque,
    Path, Secret, URLFile, URLPath, Weights,
)
