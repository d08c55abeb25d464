"""`cog.predictor`."""
from cogkit.sdk.predictor import BasePredictor, BaseRunner  # noqa: F401
