"""`cogkit scheduler ...`: explain a placement, generate and replay traces.

The lead wires `register` into the `cogkit.commands` entry point; `python -m scheduler.cli` runs it alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml  # type: ignore[import-untyped,unused-ignore]

from scheduler.placement import (
    Policy,
    ReplicaRequest,
    ReplicaState,
    RunningReplica,
    Strategy,
    explain,
    gpu_memory_for_model,
)
from scheduler.telemetry.base import SpecError, parse_bytes, parse_compute_capability
from scheduler.telemetry.simulated import SimulatedInventory

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="GPU placement: explain a decision, generate and replay traces.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="scheduler")


def _fail(message: str) -> None:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def load_replicas(path: Path, inventory: SimulatedInventory) -> list[RunningReplica]:
    """A YAML list of placed replicas; all but starting ones show up in the simulated telemetry."""
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("replicas", []) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise SpecError(f"{path}: expected a mapping with a 'replicas' list")
    replicas = []
    for i, entry in enumerate(entries):
        where = f"replicas[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{where}: expected a mapping")
        for key in ("id", "model", "node"):
            if not isinstance(entry.get(key), str):
                raise SpecError(f"{where}.{key}: expected a string")
        gpus = entry.get("gpus", [])
        if not isinstance(gpus, list):
            raise SpecError(f"{where}.gpus: expected a list of GPU uuids")
        try:
            state = ReplicaState(entry.get("state", "ready"))
        except ValueError:
            raise SpecError(f"{where}.state: expected one of {', '.join(s.value for s in ReplicaState)}") from None
        replica = RunningReplica(entry["id"], entry["model"], str(entry.get("version", "latest")), entry["node"],
                                 tuple(str(g) for g in gpus), parse_bytes(entry.get("gpu_memory", 0),
                                                                          f"{where}.gpu_memory"), state)
        if state is not ReplicaState.STARTING:
            try:
                inventory.start_replica(replica.replica_id, replica.gpu_uuids, replica.gpu_memory_bytes,
                                        float(entry.get("utilization", 0)))
            except KeyError as missing:
                raise SpecError(f"{where}.gpus: {missing.args[0]}") from None
        replicas.append(replica)
    return replicas


def _labels(values: list[str]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise SpecError(f"--label: expected KEY=VALUE, got {value!r}")
        labels[key] = val
    return labels


@app.command("explain")
def explain_command(
    inventory: Annotated[Path, typer.Option("--inventory", "-f", help="Simulated inventory YAML.")],
    model: Annotated[str, typer.Option(help="namespace/name of the model.")],
    version: Annotated[str, typer.Option(help="Version id (snapshot locality is per version).")] = "latest",
    replicas: Annotated[Path | None, typer.Option(help="YAML of replicas already placed.")] = None,
    gpus: Annotated[int, typer.Option(help="GPUs per replica (0: CPU only).")] = 1,
    gpu_memory: Annotated[str | None, typer.Option(help="GPU memory per GPU, e.g. 20GiB (declared).")] = None,
    weights: Annotated[str | None, typer.Option(help="Weights size, to derive GPU memory.")] = None,
    kv_cache: Annotated[str, typer.Option(help="KV-cache budget, added to weights.")] = "0",
    overhead: Annotated[str, typer.Option(help="Runtime overhead per GPU.")] = "2GiB",
    min_cc: Annotated[str, typer.Option(help="Minimum compute capability, e.g. 8.0.")] = "0.0",
    label: Annotated[list[str] | None, typer.Option(help="Required node label KEY=VALUE (repeatable).")] = None,
    strategy: Annotated[Strategy, typer.Option(help="Memory fit.")] = Strategy.PACK,
    top: Annotated[int, typer.Option(help="Candidates to list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show every candidate's score terms and why the winner won (or which filter failed on how many GPUs)."""
    try:
        inv = SimulatedInventory.from_yaml(inventory)
        running = load_replicas(replicas, inv) if replicas else []
        if gpu_memory is not None:
            memory = parse_bytes(gpu_memory, "--gpu-memory")
        elif weights is not None:
            memory = gpu_memory_for_model(parse_bytes(weights, "--weights"), parse_bytes(kv_cache, "--kv-cache"),
                                          parse_bytes(overhead, "--overhead"), max(gpus, 1))
        elif gpus:
            raise SpecError("--gpu-memory or --weights: a GPU replica needs one of them")
        else:
            memory = 0
        request = ReplicaRequest(model=model, version=version, gpu_count=gpus, gpu_memory_bytes=memory,
                                 min_compute_capability=parse_compute_capability(min_cc, "--min-cc"),
                                 node_labels=_labels(label or []))
        policy = Policy.first_fit() if strategy is Strategy.FIRST_FIT else Policy(strategy=strategy)
    except (OSError, yaml.YAMLError) as error:
        _fail(str(error))
        return
    except ValueError as error:  # SpecError and the request's own checks name the field
        _fail(str(error))
        return
    result = explain(inv.read(), running, request, policy)
    typer.echo(json.dumps(result.to_dict(top), indent=2) if as_json else result.render(top))


def _register_simulation() -> None:
    # The simulation commands live with the simulation; imported here so `explain` stays light.
    from scheduler.simulate import register_commands

    register_commands(app)


_register_simulation()


def main(argv: list[str] | None = None) -> Any:
    return app(argv)


if __name__ == "__main__":
    app()
