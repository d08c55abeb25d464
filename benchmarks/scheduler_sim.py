"""The scheduler at fleet size: 1,000 simulated nodes x 8 GPUs, this scheduler vs first fit vs spread.

    python benchmarks/scheduler_sim.py [--nodes 1000] [--gpus-per-node 8] [--duration 1800] [--seed 1]

Prints, side by side for the three policies:
- the trace replay (`cogkit scheduler simulate`): decisions/s while replaying (only `place` is
  timed), GPU memory utilization, refused placements, cold starts by rung;
- decisions/s on the loaded cluster the replay leaves behind: `place` for a rotating mix of the
  trace's requests, nothing applied (the steady-state cost of one decision).
The aims (issue 12): >= 10,000 decisions/s at this size, memory utilization >= first fit's,
refusals <= either baseline's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# The repository root instead of benchmarks/ first on the path: a module there named like a
# standard one (benchmarks/platform.py) would otherwise shadow it.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from scheduler.simulate import POLICIES, Simulation, render
from scheduler.tracegen import generate_trace


def steady_decisions_per_s(sim: Simulation, decisions: int) -> float:
    requests = list(sim.requests.values())
    state, now = sim.state, sim.now
    started = time.perf_counter()
    for i in range(decisions):
        state.place(requests[(i * 7919) % len(requests)], now, count_refusals=False)
    return decisions / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--decisions", type=int, default=20_000, help="steady-state decisions per policy")
    args = parser.parse_args()

    trace = generate_trace(args.nodes, args.gpus_per_node, args.duration, args.seed)
    gpus = sum(p.nodes * p.gpus for p in trace.pools)
    print(f"trace: {args.nodes} nodes, {gpus} GPUs, {len(trace.models)} models, {len(trace.events)} events, "
          f"{args.duration:.0f} s simulated\n", flush=True)
    reports, steady = [], []
    for name, policy in POLICIES.items():
        sim = Simulation(trace, policy, name)
        reports.append(sim.run())
        steady.append(steady_decisions_per_s(sim, args.decisions))
        print(f"  {name}: replayed in {reports[-1].wall_s:.1f} s", flush=True)
    print()
    print(render(reports))
    print(f"{'steady-state decisions/s':30}  " + "".join(f"{s:>16,.0f}" for s in steady))


if __name__ == "__main__":
    main()
