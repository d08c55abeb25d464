"""The `cogkit` CLI as Cog users type `cog`: run (and its old name predict),
--json, -o, repeated -i for lists, Cog's messages, exec, doctor, build checks,
and the command plugins (the gateway's) loaded without cogkit importing them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COGKIT = [sys.executable, "-m", "cogkit.cli"]

PREDICT = '''
from typing import Optional
from cog import BaseRunner, Input, Path

class Runner(BaseRunner):
    def run(self, s: str, n: int = Input(default=1, ge=1, le=5), tags: list[str] = Input(default=[]),
            size: str = Input(default="small", choices=["small", "large"]), out: bool = False) -> str:
        return f"{s}x{n}:{','.join(tags)}:{size}"
'''


def project(tmp_path: Path, code: str = PREDICT, yaml: str = 'build:\n  python_version: "3.11"\nrun: "run.py:Runner"\n'
            ) -> Path:
    (tmp_path / "cog.yaml").write_text(yaml)
    (tmp_path / "run.py").write_text(textwrap.dedent(code))
    return tmp_path


def cogkit(*args: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*COGKIT, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, check=False)


def test_run_and_predict_share_one_path(tmp_path: Path) -> None:
    p = project(tmp_path)
    r = cogkit("run", "-i", "s=hi", "-i", "tags=a", "-i", "tags=b", "-i", "n=3", cwd=p)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hix3:a,b:small" and "deprecated" not in r.stderr
    r = cogkit("predict", "-i", "s=hi", cwd=p)
    assert r.stdout.strip() == "hix1::small"
    assert '"cog predict" is deprecated, use "cog run"' in r.stderr


def test_input_errors_come_before_anything_runs(tmp_path: Path) -> None:
    p = project(tmp_path)
    cases = [
        (["-i", "s=x", "-i", "nope=1"], 'unknown input "nope"; valid inputs are: n, out, s, size, tags'),
        ([], 'missing required input "s"'),
        (["-i", "s=x", "-i", "n=lots"], 'invalid input "n": expected integer, got string'),
        (["-i", "s=x", "-i", "n=9"], 'invalid input "n"'),
        (["-i", "s=x", "-i", "size=huge"], 'invalid input "size": must be one of: small, large'),
        (["-i", "justtext"], "Failed to parse input 'justtext', expected format is 'name=value'"),
        (["--json", '{"s": "x", "n": null}'], "must not be null"),
        (["--json", "[1]"], "must be a JSON object"),
        (["-i", "s=x", "--json", "{}"], "Must use one of --json or --input"),
    ]
    for args, message in cases:
        r = cogkit("run", *args, cwd=p)
        assert r.returncode == 1 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and "Running prediction" not in r.stderr


@pytest.mark.parametrize("how", ["inline", "file", "stdin", "dash"])
def test_json_inputs_print_the_prediction(tmp_path: Path, how: str) -> None:
    p = project(tmp_path)
    body = '{"s": "j", "n": 2}'
    (p / "in.json").write_text(body)
    arg, stdin = {"inline": (body, ""), "file": ("@in.json", ""), "stdin": ("@-", body), "dash": ("-", body)}[how]
    r = cogkit("run", "--json", arg, cwd=p, stdin=stdin)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["status"] == "succeeded" and shown["output"] == "jx2::small" and "predict_time" in shown["metrics"]


def test_output_flag_takes_any_output_and_files_are_numbered(tmp_path: Path) -> None:
    p = project(tmp_path)
    r = cogkit("run", "-i", "s=o", "-o", "result.txt", cwd=p)
    assert r.returncode == 0, r.stderr
    assert (p / "result.txt").read_text() == "ox1::small" and "Written output to: result.txt" in r.stderr
    files = tmp_path / "files"
    files.mkdir()
    project(files, '''
        from cog import BaseRunner, Path
        class Runner(BaseRunner):
            def run(self, n: int) -> list[Path]:
                out = []
                for i in range(n):
                    Path(f"f{i}.txt").write_text(str(i))
                    out.append(Path(f"f{i}.txt"))
                return out
    ''')
    r = cogkit("run", "-i", "n=2", cwd=files)
    assert r.returncode == 0, r.stderr
    assert (files / "output.0.txt").read_text() == "0" and (files / "output.1.txt").read_text() == "1"
    assert "Written output to: output.1.txt" in r.stderr


def test_no_output_and_failures_are_cog_worded(tmp_path: Path) -> None:
    p = project(tmp_path, '''
        from typing import Optional
        from cog import BaseRunner
        class Runner(BaseRunner):
            def run(self, fail: bool = False) -> Optional[str]:
                if fail:
                    raise ValueError("bad thing")
                return None
    ''')
    r = cogkit("run", cwd=p)
    assert r.returncode == 0 and "No output generated" in r.stderr
    r = cogkit("run", "-i", "fail=true", cwd=p)
    assert r.returncode == 1 and 'Prediction failed with status "failed": bad thing' in r.stderr


def test_train_writes_weights_and_says_it_is_deprecated(tmp_path: Path) -> None:
    p = project(tmp_path, '''
        from cog import BaseRunner
        class Runner(BaseRunner):
            def run(self, s: str) -> str:
                return s
        def train(s: str) -> str:
            return "trained " + s
    ''', 'build:\n  python_version: "3.11"\nrun: "run.py:Runner"\ntrain: "run.py:train"\n')
    r = cogkit("train", "-i", "s=x", cwd=p)
    assert r.returncode == 0, r.stderr
    assert (p / "weights").read_text() == "trained x" and 'Command "train" is deprecated' in r.stderr


def test_exec_runs_in_the_model_environment_from_a_subdirectory(tmp_path: Path) -> None:
    p = project(tmp_path)
    sub = p / "a" / "b"
    sub.mkdir(parents=True)
    r = cogkit("exec", "python", "-c", "import sys, yaml, requests; print(sys.prefix); print(input())", cwd=sub,
               stdin="from stdin\n")
    assert r.returncode == 0, r.stderr
    prefix, echoed = r.stdout.split()[:1] + [r.stdout.strip().splitlines()[-1]]
    assert prefix != sys.prefix and echoed == "from stdin"
    assert cogkit("exec", "sh", "-c", "exit 3", cwd=p).returncode == 3


def test_build_check_applies_cogs_build_time_rules(tmp_path: Path) -> None:
    p = project(tmp_path, '''
        from cog import BaseRunner, Input
        class Runner(BaseRunner):
            def run(self, n: int = Input(default=1, ge=2)) -> int:
                return n
    ''')
    r = cogkit("build", "--check", cwd=p)
    assert r.returncode == 1 and 'invalid default for input "n": 1 is less than the minimum 2' in r.stderr
    (p / "cog.yaml").write_text('build:\n  python_version: "3.9"\nrun: "run.py:Runner"\n')
    r = cogkit("build", "--check", cwd=p)
    assert 'invalid build.python_version "3.9": minimum supported Python version is 3.10' in r.stderr
    (p / "cog.yaml").write_text('build:\n  python_version: "3.11"\n')
    assert "no run (or predict) entry point" in cogkit("build", "--check", cwd=p).stderr
    (p / "cog.yaml").write_text('build:\n  python_version: "3.11"\n  run:\n    - command: cat /s\n      mounts:\n'
                                '        - {type: secret, id: tok, target: /s}\nrun: "run.py:Runner"\n')
    (p / "run.py").write_text("from cog import BaseRunner\nclass Runner(BaseRunner):\n"
                              "    def run(self) -> str:\n        return ''\n")
    assert "--secret id=tok" in cogkit("build", "--check", cwd=p).stderr
    (p / "tok.txt").write_text("t")
    r = cogkit("build", "--check", "--secret", "id=tok,src=tok.txt", cwd=p)
    assert r.returncode == 0, r.stderr
    assert "RUN --mount=type=secret,id=tok,target=/s cat /s" in cogkit("debug", cwd=p).stdout


def test_doctor_fixes_deprecated_code(tmp_path: Path) -> None:
    p = project(tmp_path, "import warnings\nfrom cog import BasePredictor\nfrom cog.types import "
                          "ExperimentalFeatureWarning\nwarnings.filterwarnings('ignore', "
                          "category=ExperimentalFeatureWarning)\n\nclass Predictor(BasePredictor):\n"
                          "    def predict(self, s: str) -> str:\n        return s\n",
                'build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\n')
    (p / "run.py").rename(p / "predict.py")
    r = cogkit("doctor", cwd=p)
    assert r.returncode == 1 and "ExperimentalFeatureWarning was removed" in r.stderr
    assert "predict in cog.yaml is deprecated" in r.stderr
    r = cogkit("doctor", "--fix", cwd=p)
    assert r.returncode == 0, r.stderr
    assert "Fixed: Deprecated predict interface names" in r.stderr and "Fixed: Deprecated imports" in r.stderr
    assert 'run: "run.py:Runner"' in (p / "cog.yaml").read_text() and not (p / "predict.py").exists()
    code = (p / "run.py").read_text()
    assert "class Runner(BaseRunner)" in code and "def run(" in code and "Experimental" not in code
    assert "no issues found" in cogkit("doctor", cwd=p).stderr


def test_cogkit_never_imports_server() -> None:
    code = "import sys, cogkit.cli; print(sorted(m for m in sys.modules if m == 'server' or m.startswith('server.')))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
    source = (ROOT / "cogkit" / "cli.py").read_text() + (ROOT / "cogkit" / "cli_images.py").read_text()
    assert "import server" not in source and "from server" not in source


def test_the_gateway_commands_come_from_the_entry_point(tmp_path: Path) -> None:
    r = cogkit("--help", cwd=tmp_path)
    assert r.returncode == 0 and "gateway" in r.stdout and "keys" in r.stdout


def test_a_broken_plugin_is_one_line_and_the_rest_still_works(tmp_path: Path) -> None:
    dist = tmp_path / "plugins" / "broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[cogkit.commands]\nbroken = no_such_module_here:register\n")
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path / 'plugins'}"}
    r = cogkit("--help", cwd=tmp_path, env=env)  # the full command list: plugins are loaded
    assert r.returncode == 0 and "Traceback" not in r.stderr and "schema" in r.stdout
    lines = [line for line in r.stderr.splitlines() if "broken" in line]
    assert len(lines) == 1 and "no_such_module_here" in lines[0] and "ModuleNotFoundError" in lines[0]
    # cogkit's own commands load no plugins at all (their start-up time is every `cog` line's).
    r = cogkit("schema", "--help", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "broken" not in r.stderr
