import json
import sys
import textwrap

import pytest

from cogkit.inputs import file_fields, input_schema
from cogkit.schema import SchemaError, build_openapi

HEADER = """\
from typing import Any, List, Optional
from cog import BasePredictor, BaseRunner, BaseModel, File, Input, Path, Secret, URLPath
"""


def project(tmp_path, body, name="predict.py", header=HEADER):
    (tmp_path / name).write_text(header + textwrap.dedent(body))
    return tmp_path


def openapi(tmp_path, body, ref="predict.py:Predictor", train_ref=None, header=HEADER):
    doc = build_openapi(project(tmp_path, body, header=header), ref, train_ref)
    json.dumps(doc)  # always serializable
    return doc


def components(tmp_path, body, **kw):
    return openapi(tmp_path, body, **kw)["components"]["schemas"]


def inputs(tmp_path, body, **kw):
    return components(tmp_path, body, **kw)["Input"]


def output(tmp_path, ret, extra="", header=HEADER):
    body = extra + f"""
class Predictor(BasePredictor):
    def predict(self) -> {ret}:
        ...
"""
    return components(tmp_path, body, header=header)["Output"]


def error(tmp_path, body, ref="predict.py:Predictor", train_ref=None, header=HEADER):
    with pytest.raises(SchemaError) as e:
        build_openapi(project(tmp_path, body, header=header), ref, train_ref)
    return str(e.value)


def test_document_shape(tmp_path):
    doc = openapi(tmp_path, """
        class Predictor(BasePredictor):
            def setup(self, weights=None):
                pass
            def predict(self, prompt: str) -> str:
                return prompt
    """)
    assert doc["openapi"] == "3.0.2"
    assert doc["info"] == {"title": "Cog", "version": "0.1.0"}
    assert set(doc["paths"]) == {"/", "/health-check", "/predictions", "/predictions/{prediction_id}",
                                 "/predictions/{prediction_id}/cancel", "/shutdown"}
    post = doc["paths"]["/predictions"]["post"]
    assert post["operationId"] == "predict_predictions_post"
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictionRequest"}
    assert "422" in post["responses"]
    put = doc["paths"]["/predictions/{prediction_id}"]["put"]
    assert put["parameters"][0]["name"] == "prediction_id"
    assert "post" in doc["paths"]["/predictions/{prediction_id}/cancel"]
    schemas = doc["components"]["schemas"]
    assert {"Input", "Output", "PredictionRequest", "PredictionResponse", "Status", "WebhookEvent",
            "ValidationError", "HTTPValidationError"} <= set(schemas)
    assert not any(k.startswith("Training") for k in schemas)
    assert schemas["Status"]["enum"] == ["starting", "processing", "succeeded", "canceled", "failed"]
    assert schemas["WebhookEvent"]["enum"] == ["start", "output", "logs", "completed"]
    assert schemas["ValidationError"]["required"] == ["loc", "msg", "type"]
    assert schemas["PredictionRequest"]["properties"]["input"]["$ref"] == "#/components/schemas/Input"
    assert schemas["PredictionResponse"]["properties"]["output"] == {"$ref": "#/components/schemas/Output"}
    assert schemas["Input"] == {"title": "Input", "type": "object", "required": ["prompt"], "properties": {
        "prompt": {"title": "Prompt", "type": "string", "x-order": 0}}}
    assert schemas["Output"] == {"title": "Output", "type": "string"}


def test_primitives_titles_order_required(tmp_path):
    schema = inputs(tmp_path, """
        class Predictor(BasePredictor):
            def predict(self, text: str, num_outputs: int, guidance_scale: float, flag: bool = True) -> str: ...
    """)
    props = schema["properties"]
    assert props["text"] == {"title": "Text", "type": "string", "x-order": 0}
    assert props["num_outputs"] == {"title": "Num Outputs", "type": "integer", "x-order": 1}
    assert props["guidance_scale"] == {"title": "Guidance Scale", "type": "number", "x-order": 2}
    assert props["flag"] == {"title": "Flag", "type": "boolean", "default": True, "x-order": 3}
    assert schema["required"] == ["text", "num_outputs", "guidance_scale"]


