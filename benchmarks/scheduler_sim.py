"""The scheduler at fleet size: 1,000 simulated nodes x 8 GPUs, this scheduler vs first fit vs spread.

    python benchmarks/scheduler_sim.py [--nodes 1000] [--gpus-per-node 8] [--duration 1800] [--seed 1]

Prints, side by side for the three policies:
- the trace replay (`cogkit scheduler simulate`): decisions/s while replaying (only `place` is
  timed, in CPU time: the cores are shared), GPU memory utilization, refused placements, cold starts by rung;
- decisions/s on the loaded cluster the replay leaves behind: `place` for a rotating mix of the
  trace's requests, nothing applied (the steady-state cost of one decision).
- the cold start of one model's weights (a safetensors file, --weights-mib) from origin (an HTTP
  server on loopback: download, hash, write to the node's snapshot cache, then the load: verify
  every byte and read every tensor byte through the memory map) vs from the local snapshot (the
  same verified load), and the local snapshot with the size check only, for reference.
The aims (issue 12): >= 10,000 decisions/s at this size, memory utilization >= first fit's,
refusals <= either baseline's, a local snapshot >= 10x faster than origin.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

# This checkout's scheduler/ first on the path (the installed package may point at another one).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scheduler.simulate import POLICIES, Simulation, render  # noqa: E402
from scheduler.snapshots import SnapshotCache  # noqa: E402
from scheduler.tracegen import generate_trace  # noqa: E402


def read_every_tensor(cache: SnapshotCache, version: str, verify: str) -> None:
    """The load: every tensor byte copied into a buffer allocated once, as a loader copying into
    device memory would (memoryview assignment is a memcpy; bytes() would add a page fault per 4 KiB)."""
    snapshot = cache.get(version, verify=verify)  # type: ignore[arg-type]
    assert snapshot is not None
    step = 64 * 2**20
    device = memoryview(bytearray(step))
    for tensor in snapshot.tensors("model.safetensors").values():
        for i in range(0, len(tensor), step):
            part = tensor[i:i + step]
            device[:len(part)] = part


def cold_start(weights_mib: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        origin_dir = root / "origin" / "m-v1"
        origin_dir.mkdir(parents=True)
        tensors = 8
        per = weights_mib * 2**20 // tensors
        header = {f"layer{i}": {"dtype": "U8", "shape": [per], "data_offsets": [i * per, (i + 1) * per]}
                  for i in range(tensors)}
        encoded = json.dumps(header).encode()
        with (origin_dir / "model.safetensors").open("wb") as f:
            f.write(struct.pack("<Q", len(encoded)) + encoded)
            block = bytes(range(256)) * (2**20 // 256)
            for _ in range(per * tensors // len(block)):
                f.write(block)

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None: ...

        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(root / "origin")))  # type: ignore[misc]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"

        def http_origin(version: str) -> Iterable[tuple[str, Iterable[bytes]]]:
            def chunks() -> Iterable[bytes]:
                with httpx.stream("GET", f"{base}/{version}/model.safetensors") as response:
                    response.raise_for_status()
                    yield from response.iter_bytes(8 * 2**20)
            yield "model.safetensors", chunks()

        results = {}
        cache = SnapshotCache(root / "cache", budget_bytes=4 * weights_mib * 2**20)
        started = time.perf_counter()
        cache.materialize("m-v1", http_origin)
        read_every_tensor(cache, "m-v1", "full")
        results["origin (verified)"] = time.perf_counter() - started
        for verify, name in (("full", "snapshot (verified)"), ("sizes", "snapshot (sizes only)")):
            started = time.perf_counter()
            read_every_tensor(cache, "m-v1", verify)
            results[name] = time.perf_counter() - started
        server.shutdown()
        return results


def steady_decisions_per_s(sim: Simulation, decisions: int) -> float:
    requests = list(sim.requests.values())
    state, now = sim.state, sim.now
    started = time.process_time()  # CPU time: other engineers' processes share these cores
    for i in range(decisions):
        state.place(requests[(i * 7919) % len(requests)], now, count_refusals=False)
    return decisions / (time.process_time() - started)


def calibration_ms() -> float:
    """How fast this core runs Python right now, in CPU time: 2M integer additions take ~70 ms
    on an idle machine (contention for caches and memory slows it even in CPU time)."""
    started, total = time.process_time(), 0
    for i in range(2_000_000):
        total += i
    return 1000 * (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--decisions", type=int, default=20_000, help="steady-state decisions per policy")
    parser.add_argument("--weights-mib", type=int, default=512, help="the model's weights for the cold start")
    args = parser.parse_args()

    print(f"CPU calibration: 2M integer additions took {calibration_ms():.0f} ms (~70 ms on an idle core)")
    if args.nodes == 0:  # only the cold start
        print_cold_start(args.weights_mib)
        return
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
    print(f"{'steady-state decisions/s (CPU)':30}  " + "".join(f"{s:>16,.0f}" for s in steady))
    print(f"CPU calibration after the runs: {calibration_ms():.0f} ms")
    print_cold_start(args.weights_mib)


def print_cold_start(weights_mib: int) -> None:
    print(f"\ncold start of {weights_mib} MiB of weights (wall time):")
    timings = cold_start(weights_mib)
    for name, seconds in timings.items():
        ratio = timings["origin (verified)"] / seconds
        print(f"  {name:24} {seconds * 1000:8.0f} ms" + (f"   {ratio:5.1f}x faster than origin" if ratio != 1 else ""))


if __name__ == "__main__":
    main()
