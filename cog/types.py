from cogkit.sdk.types import *  # noqa: F403
from cogkit.sdk.types import (  # noqa: F401
    AsyncConcatenateIterator, BaseModel, ConcatenateIterator, File, Input, Path, Secret, URLPath,
)