def test_input_constraints(tmp_path):
    props = inputs(tmp_path, """
        class Predictor(BasePredictor):
            def predict(
                self,
                steps: int = Input(description="Steps", ge=1, le=500, default=50),
                scale: float = Input(7.5, ge=-2.5, le=20.0),
                name: str = Input(default="x", min_length=1, max_length=10, regex="^[a-z]+$"),
                old: str = Input(default="", deprecated=True, accept="text/*"),
                neg: int = -3,
            ) -> str: ...
    """)["properties"]
    assert props["steps"] == {"title": "Steps", "type": "integer", "default": 50, "x-order": 0,
                              "description": "Steps", "minimum": 1, "maximum": 500}
    assert props["scale"] == {"title": "Scale", "type": "number", "default": 7.5, "x-order": 1,
                              "minimum": -2.5, "maximum": 20.0}
    assert props["name"]["minLength"] == 1 and props["name"]["maxLength"] == 10
    assert props["name"]["pattern"] == "^[a-z]+$"
    assert props["old"]["deprecated"] is True and props["old"]["default"] == ""
    assert props["neg"]["default"] == -3


def test_file_and_secret_types(tmp_path):
    props = inputs(tmp_path, """
        import pathlib
        class Predictor(BasePredictor):
            def predict(self, image: Path, doc: File, url: URLPath, local: pathlib.Path,
                        token: Secret, key: Secret = Input(default=Secret("hunter2"))) -> str: ...
    """)["properties"]
    for name in ("image", "doc", "url", "local"):
        assert props[name]["type"] == "string" and props[name]["format"] == "uri"
    assert props["token"] == {"title": "Token", "type": "string", "format": "password", "writeOnly": True,
                              "x-cog-secret": True, "x-order": 4}
    assert props["key"]["default"] == "**********"  # never the secret itself


def test_collections_and_any(tmp_path):
    props = inputs(tmp_path, """
        from typing import Dict
        class Predictor(BasePredictor):
            def predict(self, a: list[str], b: List[int] = [1, 2], c: list[Path] = None, d: dict = {},
                        e: dict[str, Any] = None, f: Dict[str, int] = None, g: Any = None, h: list = []) -> str: ...
    """)["properties"]
    assert props["a"]["type"] == "array" and props["a"]["items"] == {"type": "string"}
    assert props["b"]["items"] == {"type": "integer"} and props["b"]["default"] == [1, 2]
    assert props["c"]["items"] == {"type": "string", "format": "uri"}
    assert props["d"]["type"] == "object" and props["d"]["default"] == {}
    assert props["e"]["type"] == "object" and props["f"]["type"] == "object"
    # Cog: a None default on a type that is not Optional is no default at all (the input is required).
    assert props["g"] == {"title": "G", "x-order": 6}
    assert props["f"]["additionalProperties"] == {"type": "integer"} and "additionalProperties" not in props["e"]
    assert props["h"]["items"] == {}


def test_optional_forms_are_nullable_and_not_required(tmp_path):
    schema = inputs(tmp_path, """
        import typing
        class Predictor(BasePredictor):
            def predict(self, a: Optional[str], b: int | None = Input(description="b"), c: "Optional[float]" = None,
                        d: typing.Optional[Path] = None, e: str = None, f: None | int = 3) -> str: ...
    """, header="from __future__ import annotations\n" + HEADER)
    props = schema["properties"]
    for name in "abcdf":
        assert props[name]["nullable"] is True, name
    assert "default" not in props["a"] and "default" not in props["b"]
    assert props["c"]["default"] is None and props["d"]["default"] is None  # Cog writes `"default": null`
    assert props["a"]["type"] == "string" and props["b"]["type"] == "integer"
    assert props["c"]["type"] == "number" and props["d"]["format"] == "uri"
    assert props["f"]["default"] == 3
    # `e: str = None` is not Optional: Cog takes the None for "no default", so it is required.
    assert "nullable" not in props["e"] and "default" not in props["e"]
    assert schema["required"] == ["e"]


