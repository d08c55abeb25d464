import textwrap

import pytest

from cogkit.inputs import InputValidationError, parse_cli_value, validate_input
from cogkit.schema import build_openapi

PREDICT = """\
from typing import Any, Optional
from cog import BasePredictor, Input, Path, Secret

class Predictor(BasePredictor):
    def predict(
        self,
        prompt: str,
        steps: int = Input(default=50, ge=1, le=100),
        scale: float = Input(default=7.5, ge=0, le=20),
        fast: bool = False,
        name: str = Input(default="abc", min_length=2, max_length=5, regex="[a-z]+"),
        scheduler: str = Input(default="DDIM", choices=["DDIM", "K_EULER"]),
        size: int = Input(default=512, choices=[512, 768]),
        image: Optional[Path] = None,
        images: list[Path] = [],
        tags: list[str] = ["a"],
        weights: Optional[list[float]] = None,
        extra: dict = {},
        anything: Optional[Any] = None,
        token: Secret = None,
        api_key: Secret = Input(default=Secret("s3cret")),
        seed: Optional[int] = None,
    ) -> str:
        ...

def train(data: Path, epochs: int = 3) -> Path:
    ...
"""


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    (root / "predict.py").write_text(textwrap.dedent(PREDICT))
    return build_openapi(root, "predict.py:Predictor", "predict.py:train")


def errors(doc, payload, mode="predict"):
    with pytest.raises(InputValidationError) as e:
        validate_input(doc, payload, mode)
    return {tuple(err["loc"][2:]): err for err in e.value.errors}


def test_defaults_filled(doc):
    out = validate_input(doc, {"prompt": "hi"})
    assert out == {"prompt": "hi", "steps": 50, "scale": 7.5, "fast": False, "name": "abc", "scheduler": "DDIM",
                   "size": 512, "image": None, "images": [], "tags": ["a"], "weights": None, "extra": {},
                   "anything": None, "token": None, "seed": None}
    assert "api_key" not in out  # masked Secret default: the predictor's own default applies
    # defaults are copies, not the schema's own objects
    out["tags"].append("b")
    assert validate_input(doc, {"prompt": "hi"})["tags"] == ["a"]


def test_valid_values_pass_through(doc):
    payload = {"prompt": "x", "steps": 1, "scale": 3, "fast": True, "name": "ab", "scheduler": "K_EULER",
               "size": 768, "image": "https://example.com/a.png", "images": ["data:image/png;base64,AAAA"],
               "tags": [], "weights": [1, 0.5], "extra": {"k": [1]}, "anything": [1, "x"], "token": "t",
               "api_key": "k", "seed": 7}
    assert validate_input(doc, payload) == payload


def test_payload_must_be_object(doc):
    with pytest.raises(InputValidationError) as e:
        validate_input(doc, ["prompt"])
    assert e.value.errors == [{"loc": ["body", "input"], "msg": "input must be an object, got array",
                               "type": "type_error.dict"}]
    # a missing input counts as {}: only the required fields are reported
    assert list(errors(doc, None)) == [("prompt",)]


def test_all_errors_collected(doc):
    errs = errors(doc, {"bogus": 1, "steps": 0, "scale": "7", "fast": 1})
    assert errs[("bogus",)] == {"loc": ["body", "input", "bogus"], "msg": "unexpected field",
                                "type": "value_error.extra"}
    assert errs[("prompt",)]["msg"] == "field required"
    assert errs[("prompt",)]["type"] == "value_error.missing"
    assert "greater than or equal to 1" in errs[("steps",)]["msg"]
    assert errs[("scale",)]["msg"] == "expected number, got string"
    assert errs[("fast",)]["msg"] == "expected boolean, got integer"
    assert len(errs) == 5


