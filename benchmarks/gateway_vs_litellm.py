"""The same streaming load, in one run, straight to a fake OpenAI provider, through the cogkit
gateway, and through LiteLLM's proxy (all pointing at that one fake), at 1, 16 and 256
concurrent streams: requests/s, added latency p50/p99, added time to first token, CPU ms per
request of the process in the path (from its own CPU time: the fake for direct, the gateway, the
proxy), and the gateway's RSS over a soak (--soak seconds, default 5 minutes): at each quarter,
and the growth over its second half, which is about zero when memory is bounded.
Everything listens on 127.0.0.1; every loop is bounded.

    python benchmarks/gateway_vs_litellm.py                     # LiteLLM if it can be found
    python benchmarks/gateway_vs_litellm.py --litellm-python /path/to/venv/bin/python

LiteLLM: `pip install 'litellm[proxy]'` (best in its own virtualenv: it pins its own versions of
fastapi and friends); this script looks for it in this Python, in $LITELLM_PYTHON, and in
~/.cache/cogkit-litellm-venv. Without it, those rows say so and the rest still runs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes import start_fake  # noqa: E402
from tests.net import free_port  # noqa: E402

LITELLM_KEY = "sk-bench-master-key"
WARMUP = 64                 # requests sent to a target before each level is measured
SOAK_STREAMS = 64
PROMPT = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"


def wait_http(url: str, proc: subprocess.Popen, timeout: float, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f}s")


def cpu_s(pid: int) -> float:
    """The process's own CPU time (user + system, all its threads) so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_gateway(fake_url: str, workdir: Path, python: str) -> tuple[subprocess.Popen, str, str]:
    config = {"state_dir": str(workdir / "gw"), "logging": {"level": "WARNING"},
              "providers": [{"name": "fake", "kind": "openai", "base_url": fake_url, "api_key": "bench"}],
              "models": [{"name": "m", "input_price": 0.15, "output_price": 0.6,
                          "deployments": [{"provider": "fake", "model": "gpt-4o-mini"}]}]}
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen([python, "-m", "server.gateway_cli", "--config", str(path), "--port", str(port)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "COGKIT_HOME": str(workdir)},
                            stdout=subprocess.PIPE, stderr=open(workdir / "gateway.log", "wb"), text=True)
    key = ""
    for line in proc.stdout:          # the admin key comes first, then the "listening" line
        if line.startswith("Admin key"):
            key = line.rsplit(" ", 1)[-1].strip()
        if line.startswith("cogkit gateway on"):
            break
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc, 60)
    return proc, url + "/v1", key


def find_litellm(explicit: str | None) -> str | None:
    candidates = [explicit, os.environ.get("LITELLM_PYTHON"), sys.executable,
                  str(Path.home() / ".cache" / "cogkit-litellm-venv" / "bin" / "python")]
    for python in candidates:
        if python and Path(python).exists():
            ok = subprocess.run([python, "-c", "import litellm.proxy.proxy_server"], capture_output=True,
                                env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}).returncode == 0
            if ok:
                return python
    return None