def test_choices(tmp_path):
    schemas = components(tmp_path, """
        SCHEDULERS = ["DDIM", "K_EULER"]
        class Predictor(BasePredictor):
            def predict(self, scheduler: str = Input(default="DDIM", choices=SCHEDULERS, description="Which"),
                        width: int = Input(choices=[512, 768]),
                        Status: str = Input(default="a", choices=["a", "b"])) -> str: ...
    """)
    props = schemas["Input"]["properties"]
    assert props["scheduler"] == {"allOf": [{"$ref": "#/components/schemas/scheduler"}], "default": "DDIM",
                                  "x-order": 0, "description": "Which"}
    assert schemas["scheduler"] == {"type": "string", "enum": ["DDIM", "K_EULER"], "title": "scheduler",
                                    "description": "An enumeration."}
    assert schemas["width"]["type"] == "integer" and schemas["width"]["enum"] == [512, 768]
    assert schemas["Input"]["required"] == ["width"]
    # a parameter named like a fixed component doesn't overwrite it
    assert schemas["Status"]["enum"][0] == "starting"
    assert props["Status"]["allOf"] == [{"$ref": "#/components/schemas/Input_Status"}]


def test_choices_errors(tmp_path):
    msg = error(tmp_path, """
        class Predictor(BasePredictor):
            def predict(self, n: int = Input(choices=["a", 1])) -> str: ...
    """)
    assert "'n'" in msg and "not a integer" in msg
    msg = error(tmp_path, """
        class Predictor(BasePredictor):
            def predict(self, flag: bool = Input(choices=[True, False])) -> str: ...
    """)
    assert "'flag'" in msg and "choices are only supported" in msg


def test_outputs_plain(tmp_path):
    assert output(tmp_path, "str") == {"title": "Output", "type": "string"}
    assert output(tmp_path, "int") == {"title": "Output", "type": "integer"}
    assert output(tmp_path, "Path") == {"title": "Output", "type": "string", "format": "uri"}
    assert output(tmp_path, "list[Path]") == {"title": "Output", "type": "array",
                                               "items": {"type": "string", "format": "uri"}}
    assert output(tmp_path, "List[str]")["items"] == {"type": "string"}
    assert output(tmp_path, "Any") == {"title": "Output"}
    assert output(tmp_path, "dict") == {"title": "Output", "type": "object"}
    assert output(tmp_path, "Secret")["x-cog-secret"] is True


def test_outputs_iterators(tmp_path):
    header = HEADER + "from cog import ConcatenateIterator, AsyncConcatenateIterator\n"
    it = {"title": "Output", "type": "array", "items": {"type": "string"}, "x-cog-array-type": "iterator"}
    assert output(tmp_path, "Iterator[str]", header=header + "from typing import Iterator\n") == it
    assert output(tmp_path, "Iterator[str]", header=header + "from collections.abc import Iterator\n") == it
    assert output(tmp_path, "collections.abc.AsyncIterator[str]", header=header + "import collections.abc\n") == it
    assert output(tmp_path, "Iterator[Path]", header=header + "from cog import Iterator\n")["items"] == {
        "type": "string", "format": "uri"}
    concat = {**it, "x-cog-array-display": "concatenate"}
    assert output(tmp_path, "ConcatenateIterator[str]", header=header) == concat
    assert output(tmp_path, "AsyncConcatenateIterator[str]", header=header) == concat


def test_output_basemodel(tmp_path):
    out = output(tmp_path, "Output", extra="""
class Output(BaseModel):
    text: str
    image: Optional[Path]
    score: float = 0.5
    tags: list[str] = []
""")
    assert out == {"title": "Output", "type": "object", "required": ["text"], "properties": {
        "text": {"title": "Text", "type": "string"},
        "image": {"title": "Image", "type": "string", "format": "uri", "nullable": True},
        "score": {"title": "Score", "type": "number", "default": 0.5},
        "tags": {"title": "Tags", "type": "array", "items": {"type": "string"}, "default": []},
    }}


def test_output_pydantic_basemodel_nested_and_inherited(tmp_path):
    out = output(tmp_path, "list[Result]", header=HEADER + "import pydantic\n", extra="""
class Box(pydantic.BaseModel):
    x: int
class Base(pydantic.BaseModel):
    label: str
class Result(Base):
    boxes: list[Box]
""")
    item = out["items"]
    assert out["type"] == "array" and item["title"] == "Result"
    assert list(item["properties"]) == ["label", "boxes"]
    assert item["properties"]["boxes"]["items"]["properties"] == {"x": {"title": "X", "type": "integer"}}


