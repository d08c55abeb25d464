"""Cog's own integration suite, run against cogkit in two modes:

- local: no image. `cog build` checks the project as a build would
  (`cogkit build --check`) and `cog predict $TEST_IMAGE` runs the project in
  its managed environment; tests that inspect the image itself run in image mode only.
- image: `cog build` is a real `cogkit build` on the local engine, and
  predict/serve run that image.

The suite is data kept outside the repository (../shared/peer-suites/cog);
skips name what this machine lacks (tests/cog_suite/skips.py), and the list of
them is printed at the end of the session."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cog_suite.script import Script, ScriptSkipped
from tests.cog_suite.skips import skip_reason

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT.parent / "shared" / "peer-suites" / "cog"
MODES = ("local", "image")
PYTHON_HERE = "3.11"
_PYTHON_VERSION = re.compile(r"""^(\s*python_version:\s*)(["']?)3\.(1[0-9])(["']?)""", re.MULTILINE)


def _suite_files() -> list[Path]:
    return sorted((SUITE / "tests").glob("*.txtar")) if (SUITE / "tests").is_dir() else []


def rewrite_python(name: str, content: str) -> str:
    """python_version 3.10+ becomes the Python this machine has; older ones stay, so
    the tests that check they are rejected still see them."""
    if Path(name).name != "cog.yaml":
        return content
    return _PYTHON_VERSION.sub(lambda m: f"{m.group(1)}{m.group(2)}{PYTHON_HERE}{m.group(4)}", content)


def test_the_suite_is_present() -> None:
    assert _suite_files(), (f"Cog's integration suite is missing: expected its .txtar files in {SUITE / 'tests'} "
                            f"(../shared/peer-suites/cog relative to the repo root)")


@pytest.fixture(scope="module")
def engine_env() -> None:
    """Image mode needs the local Docker engine (and says how to start it)."""
    from cogkit.build import builder

    try:
        builder.connect()
    except builder.EngineUnavailable as e:
        pytest.fail(f"image mode of the Cog suite needs a Docker engine: {e}; here: "
                    f'eval "$(bash .ci/docker-services.sh --env)"', pytrace=False)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", _suite_files(), ids=lambda p: p.stem)
def test_cog_suite(path: Path, mode: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    text = path.read_text()
    reason = skip_reason(path.stem, text, mode)
    if reason:
        pytest.skip(reason)
    if mode == "image":
        request.getfixturevalue("engine_env")
    script = Script(name=path.stem, text=text, work=tmp_path / "work", mode=mode, repo_root=ROOT,
                    rewrite_python=rewrite_python)
    try:
        script.run()
    except ScriptSkipped as e:
        pytest.skip(f"the script skips itself: {e}")
    except AssertionError as e:
        transcript = "".join(t if t.endswith("\n") else t + "\n" for t in script.transcript)
        raise AssertionError(f"{e}\n--- transcript ---\n{transcript[-12000:]}") from None
