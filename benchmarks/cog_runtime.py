"""The same projects under Cog 0.23's own server and under `cogkit serve`, side by
side in one run: predictions per second (sequential, and with concurrent
clients), latency p50/p99, and errors by status code (409s included: a
sequential client should never see one).

    python benchmarks/cog_runtime.py                  # hello-world and async-concurrent
    python benchmarks/cog_runtime.py --requests 5000 --clients 8

Cog's server comes from its own virtualenv (cog==0.23.1 from PyPI, made once and
cached by tests/cog_reference.py), started with COG_PREDICT_TYPE_STUB and PORT, the
venv's bin first on PATH, cwd = the project, and the project's schema in
.cog/openapi_schema.json as `cog build` leaves it. Both servers listen on 127.0.0.1;
the load generator is one process with keep-alive connections (http.client), the
same for both, so the figures compare the servers rather than the client. The CPU
column (server and worker processes, from /proc, per request answered) is the figure
to trust on a machine shared with other work, where requests/s swing with the load.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import cog_reference as ref  # noqa: E402  (after the repo root is on sys.path)

PROJECTS = {  # project -> (request body, clients for the concurrent run: its concurrency.max)
    "hello-world": ({"input": {"name": "bench"}}, 1),
    "async-concurrent": ({"input": {"text": "ab", "delay": 0}}, 4),
}


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (the server and its model worker)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children.get(current, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far: a figure that, unlike requests/s,
    holds up on a machine shared with other work."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)
    failed: int = 0  # HTTP 200 but status "failed"
    seconds: float = 0.0
    cpu: float = 0.0  # server + worker CPU seconds during the run

    def merge(self, other: Run) -> None:
        self.latencies += other.latencies
        self.codes.update(other.codes)
        self.failed += other.failed


def client_loop(port: int, body: bytes, count: int) -> Run:
    run = Run()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    for _ in range(count):
        start = time.perf_counter()
        conn.request("POST", "/predictions", body, headers)
        response = conn.getresponse()
        payload = response.read()
        run.latencies.append(time.perf_counter() - start)
        run.codes[response.status] += 1
        if response.status == 200 and json.loads(payload).get("status") != "succeeded":
            run.failed += 1
    conn.close()
    return run


def measure(port: int, body: dict, requests: int, clients: int, pids: list[int]) -> Run:
    data = json.dumps(body).encode()
    client_loop(port, data, 50)  # warm up: connections, caches, the worker's first import
    per_client = max(1, requests // clients)
    results: list[Run] = [Run() for _ in range(clients)]

    def work(i: int) -> None:
        results[i] = client_loop(port, data, per_client)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    start, cpu_before = time.perf_counter(), cpu_seconds(pids)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = Run(seconds=time.perf_counter() - start, cpu=cpu_seconds(pids) - cpu_before)
    for r in results:
        total.merge(r)
    return total


def row(name: str, mode: str, run: Run) -> str:
    lat = sorted(run.latencies)
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    ok = run.codes.get(200, 0) - run.failed
    errors = {str(code): n for code, n in sorted(run.codes.items()) if code != 200}
    if run.failed:
        errors["failed"] = run.failed
    cpu_us = run.cpu / max(1, len(run.latencies)) * 1e6
    return (f"  {name:<8} {mode:<22} {ok / run.seconds:>9.0f}/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
            f"CPU {cpu_us:4.0f} us/req  errors {sum(errors.values()):>4} {errors or ''}")


def serve(project: Path, which: str) -> ref.Server:
    server = ref.start_cog(project, "predict.py:Predictor", "predict",
                           concurrency=PROJECTS[project.name][1]) if which == "cog" else ref.start_cogkit(project)
    health = ref.wait_settled(server)
    if health.get("status") != "READY":
        ref.stop(server)
        raise SystemExit(f"{which} did not get READY for {project.name}: {health}\n{server.log()}")
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--projects", nargs="*", default=list(PROJECTS))
    args = parser.parse_args()

    from cogkit.config import load_config
    from cogkit.schema import build_openapi

    try:
        ref.reference_venv()
    except ref.ReferenceUnavailable as e:
        raise SystemExit(f"Cog {ref.COG_VERSION} could not be installed: {e}") from None
    work = Path(tempfile.mkdtemp(prefix="cog-runtime-bench-"))
    print(f"Cog {ref.COG_VERSION}'s server vs cogkit serve, {args.requests} requests per row, 127.0.0.1")
    try:
        for name in args.projects:
            project = work / name
            shutil.copytree(ROOT / "examples" / "models" / name, project)
            config = load_config(project)
            (project / ".cog").mkdir()
            (project / ".cog" / "openapi_schema.json").write_text(
                json.dumps(build_openapi(project, config.predict, config.train)))
            body, slots = PROJECTS[name]
            print(f"\n{name} (concurrency.max {slots})")
            for which in ("cog", "cogkit"):
                server = serve(project, which)
                port = int(server.url.rsplit(":", 1)[1])
                pids = process_tree(server.proc.pid)
                try:
                    print(row(which, "sequential", measure(port, body, args.requests, 1, pids)))
                    clients = max(slots, 4)
                    print(row(which, f"{clients} concurrent clients",
                              measure(port, body, args.requests, clients, pids)))
                finally:
                    ref.stop(server)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
