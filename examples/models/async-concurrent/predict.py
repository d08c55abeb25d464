import asyncio

from cog import AsyncConcatenateIterator, BasePredictor, Input, current_scope, streaming


class Predictor(BasePredictor):
    async def setup(self) -> None:
        self.prefix = ">"

    @streaming  # lets clients ask for server-sent events (Accept: text/event-stream), as Cog requires
    async def predict(
        self,
        text: str = Input(description="Text to stream back"),
        delay: float = Input(description="Seconds between pieces", default=0.05, ge=0, le=10),
    ) -> AsyncConcatenateIterator[str]:
        scope = current_scope()
        for i, ch in enumerate(text):
            await asyncio.sleep(delay)
            scope.record_metric("chars", 1, mode="incr")
            yield (self.prefix if i == 0 else "") + ch
