"""Cog's own integration suite, run against cogkit in two modes:

- local: no image. `cog build` checks the project as a build would
  (`cogkit build --check`) and `cog predict $TEST_IMAGE` runs the project in
  its managed environment; tests that inspect the image itself run in image mode only.
- image: `cog build` is a real `cogkit build` on the local engine, and
  predict/serve run that image.

Every test runs in both modes. The tests run WORKERS at a time (tests/cog_suite/pool.py).

The suite is data kept outside the repository (../shared/peer-suites/cog);
skips name what this machine lacks (tests/cog_suite/skips.py), and the list of
them is printed at the end of the session."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cog_suite.pool import Outcome, SuitePool
from tests.cog_suite.script import Ports, Script, ScriptSkipped
from tests.cog_suite.skips import KNOWN_FAILURES, skip_reason

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT.parent / "shared" / "peer-suites" / "cog"
# Both by default; COGKIT_COG_SUITE_MODES=local (or image) runs one, e.g. to split CI across jobs.
MODES = tuple(m for m in os.environ.get("COGKIT_COG_SUITE_MODES", "local,image").split(",") if m in ("local", "image"))
# How many suite tests run side by side (tests/cog_suite/pool.py); 1 runs them one at a time.
WORKERS = int(os.environ.get("COGKIT_COG_SUITE_WORKERS", "3"))
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


def _engine_problem() -> str | None:
    """Why image mode cannot run (no Docker engine), with how to start one; None when it can."""
    from cogkit.build import builder

    try:
        builder.connect()
    except builder.EngineUnavailable as e:
        return (f"image mode of the Cog suite needs a Docker engine: {e}; here: "
                f'eval "$(bash .ci/docker-services.sh --env)"')
    return None


def _cases() -> list[tuple[Path, str]]:
    return [(path, mode) for path in _suite_files() for mode in MODES]


def run_case(path: Path, mode: str, work: Path, ports: Ports) -> Outcome:
    script = Script(name=path.stem, text=path.read_text(), work=work / "work", mode=mode, repo_root=ROOT,
                    rewrite_python=rewrite_python, ports=ports)
    try:
        script.run()
    except ScriptSkipped as e:
        return Outcome("skipped", f"the script skips itself: {e}")
    except AssertionError as e:
        transcript = "".join(t if t.endswith("\n") else t + "\n" for t in script.transcript)
        return Outcome("failed", f"{e}\n--- transcript ---\n{transcript[-12000:]}")
    return Outcome("passed")


@dataclass
class SuiteRun:
    pool: SuitePool
    engine_problem: str | None  # why image mode cannot run here, if it cannot


@pytest.fixture(scope="session")
def suite_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuiteRun]:
    """Starts every selected, runnable suite test at once (WORKERS at a time)."""
    selected = [(item.callspec.params["path"], item.callspec.params["mode"]) for item in request.session.items
                if getattr(item, "originalname", "") == "test_cog_suite" and hasattr(item, "callspec")]
    runnable = [(p, m) for p, m in selected if not skip_reason(p.stem, p.read_text(), m)]
    problem = _engine_problem() if any(m == "image" for _, m in runnable) else None
    if problem:
        runnable = [(p, m) for p, m in runnable if m != "image"]
    ports = Ports()  # one allocator for every script of the session: no port handed out twice
    pool = SuitePool(WORKERS, lambda p, m: run_case(p, m, tmp_path_factory.mktemp(f"{p.stem}-{m}"), ports))
    pool.submit(runnable)
    yield SuiteRun(pool, problem)
    pool.close()


@pytest.mark.parametrize(("path", "mode"), _cases(), ids=lambda v: v if isinstance(v, str) else v.stem)
def test_cog_suite(path: Path, mode: str, request: pytest.FixtureRequest) -> None:
    reason = skip_reason(path.stem, path.read_text(), mode)
    if reason:
        pytest.skip(reason)
    run: SuiteRun = request.getfixturevalue("suite_run")
    if mode == "image" and run.engine_problem:
        pytest.fail(run.engine_problem, pytrace=False)
    if (path.stem, mode) in KNOWN_FAILURES:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_FAILURES[path.stem, mode], strict=True))
    outcome = run.pool.outcome(path, mode)
    if outcome.kind == "skipped":
        pytest.skip(outcome.message)
    if outcome.kind == "failed":
        raise AssertionError(f"{outcome.message}\n(took {outcome.seconds:.1f} s)")