def test_output_non_model_class_is_an_error(tmp_path):
    msg = error(tmp_path, """
        class Thing:
            pass
        class Predictor(BasePredictor):
            def predict(self) -> Thing: ...
    """)
    assert "Thing" in msg and "BaseModel" in msg


def test_function_predictors_sync_and_async(tmp_path):
    doc = openapi(tmp_path, """
        def run(prompt: str, n: int = 2) -> str:
            return prompt
    """, ref="predict.py:run")
    assert list(doc["components"]["schemas"]["Input"]["properties"]) == ["prompt", "n"]
    doc = openapi(tmp_path, """
        from typing import AsyncIterator
        async def predict(prompt: str = "hi") -> AsyncIterator[str]:
            yield prompt
    """, ref="predict.py:predict")
    assert doc["components"]["schemas"]["Input"]["properties"]["prompt"]["default"] == "hi"
    assert doc["components"]["schemas"]["Output"]["x-cog-array-type"] == "iterator"


def test_async_method_and_base_runner(tmp_path):
    props = inputs(tmp_path, """
        class Predictor(BaseRunner):
            def setup(self):
                pass
            async def run(self, x: int) -> int:
                return x
    """)["properties"]
    assert list(props) == ["x"]
    # a subclass of a local base class inherits its predict()
    props = inputs(tmp_path, """
        class Base(BasePredictor):
            def predict(self, a: str) -> str: ...
        class Predictor(Base):
            def setup(self): ...
    """)["properties"]
    assert list(props) == ["a"]


def test_import_styles(tmp_path):
    header = "import cog\nimport typing as t\nfrom cogkit import Input as In\n"
    props = inputs(tmp_path, """
        class Predictor(cog.BasePredictor):
            def predict(self, image: cog.Path, s: cog.Secret, xs: t.List[int] = In(default=[1]),
                        o: t.Optional[str] = None) -> t.Iterator[cog.Path]: ...
    """, header=header)["properties"]
    assert props["image"]["format"] == "uri" and props["s"]["format"] == "password"
    assert props["xs"]["default"] == [1] and props["o"]["nullable"] is True


def test_torch_is_never_imported(tmp_path):
    sys.modules.pop("torch", None)
    props = inputs(tmp_path, """
        import torch
        from diffusers import StableDiffusionPipeline
        DEVICE = torch.device("cuda")
        class Predictor(BasePredictor):
            def setup(self):
                self.pipe = StableDiffusionPipeline.from_pretrained("x").to(DEVICE)
            def predict(self, prompt: str) -> Path:
                return Path(self.pipe(prompt))
    """, header="import torch\n" + HEADER)["properties"]
    assert list(props) == ["prompt"]
    assert "torch" not in sys.modules and "diffusers" not in sys.modules


def test_module_constants_resolved(tmp_path):
    props = inputs(tmp_path, """
        MAX_STEPS = 100
        DEFAULT_PROMPT = "a cat"
        LOW = -1
        SIZES = [256, 512]
        class Predictor(BasePredictor):
            def predict(self, prompt: str = Input(default=DEFAULT_PROMPT),
                        steps: int = Input(default=10, ge=LOW, le=MAX_STEPS),
                        size: int = Input(default=256, choices=SIZES)) -> str: ...
    """)["properties"]
    assert props["prompt"]["default"] == "a cat"
    assert props["steps"]["minimum"] == -1 and props["steps"]["maximum"] == 100


def test_non_literal_input_argument_is_an_error(tmp_path):
    msg = error(tmp_path, """
        import os
        class Predictor(BasePredictor):
            def predict(self, steps: int = Input(default=int(os.environ["STEPS"]))) -> str: ...
    """)
    assert "predict.py:" in msg and "'steps'" in msg and "literal" in msg and "os.environ" in msg