def test_numbers(doc):
    assert errors(doc, {"prompt": "x", "steps": True})[("steps",)]["msg"] == "expected integer, got boolean"
    assert errors(doc, {"prompt": "x", "steps": "5"})[("steps",)]["msg"] == "expected integer, got string"
    assert errors(doc, {"prompt": "x", "steps": 2.5})[("steps",)]["msg"] == "expected integer, got number"
    assert errors(doc, {"prompt": "x", "scale": False})[("scale",)]["msg"] == "expected number, got boolean"
    assert validate_input(doc, {"prompt": "x", "steps": 3.0})["steps"] == 3  # integral float -> int
    assert isinstance(validate_input(doc, {"prompt": "x", "steps": 3.0})["steps"], int)
    assert validate_input(doc, {"prompt": "x", "scale": 2})["scale"] == 2
    assert "less than or equal to 20" in errors(doc, {"prompt": "x", "scale": 20.5})[("scale",)]["msg"]
    assert validate_input(doc, {"prompt": "x", "steps": 100, "scale": 0})["steps"] == 100


def test_strings(doc):
    assert errors(doc, {"prompt": 5})[("prompt",)]["msg"] == "expected string, got integer"
    err = errors(doc, {"prompt": "x", "name": "a"})[("name",)]
    assert err["msg"] == "ensure this value has at least 2 characters"
    assert "at most 5" in errors(doc, {"prompt": "x", "name": "abcdef"})[("name",)]["msg"]
    err = errors(doc, {"prompt": "x", "name": "ABC"})[("name",)]
    assert err["type"] == "value_error.str.regex" and "[a-z]+" in err["msg"]
    # re.match semantics, as in Cog: the pattern must match at the start only
    assert validate_input(doc, {"prompt": "x", "name": "ab12"})["name"] == "ab12"


def test_choices(doc):
    err = errors(doc, {"prompt": "x", "scheduler": "PNDM"})[("scheduler",)]
    assert err["msg"] == 'must be one of "DDIM", "K_EULER"'
    assert errors(doc, {"prompt": "x", "size": 513})[("size",)]["msg"] == "must be one of 512, 768"
    assert errors(doc, {"prompt": "x", "size": "512"})[("size",)]["msg"] == "expected integer, got string"


def test_explicit_null_is_rejected_even_when_optional(doc):
    # Cog 0.23 answers 422 to an explicit null, Optional or not: leaving the field out gives None.
    assert validate_input(doc, {"prompt": "x"})["seed"] is None
    errs = errors(doc, {"prompt": "x", "seed": None, "image": None})
    assert set(errs) == {("seed",), ("image",)}
    assert errs[("seed",)]["msg"].startswith("must not be null")
    assert errors(doc, {"prompt": "x", "steps": None})[("steps",)]["type"] == "type_error.none.not_allowed"
    assert validate_input(doc, {"prompt": "x", "anything": None})["anything"] is None  # untyped: anything goes


def test_undeclared_fields_ignored_when_asked(doc):
    from cogkit.inputs import undeclared_fields
    payload = {"prompt": "x", "bogus": 1}
    assert ("bogus",) in errors(doc, payload)  # the CLI's way: rejected
    assert validate_input(doc, payload, ignore_undeclared=True)["prompt"] == "x"  # HTTP's way, as Cog's server
    assert "bogus" not in validate_input(doc, payload, ignore_undeclared=True)
    assert undeclared_fields(doc, payload) == ["bogus"]


def test_arrays(doc):
    errs = errors(doc, {"prompt": "x", "tags": ["ok", 1, None], "weights": "1.0"})
    assert errs[("tags", 1)]["msg"] == "expected string, got integer"
    assert ("tags", 2) in errs and ("tags", 0) not in errs
    assert errs[("weights",)]["msg"] == "expected array, got string"
    assert errors(doc, {"prompt": "x", "extra": []})[("extra",)]["msg"] == "expected object, got array"


def test_uris(doc):
    for ok in ("http://x.org/a.png", "HTTPS://x.org/a", "data:,hello", "data:text/plain;base64,aGk="):
        assert validate_input(doc, {"prompt": "x", "image": ok})["image"] == ok
    for bad in ("file:///etc/passwd", "/tmp/a.png", "ftp://x/a", "http://", "data:nocomma", "a.png"):
        err = errors(doc, {"prompt": "x", "image": bad})[("image",)]
        assert err["msg"] == "expected an http(s) URL or a data URI", bad
    err = errors(doc, {"prompt": "x", "images": ["http://a.b/c", "c.png"]})
    assert list(err) == [("images", 1)]


