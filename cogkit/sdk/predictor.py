"""The classes a model author subclasses. Both Cog generations are supported:
BasePredictor.predict() and the newer BaseRunner.run()."""
from __future__ import annotations

from typing import Any


class BasePredictor:
    def setup(self, weights: Any = None) -> None:  # noqa: B027 - optional hook
        """Load the model once, before any prediction. `weights` comes from COG_WEIGHTS."""

    def predict(self, **kwargs: Any) -> Any:
        raise NotImplementedError("predict() must be implemented")

    # healthcheck() is optional: define it to report UNHEALTHY when it returns False.


class BaseRunner(BasePredictor):
    def run(self, **kwargs: Any) -> Any:
        raise NotImplementedError("run() must be implemented")


def entry_method(predictor: Any, mode: str = "predict") -> Any:
    """The bound method that runs one prediction (or training) on a predictor object."""
    if mode == "train" and hasattr(predictor, "train"):
        return predictor.train
    if isinstance(predictor, BaseRunner) or (hasattr(predictor, "run") and not _overrides_predict(predictor)):
        return predictor.run
    return predictor.predict


def _overrides_predict(obj: Any) -> bool:
    return type(obj).predict is not BasePredictor.predict if isinstance(obj, BasePredictor) else hasattr(obj, "predict")