def start_litellm(python: str, fake_url: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    config = {"model_list": [{"model_name": "m", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_base": fake_url, "api_key": "bench"}}],
              "litellm_settings": {"drop_params": True, "set_verbose": False}}
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    cli = Path(python).parent / "litellm"
    cmd = [str(cli)] if cli.exists() else [python, "-m", "litellm"]
    env = {**os.environ, "LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True"}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(cmd + ["--config", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=open(workdir / "litellm.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health/liveliness", proc, 180)
    return proc, url + "/v1"


# The load generator is a raw aiohttp client (its C HTTP parser, the body sent as ready bytes, the
# stream read as it comes and parsed only until the first token), the same for every target: an SDK
# or httpx would cost more CPU per request than the gateway does, on the same cores, and show up as
# everybody's latency.
def request_body(model: str) -> bytes:
    return json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": PROMPT}]}).encode()


def first_token(buf: bytes) -> bool:
    """Does this much of an OpenAI stream hold a chunk with content? (whole `data:` lines only)"""
    for line in buf.split(b"\n"):
        if line.startswith(b"data: {") and b'"content"' in line:
            try:
                choices = json.loads(line[6:]).get("choices") or [{}]
            except ValueError:
                continue           # a line cut by the read: the next read completes it
            if (choices[0].get("delta") or {}).get("content"):
                return True
    return False


class Failed(Exception):
    """A request that did not stream to its end: why (the status and the start of the body, or the cut)."""


def failure(e: BaseException) -> str:
    return str(e) if isinstance(e, Failed) else type(e).__name__


async def one(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict) -> tuple[float, float]:
    """(total seconds, seconds to the first content token) of one streamed chat completion; Failed if it
    was refused or did not end with `data: [DONE]`."""
    start = time.perf_counter()
    ttft = None
    seen = b""                        # the stream until its first token (then only its last bytes)
    async with session.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            raise Failed(f"HTTP {resp.status}: {(await resp.read())[:120]!r}")
        async for data in resp.content.iter_any():
            seen += data
            if ttft is None:
                if first_token(seen):
                    ttft = time.perf_counter() - start
                    seen = seen[-32:]
            else:
                seen = seen[-32:]
    if not seen.rstrip().endswith(b"data: [DONE]"):
        raise Failed(f"the stream ended without [DONE]: ...{seen[-60:]!r}")
    return time.perf_counter() - start, ttft if ttft is not None else float("nan")


def session_for(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, keepalive_timeout=60)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120),
                                 cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)


def target_args(base: str, key: str, model: str) -> tuple[str, bytes, dict]:
    return (f"{base}/chat/completions", request_body(model),
            {"authorization": f"Bearer {key}", "content-type": "application/json"})


async def load(base: str, key: str, model: str, concurrency: int, requests: int, pid: int | None = None) -> dict:
    """The measured phase of one target at one level; `pid`: the process whose CPU time is charged
    to it (the fake for direct, the gateway for cogkit, the proxy for LiteLLM)."""
    url, body, headers = target_args(base, key, model)
    session = session_for(concurrency)
    try:
        # Warm the connections and the target's caches: WARMUP requests at least (one stream's level
        # came first and ran high after a warm-up of one request), in rounds of the level's concurrency.
        for _ in range(max(1, -(-WARMUP // concurrency))):
            await asyncio.gather(*(one(session, url, body, headers) for _ in range(concurrency)),
                                 return_exceptions=True)
        results: list[tuple[float, float]] = []
        errors: Counter[str] = Counter()
        todo = iter(range(requests))

        async def worker() -> None:
            for _ in todo:
                try:
                    results.append(await one(session, url, body, headers))
                except (aiohttp.ClientError, TimeoutError, Failed) as e:
                    errors[failure(e)] += 1
        cpu0 = cpu_s(pid) if pid else 0.0
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        cpu = (cpu_s(pid) - cpu0) if pid else float("nan")
    finally:
        await session.close()
    lat = sorted(r[0] for r in results)
    ttft = sorted(r[1] for r in results)
    pick = (lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] * 1000) if results else (lambda xs, q: float("nan"))
    return {"rps": len(results) / wall, "p50": pick(lat, 0.5), "p99": pick(lat, 0.99),
            "cpu_ms": cpu * 1000 / max(1, len(results)),
            "ttft50": pick(ttft, 0.5), "ttft99": pick(ttft, 0.99), "errors": sum(errors.values()),
            "why": dict(errors), "n": len(results)}


async def soak(base: str, key: str, model: str, concurrency: int, seconds: float, pid: int) -> dict:
    """`concurrency` streams back to back for `seconds`: the process's RSS (MiB) sampled along the way
    (every `seconds`/20), and how many requests went through or failed."""
    samples: list[tuple[float, float]] = []
    done = {"ok": 0, "errors": 0}
    why: Counter[str] = Counter()
    stop = time.monotonic() + seconds
    url, body, headers = target_args(base, key, model)
    session = session_for(concurrency)

    async def worker() -> None:
        while time.monotonic() < stop:
            try:
                await one(session, url, body, headers)
                done["ok"] += 1
            except (aiohttp.ClientError, TimeoutError, Failed) as e:
                done["errors"] += 1
                why[failure(e)] += 1

    async def sampler() -> None:
        start = time.monotonic()
        while time.monotonic() < stop:
            samples.append((time.monotonic() - start, rss_mb(pid)))
            await asyncio.sleep(min(max(1.0, seconds / 20), max(0.0, stop - time.monotonic())))
        samples.append((time.monotonic() - start, rss_mb(pid)))
    try:
        await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
    finally:
        await session.close()
    return {"samples": samples, **done, "why": dict(why)}


def rss_at(samples: list[tuple[float, float]], t: float) -> float:
    """The RSS sample taken nearest to `t` seconds into the soak."""
    return min(samples, key=lambda s: abs(s[0] - t))[1]


def print_soak(result: dict, seconds: float, concurrency: int) -> None:
    """RSS at each quarter of the soak and the growth of each half: flat means the second half grows
    by about nothing (the first half includes warming up: caches, pools and allocator arenas filling)."""
    samples = result["samples"]
    marks = [rss_at(samples, seconds * q / 4) for q in range(5)]
    print(f"soak, {concurrency} streams for {seconds:g} s ({result['ok']} requests, {result['errors']} errors): "
          "RSS at 0, 1/4, 1/2, 3/4, end: " + " / ".join(f"{m:.1f}" for m in marks) + " MiB")
    if result["why"]:
        print("soak errors, by what the client saw: " + "; ".join(f"{n} x {why}" for why, n in result["why"].items()))
    print(f"soak RSS before/after: {marks[0]:.1f} / {marks[4]:.1f} MiB ({marks[4] - marks[0]:+.1f} MiB)")
    second = marks[4] - marks[2]
    print(f"soak RSS growth: first half {marks[2] - marks[0]:+.1f} MiB, second half {second:+.1f} MiB "
          f"({second / max(seconds / 2, 1e-9) * 60:+.2f} MiB/min), peak {max(m for _t, m in samples):.1f} MiB")
    print("soak RSS samples: " + ", ".join(f"{t:.0f}s {m:.1f}" for t, m in samples))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,16,256", help="concurrent streams, comma separated")
    ap.add_argument("--requests", type=int, default=0, help="requests per level (default: scaled to the level)")
    ap.add_argument("--token-delay", type=float, default=0.0, help="fake provider's seconds per token")
    ap.add_argument("--litellm-python", default=None, help="a Python with litellm[proxy] installed")
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--only", default="", help="targets to run, comma separated (direct,cogkit,litellm)")
    ap.add_argument("--soak", type=float, default=300.0,
                    help=f"seconds of the gateway soak at {SOAK_STREAMS} streams, RSS sampled (0: none)")
    ap.add_argument("--gateway-python", default=sys.executable,
                    help="the Python that runs the gateway (e.g. a venv with uvicorn[standard]: uvloop, httptools)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    only = set(args.only.split(",")) if args.only else {"direct", "cogkit", "litellm"}
    workdir = Path(tempfile.mkdtemp(prefix="cogkit-bench-"))
    fake = start_fake("openai", api_key=None, process=True, token_delay=args.token_delay)
    fake_url = fake.base_url
    assert fake._proc is not None
    procs: list[subprocess.Popen] = []
    try:
        gw_proc, gw_url, gw_key = start_gateway(fake_url, workdir, args.gateway_python)
        procs.append(gw_proc)
        targets = [("direct", fake_url, "bench", "gpt-4o-mini", fake._proc.pid),
                   ("cogkit", gw_url, gw_key, "m", gw_proc.pid)]
        python = None if args.no_litellm or "litellm" not in only else find_litellm(args.litellm_python)
        ll_proc = None
        if python:
            ll_proc, ll_url = start_litellm(python, fake_url, workdir)
            procs.append(ll_proc)
            targets.append(("litellm", ll_url, LITELLM_KEY, "m", ll_proc.pid))
        targets = [t for t in targets if t[0] in only]
        rss_start = rss_mb(gw_proc.pid)
        rows = []
        for level in levels:
            n = args.requests or {1: 200, 16: 800}.get(level, max(1024, level * 4))
            base = None
            for name, url, key, model, pid in targets:
                r = asyncio.run(load(url, key, model, level, n, pid))
                base = base if base is not None else (r if name == "direct" else None)
                rows.append((level, name, r, base))
                print(f"  {name:8s} c={level:<4d} {r['rps']:8.1f} req/s  p50 {r['p50']:7.2f} ms  "
                      f"p99 {r['p99']:7.2f} ms  ttft50 {r['ttft50']:7.2f} ms  cpu {r['cpu_ms']:6.2f} ms/req  "
                      f"errors {r['errors']}" + (f" {r['why']}" if r["why"] else ""), file=sys.stderr, flush=True)
        rss_after_levels = rss_mb(gw_proc.pid)
        soaked = asyncio.run(soak(gw_url, gw_key, "m", SOAK_STREAMS, args.soak, gw_proc.pid)) if args.soak > 0 else None
        print(f"\nStreaming chat completions, {len(PROMPT.split()) + 2} chunks each, fake upstream "
              f"token delay {args.token_delay * 1000:g} ms, {os.cpu_count()} CPUs (shared with other work: "
              "CPU ms per request is the figure contention moves least)\n")
        head = (f"{'conc':>5} {'target':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} "
                f"{'+p99 ms':>8} {'ttft50':>8} {'+ttft50':>8} {'cpu ms/req':>10} {'errors':>6}")
        print(head)
        print("-" * len(head))
        for level, name, r, base in rows:
            added = name != "direct" and base is not None

            def plus(k: str, r: dict = r, base: dict | None = base, added: bool = added) -> float:
                return (r[k] - base[k]) if added and base is not None else float("nan")
            print(f"{level:>5} {name:<8} {r['rps']:>9.1f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
                  f"{plus('p50'):>8.2f} {plus('p99'):>8.2f} {r['ttft50']:>8.2f} {plus('ttft50'):>8.2f} "
                  f"{r['cpu_ms']:>10.2f} {r['errors']:>6}")
        by = {(level, name): r for level, name, r, _b in rows}
        for level in levels:
            c, ll = by.get((level, "cogkit")), by.get((level, "litellm"))
            if c and ll and ll["rps"]:
                print(f"c={level}: cogkit/litellm requests/s = {c['rps'] / ll['rps']:.1f}x")
        if not python and "litellm" in only and not args.no_litellm:
            print("\nlitellm: not found (pip install 'litellm[proxy]', or --litellm-python PATH)")
        fast = subprocess.run([args.gateway_python, "-c", "import uvloop, httptools"], capture_output=True).returncode == 0
        print(f"\ncogkit gateway RSS: {rss_start:.1f} MiB at start, {rss_after_levels:.1f} MiB after the levels "
              f"(event loop: {'uvloop + httptools' if fast else 'asyncio + h11'})")
        if soaked is not None:
            print_soak(soaked, args.soak, SOAK_STREAMS)
        if ll_proc is not None:
            print(f"litellm proxy RSS after the run: {rss_mb(ll_proc.pid):.1f} MiB")
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        fake.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
