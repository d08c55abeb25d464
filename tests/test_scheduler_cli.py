"""`cogkit scheduler explain | simulate | generate-trace`, through the Typer app itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from scheduler.cli import app, register

INVENTORY = """\
nodes:
  - name: big
    labels: {zone: eu}
    cached_versions: [v1]
    gpus: {count: 2, memory: 80GiB, compute_capability: "9.0"}
  - name: small
    gpus: {count: 1, memory: 24GiB, compute_capability: "8.9"}
"""
REPLICAS = """\
replicas:
  - {id: r1, model: acme/other, version: o1, node: big, gpus: [GPU-sim-big-0], gpu_memory: 70GiB, utilization: 90}
"""


def files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "inv.yaml").write_text(INVENTORY)
    (tmp_path / "rep.yaml").write_text(REPLICAS)
    return tmp_path / "inv.yaml", tmp_path / "rep.yaml"


def test_explain_prints_candidates_and_why(tmp_path: Path) -> None:
    inv, rep = files(tmp_path)
    result = CliRunner().invoke(app, ["explain", "-f", str(inv), "--replicas", str(rep), "--model", "acme/llm",
                                      "--version", "v1", "--gpu-memory", "20GiB"])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("big/GPU-sim-big-1 beat small/GPU-sim-small-0")
    assert "local_snapshot" in result.output
    assert "memory (live telemetry): 1" in result.output  # big-0 holds the other model's 70 GiB


def test_explain_json_and_a_derived_memory_need(tmp_path: Path) -> None:
    inv, _ = files(tmp_path)
    result = CliRunner().invoke(app, ["explain", "-f", str(inv), "--model", "acme/llm", "--weights", "30GiB",
                                      "--kv-cache", "10GiB", "--min-cc", "9.0", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["request"]["gpu_memory_bytes"] == 42 * 2**30
    assert data["filtered"] == {"compute capability": 1, "memory (live telemetry)": 1,
                                "memory (promised to replicas)": 1}  # the 24 GiB GPU
    assert {c["node"] for c in data["candidates"]} == {"big"}


def test_explain_when_nothing_fits(tmp_path: Path) -> None:
    inv, _ = files(tmp_path)
    result = CliRunner().invoke(app, ["explain", "-f", str(inv), "--model", "acme/llm", "--gpus", "4",
                                      "--gpu-memory", "10GiB"])
    assert result.exit_code == 0
    assert result.output.startswith("nothing fits 4 GPU(s) with 10.0 GiB each for acme/llm: too few eligible GPUs")


def test_bad_input_names_the_option_or_field(tmp_path: Path) -> None:
    inv, _ = files(tmp_path)
    runner = CliRunner()
    cases = [
        (["--gpu-memory", "lots"], "--gpu-memory: expected a size"),
        ([], "--gpu-memory or --weights"),
        (["--gpu-memory", "1GiB", "--label", "zone"], "--label: expected KEY=VALUE"),
        (["--gpu-memory", "1GiB", "--min-cc", "nine"], "--min-cc: expected MAJOR.MINOR"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["explain", "-f", str(inv), "--model", "m", *extra])
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
    (tmp_path / "bad.yaml").write_text("replicas:\n  - {id: r, model: m, node: big, state: dozing}\n")
    result = runner.invoke(app, ["explain", "-f", str(inv), "--model", "m", "--gpu-memory", "1GiB",
                                 "--replicas", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and "replicas[0].state: expected one of" in result.output
    (tmp_path / "bad.yaml").write_text("nodes: []\n")
    result = runner.invoke(app, ["explain", "-f", str(tmp_path / "bad.yaml"), "--model", "m", "--gpu-memory", "1GiB"])
    assert result.exit_code == 2 and "nodes: expected a non-empty list" in result.output


def test_generate_then_simulate_side_by_side(tmp_path: Path) -> None:
    runner = CliRunner()
    trace = tmp_path / "t.jsonl"
    result = runner.invoke(app, ["generate-trace", "-o", str(trace), "--nodes", "6", "--duration", "900"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["simulate", str(trace)])
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[2].split()
    assert header == ["scheduler", "first-fit", "spread"]
    assert "placements refused" in result.output and "cold starts: local_snapshot" in result.output
    result = runner.invoke(app, ["simulate", str(trace), "--policy", "spread", "--json"])
    data = json.loads(result.output)
    assert [r["policy"] for r in data["reports"]] == ["spread"] and data["gpus"] == 48
    result = runner.invoke(app, ["simulate", str(trace), "--policy", "best"])
    assert result.exit_code == 2 and "--policy: expected one of scheduler, first-fit, spread" in result.output


def test_register_mounts_the_commands_under_scheduler() -> None:
    root = typer.Typer()

    @root.command()
    def other() -> None: ...

    register(root)
    result = CliRunner().invoke(root, ["scheduler", "--help"])
    assert result.exit_code == 0 and "explain" in result.output and "simulate" in result.output


def test_runs_as_a_module() -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "scheduler.cli", "--help"], cwd=root, capture_output=True, check=False,
                          text=True, timeout=120)
    assert done.returncode == 0 and "generate-trace" in done.stdout


def test_the_shipped_examples_explain() -> None:
    examples = Path(__file__).resolve().parent.parent / "scheduler" / "examples"
    result = CliRunner().invoke(app, ["explain", "-f", str(examples / "inventory.yaml"), "--replicas",
                                      str(examples / "replicas.yaml"), "--model", "acme/llm-8b", "--version", "v1",
                                      "--weights", "16GiB", "--kv-cache", "8GiB", "--json"])
    assert result.exit_code == 0, result.output
    decision = json.loads(result.output)["decision"]
    assert decision["rung"] == "sleeping" and decision["wakes"] == "r3"
