import json

from cog import BaseModel, Input, Path


class TrainingOutput(BaseModel):
    weights: Path
    vocabulary_size: int


def train(
    corpus: str = Input(description="Training text; the model learns its word counts"),
    min_count: int = Input(description="Drop words seen fewer times", default=1, ge=1),
) -> TrainingOutput:
    counts: dict[str, int] = {}
    for word in corpus.lower().split():
        counts[word] = counts.get(word, 0) + 1
    counts = {w: c for w, c in counts.items() if c >= min_count}
    print(f"learned {len(counts)} words")
    out = Path("/tmp/weights.json")
    out.write_text(json.dumps(counts))
    return TrainingOutput(weights=out, vocabulary_size=len(counts))
