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

import os
import re
from pathlib import Path

import pytest

from tests.cog_suite.script import Script, ScriptSkipped
from tests.cog_suite.skips import KNOWN_FAILURES, skip_reason

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT.parent / "shared" / "peer-suites" / "cog"
# Both by default; COGKIT_COG_SUITE_MODES=local (or image) runs one, e.g. to split CI across jobs.
MODES = tuple(m for m in os.environ.get("COGKIT_COG_SUITE_MODES", "local,image").split(",") if m in ("local", "image"))
# Which tests image mode takes. "build" (the default): those whose project or script depends on the
# image (build settings beyond the Python version, the image inspected, pushed, run or exec'd), since
# the rest run the same server and predictor that local mode runs; the whole suite in both modes is
# about 80 minutes on 2 cores, past CI's budget. "all": every test in image mode too.
IMAGE_SCOPE = os.environ.get("COGKIT_COG_SUITE_IMAGE", "build")
_IMAGE_RELEVANT = re.compile(
    r"^\s*(system_packages|run:|python_requirements|python_packages|cuda|environment|weights|image:)"
    r"|^\s*(!\s+)?(exec docker |docker-run|docker-push|registry-inspect|cog push|cog run \$TEST_IMAGE|cog exec)"
    r"|Image built as", re.MULTILINE)
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


def _cases() -> list[tuple[Path, str]]:
    cases = []
    for path in _suite_files():
        for mode in MODES:
            if mode == "image" and IMAGE_SCOPE != "all" and not _IMAGE_RELEVANT.search(path.read_text()):
                continue        # not collected (not a skip): local mode runs it, on the same runtime
            cases.append((path, mode))
    return cases


@pytest.mark.parametrize(("path", "mode"), _cases(), ids=lambda v: v if isinstance(v, str) else v.stem)
def test_cog_suite(path: Path, mode: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    text = path.read_text()
    reason = skip_reason(path.stem, text, mode)
    if reason:
        pytest.skip(reason)
    if mode == "image":
        request.getfixturevalue("engine_env")
    if (path.stem, mode) in KNOWN_FAILURES:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_FAILURES[path.stem, mode], strict=True))
    script = Script(name=path.stem, text=text, work=tmp_path / "work", mode=mode, repo_root=ROOT,
                    rewrite_python=rewrite_python)
    try:
        script.run()
    except ScriptSkipped as e:
        pytest.skip(f"the script skips itself: {e}")
    except AssertionError as e:
        transcript = "".join(t if t.endswith("\n") else t + "\n" for t in script.transcript)
        raise AssertionError(f"{e}\n--- transcript ---\n{transcript[-12000:]}") from None
