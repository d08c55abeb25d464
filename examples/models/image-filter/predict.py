from cog import BasePredictor, Input, Path
from PIL import Image, ImageFilter, ImageOps


class Predictor(BasePredictor):
    def predict(
        self,
        image: Path = Input(description="Image to transform", accept="image/*"),
        mode: str = Input(description="What to do", default="grayscale", choices=["grayscale", "blur", "invert"]),
        size: int = Input(description="Longest side of the result, in pixels", default=256, ge=16, le=2048),
    ) -> Path:
        img = Image.open(image).convert("RGB")
        img.thumbnail((size, size))
        if mode == "grayscale":
            img = ImageOps.grayscale(img)
        elif mode == "blur":
            img = img.filter(ImageFilter.GaussianBlur(2))
        else:
            img = ImageOps.invert(img)
        out = Path("/tmp/output.png")
        img.save(out)
        return out
