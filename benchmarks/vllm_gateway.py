"""vLLM directly vs. vLLM through the gateway, measured by vLLM's own serving benchmark client
(`vllm bench serve`, from vLLM's virtualenv), in one run, on the same replica; then the cold
start of an `engine: vllm` deployment from zero (request -> first token).

    python benchmarks/vllm_gateway.py [--prompts 128] [--concurrency 8] [--input-len 64] [--output-len 64]

The gateway runs an `engine: vllm` deployment of the tiny random Llama (tests/vllm_support.py) with
one replica; the benchmark client is pointed first at that replica's own URL, then at the gateway
(`@bench/tiny`), same prompts, same settings, in turns (direct, gateway, direct, ...: `--rounds`
gateway runs, one more direct), so a machine whose load changes meanwhile moves both sides alike.
Prints TTFT p50/p99, inter-token latency (ITL p50/p99), output tokens/s for each (the median of its
runs), and the ratios; and the CPU each process spent per output token (from /proc), which does not
depend on what else the machine runs: on a machine where the gateway and vLLM share a few cores,
every millisecond of the gateway's CPU is one vLLM did not get, and that, not a wait, is what
separates the two tokens/s figures there. So by default the engine's compute gets a core of its
own, as it gets the GPU on a GPU host: vLLM's processes are bound to core 0 (its worker's OpenMP
thread by VLLM_CPU_OMP_THREADS_BIND) and the gateway and the benchmark client to the other cores
(`--share-cores` leaves all of them unpinned, and shows what sharing costs). Aim: through the
gateway >= 98 % of direct tokens/s and <= 1 ms more TTFT p50 (also measured by this script's own
client in `--pairs` pairs of one-stream requests, the same prompt to both back to back, which cancels
the engine's drift between runs). Then the cold start, split into
vLLM's own startup (its process started -> its /health answers) and the gateway's part (the
request -> the process started, /health -> the first token). Compare figures within one run, never across machines.
"""
from __future__ import annotations

import sys

# This checkout's packages (server/, tests/) importable when run as a script.
sys.path[0:0] = [str(__import__("pathlib").Path(__file__).resolve().parent.parent)]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT / "tests"))

from vllm_support import VLLM_ARGS, VLLM_ENV, tiny_llama, vllm_missing, vllm_python  # noqa: E402

from tests.gateway_harness import GatewayProc  # noqa: E402
from tests.net import until  # noqa: E402

# `vllm bench serve` itself, called as its CLI subcommand does (vllm's CLI entry point looks up the
# distribution "vllm" for its --version, and the CPU build is installed as "vllm-cpu").
BENCH_SERVE = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
               "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
               "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")



