import json
import os

from cog import BasePredictor, Input, Path


class Predictor(BasePredictor):
    def setup(self, weights: Path | None = None) -> None:
        # Weights come from COG_WEIGHTS (the output of train), or none at all.
        self.counts = json.loads(Path(weights).read_text()) if weights and os.path.exists(weights) else {}

    def predict(self, word: str = Input(description="Word to look up")) -> int:
        return self.counts.get(word.lower(), 0)