def test_unsupported_type_error(tmp_path):
    msg = error(tmp_path, """
        import torch
        class Predictor(BasePredictor):
            def predict(self, t: torch.Tensor) -> str: ...
    """)
    assert "parameter 't'" in msg and "torch.Tensor" in msg and "supported input types" in msg
    assert "Predictor.predict()" in msg
    msg = error(tmp_path, """
        from typing import Union
        class Predictor(BasePredictor):
            def predict(self) -> Union[int, str]: ...
    """)
    assert "return type" in msg and "Optional" in msg  # an input may be a union (Cog's anyOf), an output not


def test_unions_typeddicts_and_opaque_as_cogs_generator_writes_them(tmp_path):
    body = """
        from typing import Annotated, NotRequired, TypedDict, Union
        from cog import Opaque
        class Payload(TypedDict):
            name: str
        class Result(TypedDict):
            name: str
            count: NotRequired[int]
        class Predictor(BasePredictor):
            def predict(self, value: str | float, maybe: Union[int, str, None] = None, data: Payload = None,
                        items: list[Payload] | None = None, blob: Annotated[object, Opaque] = None,
                        blobs: Annotated[List[object], Opaque] = None, note: Annotated[str, "doc"] = "x") -> Result: ...
    """
    doc = build_openapi(project(tmp_path, body), "predict.py:Predictor")
    schema = doc["components"]["schemas"]["Input"]
    props = schema["properties"]
    assert props["value"]["anyOf"] == [{"type": "string"}, {"type": "number"}] and "nullable" not in props["value"]
    assert props["maybe"]["anyOf"] == [{"type": "integer", "nullable": True}, {"type": "string", "nullable": True}]
    assert props["maybe"]["nullable"] is True and props["maybe"]["default"] is None
    assert props["data"]["type"] == "object" and "properties" not in props["data"]
    assert props["items"]["items"] == {"type": "object"} and props["items"]["nullable"] is True
    assert props["blob"]["type"] == "object" and props["blobs"] == {
        "title": "Blobs", "type": "array", "items": {"type": "object"}, "x-order": 5}
    assert props["note"]["type"] == "string" and props["note"]["default"] == "x"
    assert schema["required"] == ["value", "data", "blob", "blobs"]
    out = doc["components"]["schemas"]["Output"]
    assert out["properties"]["count"] == {"type": "integer", "title": "Count"}
    assert out["required"] == ["name"]


def test_missing_annotations_are_errors(tmp_path):
    msg = error(tmp_path, """
        class Predictor(BasePredictor):
            def predict(self, prompt) -> str: ...
    """)
    assert "'prompt'" in msg and "annotation" in msg
    msg = error(tmp_path, """
        class Predictor(BasePredictor):
            def predict(self, prompt: str):
                return prompt
    """)
    assert "return type" in msg and "Predictor.predict()" in msg
    msg = error(tmp_path, """
        class Predictor(BasePredictor):
            def predict(self, **kwargs) -> str: ...
    """)
    assert "**kwargs" in msg


def test_missing_file_class_method(tmp_path):
    project(tmp_path, """
        class Predictor(BasePredictor):
            def setup(self): ...
    """)
    with pytest.raises(SchemaError, match="nope.py.*not found"):
        build_openapi(tmp_path, "nope.py:Predictor")
    with pytest.raises(SchemaError, match="no class or function named 'Other'"):
        build_openapi(tmp_path, "predict.py:Other")
    with pytest.raises(SchemaError, match=r"class 'Predictor' has no predict\(\) or run\(\) method"):
        build_openapi(tmp_path, "predict.py:Predictor")
    with pytest.raises(SchemaError, match=r"has no train\(\) method"):
        build_openapi(tmp_path, None, "predict.py:Predictor")
    with pytest.raises(SchemaError, match="expected 'file.py:ClassOrFunction'"):
        build_openapi(tmp_path, "predict.py")
    (tmp_path / "bad.py").write_text("def predict(:\n")
    with pytest.raises(SchemaError, match="bad.py:1: syntax error"):
        build_openapi(tmp_path, "bad.py:predict")


