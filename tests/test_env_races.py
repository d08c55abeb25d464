"""Several `cogkit predict` runs at once on one machine share managed
environments without breaking each other: one builds while the others wait on
a file lock, and an environment in place is never deleted under a running one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RACERS = 4

PREDICT = """\
from cog import BasePredictor
import six


class Predictor(BasePredictor):
    def predict(self, n: int) -> str:
        return f"run {n} with six {six.__version__}"
"""


def test_concurrent_predicts_share_one_environment(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "cog.yaml").write_text(
        f'build:\n  python_version: "{sys.version_info.major}.{sys.version_info.minor}"\n'
        '  python_packages:\n    - "six==1.16.0"\npredict: "predict.py:Predictor"\n')
    (project / "predict.py").write_text(PREDICT)
    env = {**os.environ, "COGKIT_CACHE_DIR": str(tmp_path / "cache")}  # empty: every racer finds no env
    procs = [subprocess.Popen([sys.executable, "-m", "cogkit.cli", "predict", "-p", str(project), "-i", f"n={i}"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(RACERS)]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    for i, (proc, out, err) in enumerate(results):
        assert proc.returncode == 0, f"racer {i} failed:\n{err}"
        assert out.strip() == f"run {i} with six 1.16.0"
    builds = sum("Installing " in err and "requirement" in err for _, _, err in results)
    assert builds == 1, f"{builds} racers built the environment; one should, the others wait for it"
    envs = [p.name for p in (tmp_path / "cache" / "envs").iterdir() if p.is_dir()]
    assert len(envs) == 1, envs  # no half-built or stale directories left behind
