import time

from cog import BasePredictor, ConcatenateIterator, Input, emit_metric, streaming


class Predictor(BasePredictor):
    @streaming  # lets clients ask for server-sent events (Accept: text/event-stream), as Cog requires
    def predict(
        self,
        prompt: str = Input(description="Text to echo back, word by word", min_length=1),
        max_tokens: int = Input(description="Words to emit at most", default=32, ge=1, le=512),
        delay: float = Input(description="Seconds between words", default=0.0, ge=0, le=5),
    ) -> ConcatenateIterator[str]:
        words = prompt.split()[:max_tokens]
        for i, word in enumerate(words):
            if delay:
                time.sleep(delay)
            yield word if i == 0 else " " + word
        emit_metric("output_tokens", len(words))
