from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def setup(self) -> None:
        self.greeting = "hello"

    def predict(self, name: str = Input(description="Who to greet", default="world")) -> str:
        print(f"greeting {name}")
        return f"{self.greeting} {name}"