def test_secrets_are_strings(doc):
    assert validate_input(doc, {"prompt": "x", "token": "abc"})["token"] == "abc"
    assert errors(doc, {"prompt": "x", "token": 5})[("token",)]["msg"] == "expected string, got integer"


def test_train_mode(doc):
    assert validate_input(doc, {"data": "https://a.b/d.zip"}, mode="train") == {
        "data": "https://a.b/d.zip", "epochs": 3}
    errs = errors(doc, {"prompt": "x"}, mode="train")
    assert set(errs) == {("prompt",), ("data",)}


def test_error_message_summarises(doc):
    with pytest.raises(InputValidationError) as e:
        validate_input(doc, {"prompt": "x", "tags": [1]})
    assert str(e.value) == "tags.0: expected string, got integer"


def test_parse_cli_values(doc):
    assert parse_cli_value(doc, "steps", "5") == 5
    assert parse_cli_value(doc, "scale", "7") == 7.0
    assert parse_cli_value(doc, "fast", "true") is True
    assert parse_cli_value(doc, "fast", "False") is False
    assert parse_cli_value(doc, "prompt", "42") == "42"
    assert parse_cli_value(doc, "size", "768") == 768  # choices keep their type
    assert parse_cli_value(doc, "scheduler", "DDIM") == "DDIM"
    assert parse_cli_value(doc, "tags", '["a", "b"]') == ["a", "b"]
    assert parse_cli_value(doc, "tags", "solo") == ["solo"]
    assert parse_cli_value(doc, "weights", "0.5") == [0.5]
    assert parse_cli_value(doc, "extra", '{"a": 1}') == {"a": 1}
    assert parse_cli_value(doc, "anything", "[1, 2]") == [1, 2]
    assert parse_cli_value(doc, "anything", "plain text") == "plain text"
    assert parse_cli_value(doc, "seed", "null") is None
    assert parse_cli_value(doc, "image", "https://x.org/a.png") == "https://x.org/a.png"
    assert parse_cli_value(doc, "epochs", "9", mode="train") == 9
    # and the result then validates
    assert validate_input(doc, {"prompt": "x", "steps": parse_cli_value(doc, "steps", "5")})["steps"] == 5


def test_parse_cli_errors(doc):
    with pytest.raises(InputValidationError) as e:
        parse_cli_value(doc, "nope", "1")
    assert e.value.errors == [{"loc": ["body", "input", "nope"], "msg": "unexpected field",
                               "type": "value_error.extra"}]
    for name, raw, msg in (("steps", "five", "expected integer"), ("scale", "x", "expected number"),
                           ("scale", "inf", "finite"), ("fast", "maybe", "expected true or false"),
                           ("tags", "[1,", "expected a JSON array"), ("extra", "[1]", "expected a JSON object")):
        with pytest.raises(InputValidationError, match=msg) as e:
            parse_cli_value(doc, name, raw)
        assert e.value.errors[0]["loc"] == ["body", "input", name]


def test_union_inputs_take_the_first_variant_that_fits(tmp_path):
    (tmp_path / "predict.py").write_text(textwrap.dedent("""
        from cog import BasePredictor
        class Predictor(BasePredictor):
            def predict(self, nums: list[int] | list[float], value: str | float) -> str: ...
    """))
    doc = build_openapi(tmp_path, "predict.py:Predictor")
    assert validate_input(doc, {"nums": [1], "value": 2.5}) == {"nums": [1], "value": 2.5}
    assert validate_input(doc, {"nums": [1.5], "value": "x"})["nums"] == [1.5]
    assert validate_input(doc, {"nums": [], "value": "x"})["nums"] == []
    for bad in (["3"], [True], 1):
        errs = errors(doc, {"nums": bad, "value": "x"})
        assert errs[("nums",)]["type"] == "type_error.union", bad