def replicas(process_dir: Path, prefix: str = "") -> list[dict]:
    """The process runtime's records (id, pid, url, log) of the replicas whose id starts with `prefix`."""
    out = []
    for path in process_dir.glob(f"proc-{prefix}*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def replica_urls(process_dir: Path) -> list[str]:
    return [r["url"] for r in replicas(process_dir) if healthy(r["url"])]


def cpu_seconds(pid: int, children: bool) -> float:
    """User + system CPU of a process so far, with its children's (vLLM's server runs its engine in a
    child; the gateway's children are the replicas, counted apart)."""
    def own(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += own(p)
        if not children:
            break
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return total


ENGINE_CORE = 0          # the core vLLM's worker is bound to, unless --share-cores


def other_cores() -> set[int]:
    return set(os.sched_getaffinity(0)) - {ENGINE_CORE}


def pin_process(pid: int, cores: set[int], children: bool = False) -> None:
    """Every thread of `pid` (and with children=True, of its descendants) to `cores`; threads started
    later inherit it."""
    todo = [pid]
    while todo:
        p = todo.pop()
        for tid in os.listdir(f"/proc/{p}/task"):
            try:
                os.sched_setaffinity(int(tid), cores)
            except (ProcessLookupError, PermissionError):
                pass
            if children:
                try:
                    todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
                except OSError:
                    pass


def bench(base_url: str, model: str, tokenizer: Path, args: argparse.Namespace, out: Path, key: str = "",
          one_stream: bool = False) -> dict:
    """One `vllm bench serve` run; its saved result (JSON). one_stream: the latency run, one request
    at a time (`--ttft-prompts` prompts of `--ttft-output-len` tokens): a TTFT with no queueing in it,
    so the gateway's own part is not lost in where each request landed in the engine's batch."""
    prompts, concurrency, output_len = ((args.ttft_prompts, 1, args.ttft_output_len) if one_stream
                                        else (args.prompts, args.concurrency, args.output_len))
    name = f"{uuid.uuid4().hex[:6]}.json"
    argv = [str(vllm_python()), "-c", BENCH_SERVE, "--backend", "openai-chat",
            "--base-url", base_url, "--endpoint", "/v1/chat/completions", "--model", model,
            "--tokenizer", str(tokenizer), "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(output_len), "--num-prompts", str(prompts),
            "--max-concurrency", str(concurrency), "--ignore-eos", "--seed", "7", "--num-warmups", "4",
            "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
            "--save-result", "--result-dir", str(out), "--result-filename", name,
            "--header", "x-cogkit-sse=data-only"]          # its SSE reader takes every line for data: no id lines
    env = {**os.environ, "OPENAI_API_KEY": key} if key else {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    pin = None if args.share_cores else (lambda: os.sched_setaffinity(0, other_cores()))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, preexec_fn=pin)
    if done.returncode != 0:
        raise SystemExit(f"vllm bench serve failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    result: dict = json.loads((out / name).read_text())
    if not result.get("completed"):
        raise SystemExit(f"no request succeeded against {base_url}: {(result.get('errors') or ['?'])[:2]}")
    return result


def cold_start(gw: GatewayProc, key: str, model: str, process_dir: Path) -> dict[str, float]:
    """A request to a scaled-to-zero deployment, timed to its first streamed token; and when, meanwhile,
    its replica's process started and its /health first answered (a watcher polling every 20 ms)."""
    marks: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        replica = None
        while not done.is_set():
            if replica is None:
                found = replicas(process_dir, "cogkit-bench-cold")
                if found:
                    replica, marks["spawned"] = found[0], time.perf_counter()
            elif healthy(replica["url"]):
                marks["healthy"] = time.perf_counter()
                return
            done.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    started = time.perf_counter()
    watcher.start()
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    try:
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=900) as c, \
                c.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                raise SystemExit(f"cold start request failed: {resp.status_code} {resp.read()[:300]!r}")
            for line in resp.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    marks["first_token"] = time.perf_counter()
                    break
    finally:
        done.set()
        watcher.join(5)
    if "first_token" not in marks:
        raise SystemExit("the cold-started deployment sent no token")
    return {k: v - started for k, v in marks.items()}


def run_in_turns(url: str, gw: GatewayProc, key: str, model: Path, args: argparse.Namespace, out: Path,
                 pids: dict[str, int]) -> tuple[list[dict], list[dict]]:
    """direct, gateway, direct, ... (`rounds` gateway runs); each run's result with the CPU per output
    token each process spent during it (`cpu_ms_per_token_<name>`)."""
    direct, through = [], []
    for turn in range(2 * args.rounds + 1):
        to_gateway = turn % 2 == 1
        before = {name: cpu_seconds(pid, name != "gateway") for name, pid in pids.items()}
        result = (bench(gw.url, "@bench/tiny", model, args, out, key) if to_gateway
                  else bench(url, "bench/tiny", model, args, out))
        tokens = max(1, result.get("total_output_tokens") or 1)
        for name, pid in pids.items():
            result[f"cpu_ms_per_token_{name}"] = 1000 * (cpu_seconds(pid, name != "gateway") - before[name]) / tokens
        alone = (bench(gw.url, "@bench/tiny", model, args, out, key, one_stream=True) if to_gateway
                 else bench(url, "bench/tiny", model, args, out, one_stream=True))
        result.update({f"one_{k}": alone.get(k) for k in ("p50_ttft_ms", "p99_ttft_ms")})
        (through if to_gateway else direct).append(result)
    return direct, through


def interleaved_ttft(direct_url: str, gateway_url: str, key: str, args: argparse.Namespace
                     ) -> tuple[dict[str, list[tuple[float, float]]], list[float]]:
    """Per client (httpx, as the OpenAI SDK uses it; aiohttp, as vLLM's benchmark client), (direct,
    gateway) TTFT in ms of `--pairs` one-stream requests: each prompt sent to the replica and through
    the gateway back to back, by both clients, in an order that rotates. vLLM's own TTFT drifts by
    milliseconds between runs of its client; sent in pairs, that drift is in both halves of every
    difference. Same body as vLLM's client sends (greedy, `--ttft-output-len` tokens, ignore_eos); the
    first token is the first chunk with content. Also the gateway's x-cogkit-overhead-ms of each."""
    import aiohttp
    overheads: list[float] = []
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz "
    gateway_headers = {"authorization": f"Bearer {key}", "x-cogkit-sse": "data-only"}

    def prompt() -> str:
        return "".join(rng.choice(alphabet) for _ in range(args.input_len))

    def body(model: str, text: str) -> dict:
        return {"model": model, "messages": [{"role": "user", "content": text}], "stream": True,
                "max_tokens": args.ttft_output_len, "temperature": 0, "ignore_eos": True}

    def has_content(line: str) -> bool:
        if not line.startswith("data: {"):
            return False
        choices = json.loads(line[6:]).get("choices") or [{}]
        return bool((choices[0].get("delta") or {}).get("content"))

    def with_httpx(client: httpx.Client, model: str, text: str) -> float:
        began, first = time.perf_counter(), 0.0
        with client.stream("POST", "/v1/chat/completions", json=body(model, text)) as resp:
            if resp.status_code != 200:
                raise SystemExit(f"{client.base_url}: {resp.status_code} {resp.read()[:300]!r}")
            if "x-cogkit-overhead-ms" in resp.headers:
                overheads.append(float(resp.headers["x-cogkit-overhead-ms"]))
            for line in resp.iter_lines():
                if not first and has_content(line):
                    first = time.perf_counter()
        if not first:
            raise SystemExit(f"{client.base_url}: a stream without content")
        return 1000 * (first - began)

    async def with_aiohttp(session: aiohttp.ClientSession, url: str, headers: dict, model: str, text: str) -> float:
        began, first, pending = time.perf_counter(), 0.0, b""
        async with session.post(url + "/v1/chat/completions", json=body(model, text), headers=headers) as resp:
            if resp.status != 200:
                raise SystemExit(f"{url}: {resp.status} {(await resp.read())[:300]!r}")
            async for raw in resp.content.iter_any():
                if not first:
                    pending += raw
                    *lines, pending = pending.split(b"\n")
                    if any(has_content(line.decode()) for line in lines):
                        first = time.perf_counter()
        if not first:
            raise SystemExit(f"{url}: a stream without content")
        return 1000 * (first - began)

    async def run() -> dict[str, list[tuple[float, float]]]:
        with httpx.Client(base_url=direct_url, timeout=60) as direct, \
                httpx.Client(base_url=gateway_url, timeout=60, headers=gateway_headers) as gateway:
            async with aiohttp.ClientSession() as session:
                async def via_httpx(client: httpx.Client, model: str, text: str) -> float:
                    return with_httpx(client, model, text)       # blocking: nothing else runs meanwhile
                legs = {("httpx", "direct"): lambda t: via_httpx(direct, "bench/tiny", t),
                        ("httpx", "gateway"): lambda t: via_httpx(gateway, "@bench/tiny", t),
                        ("aiohttp", "direct"): lambda t: with_aiohttp(session, direct_url, {}, "bench/tiny", t),
                        ("aiohttp", "gateway"): lambda t: with_aiohttp(session, gateway_url, gateway_headers,
                                                                      "@bench/tiny", t)}
                order = list(legs)
                for _ in range(4):                 # warm-up: connections, the engine's first batches
                    for leg in order:
                        await legs[leg](prompt())
                overheads.clear()
                times: dict[tuple[str, str], list[float]] = {leg: [] for leg in order}
                for i in range(args.pairs):
                    text = prompt()
                    for leg in order[i % 4:] + order[:i % 4]:
                        times[leg].append(await legs[leg](text))
                return {client: list(zip(times[client, "direct"], times[client, "gateway"], strict=True))
                        for client in ("httpx", "aiohttp")}

    affinity = os.sched_getaffinity(0)
    if not args.share_cores:
        os.sched_setaffinity(0, other_cores())
    try:
        return asyncio.run(run()), overheads
    finally:
        os.sched_setaffinity(0, affinity)


def median(results: list[dict], field: str) -> float:
    return statistics.median(r.get(field) or 0.0 for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--ttft-prompts", type=int, default=200, help="requests of each one-stream latency run")
    parser.add_argument("--ttft-output-len", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="gateway runs (direct runs: one more)")
    parser.add_argument("--pairs", type=int, default=300, help="one-stream requests sent in pairs (direct, gateway)")
    parser.add_argument("--skip-cold-start", action="store_true")
    parser.add_argument("--share-cores", action="store_true",
                        help="leave vLLM's worker, the gateway and the client unpinned, all on the same cores")
    args = parser.parse_args()
    if not args.share_cores and len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("pinning the engine to a core of its own needs two cores (or pass --share-cores)")
    missing = vllm_missing()
    if missing:
        raise SystemExit(f"needs {missing}")
    model = tiny_llama()
    env = VLLM_ENV if args.share_cores else {**VLLM_ENV, "VLLM_CPU_OMP_THREADS_BIND": str(ENGINE_CORE)}
    deployment = {"model": str(model), "args": VLLM_ARGS, "env": env}
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        process_dir = Path(tmp) / "processes"
        config = {"state_dir": f"{tmp}/state", "timeouts": {"total": 900},
                  "platform": {"instance": f"bench-{uuid.uuid4().hex[:6]}",
                               "process_dir": str(process_dir),
                               "vllm": [{"name": "bench/tiny", "min_replicas": 1, "max_replicas": 1, **deployment},
                                        {"name": "bench/cold", "min_replicas": 0, "max_replicas": 1,
                                         **deployment}]}}
        gw = GatewayProc(config, Path(tmp), "gw")
        try:
            key = gw.new_key("bench")
            print("waiting for the vLLM replica (loading, profiling, warming up)...", flush=True)
            url = until(lambda: replica_urls(process_dir), 900, "the vLLM replica", 0.2)[0]
            out = Path(tmp) / "results"
            out.mkdir()
            replica = next(r for r in replicas(process_dir) if r["url"] == url)
            pids = {"gateway": gw.proc.pid, "vllm": replica["pid"]}
            if not args.share_cores:
                # All of vLLM on its core: its engine and worker processes poll each other with
                # sched_yield for a second after each message, so wherever they may run they fill a core.
                pin_process(replica["pid"], {ENGINE_CORE}, children=True)
                pin_process(gw.proc.pid, other_cores())
                print(f"vLLM (server, engine, worker) on core {ENGINE_CORE}; the gateway and the client on cores "
                      f"{sorted(other_cores())}", flush=True)
            direct, through = run_in_turns(url, gw, key, model, args, out, pids)
            rows = [("TTFT p50, 1 stream", "one_p50_ttft_ms"), ("TTFT p99, 1 stream", "one_p99_ttft_ms"),
                    ("TTFT p50 (ms)", "p50_ttft_ms"), ("TTFT p99 (ms)", "p99_ttft_ms"),
                    ("ITL p50 (ms)", "p50_itl_ms"), ("ITL p99 (ms)", "p99_itl_ms"),
                    ("TPOT p50 (ms)", "p50_tpot_ms"), ("output tok/s", "output_throughput"),
                    ("requests ok", "completed"),
                    ("vLLM CPU ms/tok", "cpu_ms_per_token_vllm"), ("gw CPU ms/tok", "cpu_ms_per_token_gateway")]
            print(f"\nvllm bench serve: {args.prompts} prompts, {args.input_len} in / {args.output_len} out tokens, "
                  f"concurrency {args.concurrency}, tiny Llama on vLLM CPU; {len(direct)} direct and "
                  f"{len(through)} gateway runs in turns, medians; each followed by a one-stream run of "
                  f"{args.ttft_prompts} requests of {args.ttft_output_len} tokens (the '1 stream' rows, in ms)\n")
            print(f"{'':18}{'direct':>12}{'gateway':>12}{'gateway/direct':>16}   (each run: direct | gateway)")
            for label, field in rows:
                d, g = median(direct, field), median(through, field)
                ratio = f"{g / d:.3f}" if d else "-"
                runs = " ".join(f"{r.get(field) or 0.0:.3g}" for r in direct) + " | " + \
                    " ".join(f"{r.get(field) or 0.0:.3g}" for r in through)
                print(f"{label:18}{d:12.2f}{g:12.2f}{ratio:>16}   ({runs})")
            base_ttft, base_tps = median(direct, "one_p50_ttft_ms"), median(direct, "output_throughput")
            print(f"\nadded TTFT p50 (one stream at a time): {median(through, 'one_p50_ttft_ms') - base_ttft:+.2f} ms "
                  f"from the runs' p50s (aim <= 1 ms); at concurrency {args.concurrency}: "
                  f"{median(through, 'p50_ttft_ms') - median(direct, 'p50_ttft_ms'):+.2f} ms; "
                  f"tokens/s through the gateway: {100 * median(through, 'output_throughput') / base_tps:.1f} % of "
                  f"direct (aim >= 98 %)")
            # CPU over each whole run (the benchmark client's startup included); the gateway's in the direct
            # runs is what it spends idle meanwhile, so the difference is what relaying the tokens cost.
            relay_cpu = median(through, "cpu_ms_per_token_gateway") - median(direct, "cpu_ms_per_token_gateway")
            vllm_cpu = median(direct, "cpu_ms_per_token_vllm")
            print(f"the gateway's CPU per relayed token: {relay_cpu:.3f} ms ({100 * relay_cpu / vllm_cpu:.1f} % of "
                  f"vLLM's own {vllm_cpu:.3f} ms): where they share the cores, the most tokens/s the gateway can keep "
                  f"is about {100 * vllm_cpu / (vllm_cpu + max(relay_cpu, 0.0)):.1f} % of direct")
            by_client, overheads = interleaved_ttft(url, gw.url, key, args)
            print(f"one-stream requests in {args.pairs} pairs (the same prompt to vLLM and through the gateway, back "
                  f"to back, by each client in a rotating order); added TTFT p50 = the median of the pairs' "
                  f"differences (aim <= 1 ms):")
            for client, pairs in by_client.items():
                d50, g50 = (statistics.median(side) for side in zip(*pairs, strict=True))
                print(f"  {client:8} TTFT p50 {d50:.2f} ms direct, {g50:.2f} ms gateway: added "
                      f"{statistics.median(g - d for d, g in pairs):+.2f} ms")
            print(f"  the gateway's own x-cogkit-overhead-ms (from the call's creation to the answer, less the "
                  f"upstream's time): p50 {statistics.median(overheads):.2f} ms")
            if not args.skip_cold_start:
                marks = cold_start(gw, key, "@bench/cold", process_dir)
                spawned, healthy_at, first = marks.get("spawned"), marks.get("healthy"), marks["first_token"]
                print(f"cold start from zero (request -> first token, vLLM process start included): {first:.1f} s")
                if spawned is not None and healthy_at is not None:
                    print(f"  request -> vLLM process started: {spawned:.2f} s (the gateway); process -> /health "
                          f"answers: {healthy_at - spawned:.1f} s (vLLM's own startup); /health -> first token: "
                          f"{first - healthy_at:.2f} s (the gateway noticing, routing, the first token)")
        finally:
            gw.close()


if __name__ == "__main__":
    main()
