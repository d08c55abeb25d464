"""The platform's own costs, in one run, on the real engine and registry:

    eval "$(bash .ci/docker-services.sh --env)"
    python benchmarks/platform_deployments.py [--warm-requests 300] [--seconds 5]

Prints:
  1. cold start of the hello-world deployment from zero replicas: request -> first byte, a few times
     (the replica is scaled back to zero between runs);
  2. warm request latency through the gateway (/ai/run/@ns/hello-world) vs straight to the
     replica's Cog API (POST /predictions), p50/p99, and the gateway's added p50/p99;
  3. requests/s at 1, 16 and 64 concurrent callers against two replicas of async-concurrent
     (concurrency.max 4 each), through the gateway.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

# The repository (this checkout's cogkit/server) and tests/ (the gateway harness) first on the path.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from cogkit.build import builder, registry  # noqa: E402 - after the sys.path setup above
from tests.gateway_harness import GatewayProc  # noqa: E402 - after the sys.path setup above
from tests.net import until  # noqa: E402 - after the sys.path setup above

REGISTRY = os.environ.get("COGKIT_TEST_REGISTRY") or "127.0.0.1:5050"
PREFIX = os.environ.get("COGKIT_BASE_IMAGE_PREFIX") or "cogkit-base/"
NS = f"bench-{uuid.uuid4().hex[:6]}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]



def push(engine, name: str) -> tuple[str, str, dict, dict]:
    ref = f"{REGISTRY}/{NS}/{name}:v1"
    builder.build(ROOT / "examples" / "models" / name, ref, prefix=PREFIX, progress=lambda _l: None, client=engine)
    digest = registry.push(ref, progress=lambda _l: None, client=engine)
    openapi, config = registry.image_metadata(ref, engine)
    return ref, digest, openapi, config


class Bench:
    def __init__(self, gw: GatewayProc, key: str) -> None:
        self.gw, self.key = gw, key
        self.http = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=600)

    def status(self, name: str) -> dict:
        return self.http.get(f"/v1/deployments/{NS}/{name}").json()["status"] or {}

    def ready(self, name: str, count: int) -> list[dict]:
        return until(lambda: (r := [x for x in self.status(name).get("replicas", []) if x["state"] == "ready"])
                     and len(r) == count and r, 300, f"{count} ready replicas of {name}", 0.05)

    def first_byte(self, name: str, inputs: dict) -> float:
        started = time.perf_counter()
        with self.http.stream("POST", f"/ai/run/@{NS}/{name}", json={**inputs, "stream": True}) as resp:
            for _chunk in resp.iter_raw():
                return time.perf_counter() - started
        raise SystemExit(f"no answer from {name}")


def cold_starts(b: Bench, runs: int) -> list[float]:
    b.http.post("/v1/deployments", json={"model": f"{NS}/hello-world", "min_replicas": 0, "max_replicas": 1,
                                         "idle_timeout": 0.5}).raise_for_status()
    out = []
    for _ in range(runs):
        until(lambda: not b.status("hello-world").get("replicas"), 120, "scale to zero", 0.05)
        out.append(b.first_byte("hello-world", {"name": "cold"}))
    b.http.patch(f"/v1/deployments/{NS}/hello-world", json={"min_replicas": 1, "idle_timeout": 600})
    return out


def warm_latency(b: Bench, n: int) -> tuple[list[float], list[float]]:
    [replica] = b.ready("hello-world", 1)
    direct = httpx.Client(base_url=replica["url"], timeout=60)
    through, straight = [], []
    for i in range(n + 20):         # alternate, so both see the same machine load; the first 20 warm up
        t0 = time.perf_counter()
        r = b.http.post(f"/ai/run/@{NS}/hello-world", json={"name": "w"})
        t1 = time.perf_counter()
        d = direct.post("/predictions", json={"input": {"name": "w"}})
        t2 = time.perf_counter()
        assert r.status_code == 200 and d.status_code == 200, (r.text, d.text)
        if i >= 20:
            through.append(t1 - t0)
            straight.append(t2 - t1)
    direct.close()
    return through, straight


async def throughput(url: str, key: str, callers: int, seconds: float) -> tuple[float, int]:
    done, errors = 0, 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=callers, max_keepalive_connections=callers)
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=120,
                                 limits=limits) as client:
        async def caller() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                r = await client.post(f"/ai/run/@{NS}/async-concurrent", json={"text": "ab", "delay": 0})
                if r.status_code == 200:
                    done += 1
                else:
                    errors += 1
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return done / (time.perf_counter() - started), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm-requests", type=int, default=300)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per concurrency level")
    args = parser.parse_args()
    engine = builder.connect()
    print("building and pushing hello-world and async-concurrent ...", file=sys.stderr)
    images = {name: push(engine, name) for name in ("hello-world", "async-concurrent")}
    with tempfile.TemporaryDirectory() as tmp:
        instance = f"bench-{uuid.uuid4().hex[:8]}"
        gw = GatewayProc({"state_dir": f"{tmp}/state", "platform": {"interval": 0.2, "instance": instance},
                          "logging": {"level": "WARNING"}}, Path(tmp), "bench")
        try:
            key = gw.admin_key
            b = Bench(gw, key)
            for name, (ref, digest, openapi, config) in images.items():
                registry.register_version(gw.url, NS, name, ref, digest, openapi, key, cog_config=config)

            cold = cold_starts(b, args.cold_runs)
            through, straight = warm_latency(b, args.warm_requests)
            b.http.post("/v1/deployments", json={"model": f"{NS}/async-concurrent", "min_replicas": 2,
                                                 "max_replicas": 2, "queue_limit": 256,
                                                 "target_concurrency": 100}).raise_for_status()
            b.ready("async-concurrent", 2)
            rates = {n: asyncio.run(throughput(gw.url, key, n, args.seconds)) for n in (1, 16, 64)}
        finally:
            gw.close()
            for c in engine.containers(all=True, filters={"label": f"run.cogkit.platform={instance}"}):
                engine.remove_container(c["Id"], force=True)
    for ref, *_ in images.values():
        engine.remove_image(ref, force=True)

    ms = 1000
    print("\ncogkit platform benchmark (this machine: "
          f"{os.cpu_count()} CPUs; everything on it, replicas in Docker on the host network)\n")
    print("1. cold start, hello-world from zero replicas (request -> first byte)")
    print("   runs: " + ", ".join(f"{c:.2f} s" for c in cold) + f"   median {statistics.median(cold):.2f} s\n")
    print(f"2. warm latency, {len(through)} sequential requests each")
    print(f"   {'':22}{'p50':>10}{'p99':>10}")
    print(f"   {'through the gateway':22}{pct(through, 50) * ms:>8.2f}ms{pct(through, 99) * ms:>8.2f}ms")
    print(f"   {'straight to replica':22}{pct(straight, 50) * ms:>8.2f}ms{pct(straight, 99) * ms:>8.2f}ms")
    print(f"   {'added by the gateway':22}{(pct(through, 50) - pct(straight, 50)) * ms:>8.2f}ms"
          f"{(pct(through, 99) - pct(straight, 99)) * ms:>8.2f}ms\n")
    print(f"3. requests/s through the gateway, two replicas of async-concurrent ({args.seconds:g} s per level)")
    for n, (rate, errors) in rates.items():
        print(f"   {n:>3} callers: {rate:8.1f} req/s" + (f"  ({errors} errors)" if errors else ""))


if __name__ == "__main__":
    main()
