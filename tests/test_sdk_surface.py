"""The `cog` package a Cog 0.23 project imports: every public name of Cog's,
its deprecation messages for the old ones, and the behaviour of the decorators
and the metrics scope. Imported as a project's environment imports it."""
from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# cog 0.23.1's `cog.__all__`, as its package lists it.
COG_0_23_ALL = [
    "__version__", "BaseRunner", "BasePredictor", "BaseModel", "Opaque", "Input", "FieldInfo", "Path", "Secret",
    "File", "URLFile", "URLPath", "ConcatenateIterator", "AsyncConcatenateIterator", "CancelationException",
    "current_scope", "streaming", "concurrent", "ExperimentalFeatureWarning", "emit_metric",
]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)


def test_every_public_name_of_cog_0_23_is_there() -> None:
    import cog

    missing = [name for name in COG_0_23_ALL if not hasattr(cog, name)]
    assert missing == []
    assert set(COG_0_23_ALL) <= set(cog.__all__)
    assert cog.__version__.count(".") == 2 and cog.__version__.startswith("0.23")


def test_star_import_and_old_modules() -> None:
    r = run_python("from cog import *; from cog.types import Weights, URLFile, Path, File; "
                   "from cog.input import Input, FieldInfo; from cog.model import BaseModel; "
                   "from cog.predictor import BasePredictor, BaseRunner; print(Weights)")
    assert r.returncode == 0, r.stderr
    assert "Union" in r.stdout and "File" in r.stdout and "Path" in r.stdout


@pytest.mark.parametrize("name,message", [
    ("ExperimentalFeatureWarning", "cog: ExperimentalFeatureWarning is deprecated and will be removed"),
    ("emit_metric", ("cog: emit_metric() is deprecated and will be removed in a future release. "
                     "Use current_scope().record_metric(name, value) instead.")),
])
def test_deprecated_names_say_so_once_on_stderr(name: str, message: str) -> None:
    r = run_python(f"import warnings; from cog import {name}; import cog; cog.{name}; "
                   f"warnings.simplefilter('error')")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(message) == 1


def test_experimental_feature_warning_still_filters() -> None:
    from cog import ExperimentalFeatureWarning

    assert issubclass(ExperimentalFeatureWarning, FutureWarning)


def test_unknown_name_is_an_attribute_error() -> None:
    import cog

    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        cog.NoSuchThing  # noqa: B018


def test_streaming_marks_and_concurrent_checks() -> None:
    from cog import concurrent, streaming

    @streaming
    def gen() -> typing.Iterator[str]:
        yield "x"

    assert gen.__cog_streaming__ is True and list(gen()) == ["x"]

    @concurrent(max=4)
    async def run() -> str:
        return "ok"

    assert run.__cog_concurrent_max__ == 4
    with pytest.raises(TypeError, match="requires an async function"):
        concurrent(max=2)(lambda: None)
    with pytest.raises(ValueError, match="at least 1"):
        concurrent(max=0)
    with pytest.raises(TypeError, match="must be an integer"):
        concurrent(max=True)


def test_opaque_urlfile_and_fieldinfo() -> None:
    from cog import FieldInfo, Input, Opaque, URLFile

    assert repr(Opaque) == "cog.Opaque"
    assert typing.get_args(typing.Annotated[dict, Opaque])[1] is Opaque
    with pytest.raises(ValueError, match="HTTP or HTTPS"):
        URLFile("ftp://example.com/x.bin")
    assert URLFile("https://example.com/a/weights.bin").name == "weights.bin"
    field = Input(default=3, ge=1, description="how many")
    assert isinstance(field, FieldInfo) and field.default == 3 and field.ge == 1


def test_metric_names_follow_cogs_rules() -> None:
    from cog import current_scope
    from cogkit.sdk.scope import Scope, validate_metric_name

    for bad, words in [("_x", "must start with a letter"), ("a__b", "consecutive underscores"),
                       ("a_", "must end with a letter or digit"), (".a", "must not start with a dot"),
                       ("a..b", "empty segments"), ("predict_time", "reserved"), ("cog.x", "'cog.' prefix"),
                       ("a.b.c.d.e", "at most 4 dot-separated segments"), ("a" * 129, "128 characters"),
                       ("a-b", "invalid character '-'")]:
        with pytest.raises(ValueError, match=words.replace(".", r"\.").replace("(", r"\(")):
            validate_metric_name(bad)
    validate_metric_name("timing.pre_process2")
    scope = Scope()
    scope.record_metric("timing.preprocess", 0.1)
    scope.record_metric("timing.total", 1, mode="incr")
    scope.record_metric("timing.total", 2, mode="incr")
    scope.record_metric("tags", "a", mode="append")
    scope.metrics["plain"] = "x"
    scope.metrics.record("tags", "b", mode="append")
    assert scope.metrics == {"timing": {"preprocess": 0.1, "total": 3}, "tags": ["a", "b"], "plain": "x"}
    with pytest.raises(ValueError):
        scope.metrics["_bad"] = 1
    assert current_scope() is not None


def test_metrics_reach_the_sink_with_cogs_mode_names() -> None:
    from cogkit.sdk.scope import Scope

    seen: list[tuple[str, object, str]] = []
    scope = Scope(lambda name, value, mode: seen.append((name, value, mode)))
    scope.record_metric("n", 1, mode="incr")
    scope.metrics["m"] = 2
    assert seen == [("n", 1, "increment"), ("m", 2, "replace")]
