"""Model images: the Dockerfile (`dockerfile`), the build itself (`builder`),
the CUDA base image table (`cuda`), and pushing / registering (`registry`)."""
from cogkit.build.builder import (BaseImageMissing, BuildError, BuildResult, EngineUnavailable, StepFailed, build,
                                  connect)

__all__ = ["build", "connect", "BuildResult", "BuildError", "EngineUnavailable", "BaseImageMissing", "StepFailed"]
