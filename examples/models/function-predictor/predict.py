from cog import Input


def run(
    numbers: list[int] = Input(description="Numbers to add up"),
    scale: float = Input(description="Multiply the sum by this", default=1.0),
) -> float:
    return sum(numbers) * scale