def test_training(tmp_path):
    doc = openapi(tmp_path, """
        class Predictor(BasePredictor):
            def predict(self, mode: str = Input(default="a", choices=["a", "b"])) -> str: ...
        def train(data: Path, mode: str = Input(default="x", choices=["x", "y"]), epochs: int = 1) -> Path: ...
    """, train_ref="predict.py:train")
    schemas = doc["components"]["schemas"]
    assert {"/trainings", "/trainings/{training_id}", "/trainings/{training_id}/cancel"} <= set(doc["paths"])
    assert doc["paths"]["/trainings"]["post"]["operationId"] == "train_trainings_post"
    assert schemas["TrainingInput"]["title"] == "TrainingInput"
    assert schemas["TrainingInput"]["required"] == ["data"]
    assert schemas["TrainingOutput"] == {"title": "Output", "type": "string", "format": "uri"}  # as Cog titles it
    assert schemas["TrainingRequest"]["properties"]["input"]["$ref"] == "#/components/schemas/TrainingInput"
    assert schemas["TrainingResponse"]["properties"]["output"]["$ref"] == "#/components/schemas/TrainingOutput"
    # both entry points have a `mode` enum: the second one gets its own component
    assert schemas["mode"]["enum"] == ["a", "b"]
    assert schemas["TrainingInput_mode"]["enum"] == ["x", "y"]
    train_props, _ = input_schema(doc, "train")
    assert train_props["properties"]["mode"]["enum"] == ["x", "y"]


def test_train_method_and_train_only(tmp_path):
    doc = openapi(tmp_path, """
        class Trainer:
            def train(self, steps: int = 10) -> str: ...
    """, ref=None, train_ref="predict.py:Trainer")
    assert "/predictions" not in doc["paths"] and "Input" not in doc["components"]["schemas"]
    assert list(doc["components"]["schemas"]["TrainingInput"]["properties"]) == ["steps"]
    with pytest.raises(SchemaError, match="no Input component"):
        input_schema(doc)


def test_input_schema_and_file_fields(tmp_path):
    doc = openapi(tmp_path, """
        class Predictor(BasePredictor):
            def predict(self, image: Path, images: list[Path], maybe: Optional[File] = None, text: str = "",
                        size: int = Input(default=512, choices=[512, 768], description="px")) -> str: ...
    """)
    schema, comps = input_schema(doc)
    assert schema["properties"]["size"] == {"type": "integer", "enum": [512, 768], "default": 512,
                                            "x-order": 4, "description": "px"}
    assert "size" in comps and "allOf" in doc["components"]["schemas"]["Input"]["properties"]["size"]
    assert file_fields(doc) == {"image": "uri", "images": "uri-list", "maybe": "uri"}


def test_ref_without_py_suffix_and_subdirectory(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.py").write_text(HEADER + "def run(x: int) -> int:\n    return x\n")
    assert "x" in build_openapi(tmp_path, "src/model.py:run")["components"]["schemas"]["Input"]["properties"]
    assert "x" in build_openapi(tmp_path, "src/model:run")["components"]["schemas"]["Input"]["properties"]


def test_cog_markers_streaming_accept_and_optional_secret(tmp_path):
    """What Cog 0.23's generator writes (checked against Cog's server in test_cog_differential.py):
    `x-cog-streaming` on POST /predictions for `@cog.streaming`, `x-cog-accept` for Input(accept=...),
    and `Secret = Input(default=None)` as an optional (nullable) credential."""
    body = """
        import cog
        from typing import Iterator
        class Predictor(BasePredictor):
            @cog.streaming
            def predict(self, audio: Path = Input(accept="audio/*"), key: Secret = Input(default=None),
                        seed: int = Input(default=None)) -> Iterator[str]: ...
    """
    doc = build_openapi(project(tmp_path, body), "predict.py:Predictor")
    assert doc["paths"]["/predictions"]["post"]["x-cog-streaming"] is True
    props = doc["components"]["schemas"]["Input"]["properties"]
    assert props["audio"]["x-cog-accept"] == "audio/*"
    assert props["key"]["nullable"] is True and props["key"]["default"] is None
    assert doc["components"]["schemas"]["Input"]["required"] == ["audio", "seed"]
    plain = build_openapi(project(tmp_path, body.replace("@cog.streaming", "")), "predict.py:Predictor")
    assert "x-cog-streaming" not in plain["paths"]["/predictions"]["post"]
