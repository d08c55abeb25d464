"""Scripts in benchmarks/ run with that folder first on sys.path: a file there named like a standard
library module (the old benchmarks/platform.py) hides it from every other benchmark."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_no_benchmark_shadows_a_standard_module() -> None:
    names = {p.stem for p in BENCHMARKS.glob("*.py")} | {p.name for p in BENCHMARKS.iterdir() if p.is_dir()}
    assert not names & set(sys.stdlib_module_names), names & set(sys.stdlib_module_names)


def test_a_benchmark_script_sees_the_standard_platform_module() -> None:
    # As `python benchmarks/x.py` would: benchmarks/ first on sys.path, then `import platform, uuid`.
    probe = "import platform, uuid; print(platform.__file__); uuid.uuid4()"
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); {probe}"],
                         capture_output=True, text=True, check=True).stdout
    assert not out.strip().startswith(str(BENCHMARKS)), out
