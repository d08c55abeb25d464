"""A Cog model whose predict() streams an LLM's answer, token by token, from vLLM running in the
same container. setup() starts vLLM's OpenAI-compatible server on a local port (so the model's
own Python needs only httpx) and waits for its /health; predict() streams a chat completion and
reports vLLM's own token counts as metrics, so the platform bills what vLLM counted.

Settings (environment): COG_VLLM_MODEL (weights directory; default COG_WEIGHTS, else /src/model),
COG_VLLM_PYTHON (the python that has vllm; default this one), COG_VLLM_ARGS (more engine
arguments, e.g. "--max-model-len 4096 --gpu-memory-utilization 0.9"), COG_VLLM_STARTUP_TIMEOUT.
"""
import json
import os
import shlex
import socket
import subprocess
import sys
import time

import httpx

from cog import BasePredictor, ConcatenateIterator, Input, emit_metric, streaming


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In vLLM's process, before it runs: SIGTERM it when this predictor's process dies, however it dies
    (a killed worker would otherwise leave vLLM holding the GPU). Linux's PR_SET_PDEATHSIG."""
    import ctypes
    import signal
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class Predictor(BasePredictor):
    def setup(self) -> None:
        model = os.environ.get("COG_VLLM_MODEL") or os.environ.get("COG_WEIGHTS") or "/src/model"
        python = os.environ.get("COG_VLLM_PYTHON") or sys.executable
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name",
                "model", "--host", "127.0.0.1", "--port", str(port), *shlex.split(os.environ.get("COG_VLLM_ARGS", ""))]
        print("starting vLLM:", " ".join(argv), flush=True)
        self.server = subprocess.Popen(argv, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + float(os.environ.get("COG_VLLM_STARTUP_TIMEOUT", "900"))
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"vLLM exited with code {self.server.returncode} while loading {model}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM did not answer /health within the startup timeout ({model})")
            time.sleep(0.5)
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(connect=5, read=600, write=60, pool=5))

    @streaming  # clients may ask for server-sent events (Accept: text/event-stream), as Cog requires
    def predict(
        self,
        prompt: str = Input(description="The user's message", min_length=1),
        system_prompt: str = Input(description="A system prompt (empty: none)", default=""),
        max_tokens: int = Input(description="Tokens to generate at most", default=128, ge=1, le=32768),
        temperature: float = Input(description="Sampling temperature (0: greedy)", default=0.7, ge=0, le=5),
        top_p: float = Input(description="Nucleus sampling", default=1.0, gt=0, le=1),
        seed: int = Input(description="Sampling seed (-1: random)", default=-1),
    ) -> ConcatenateIterator[str]:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
            [{"role": "user", "content": prompt}]
        body = {"model": "model", "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                "top_p": top_p, "stream": True, "stream_options": {"include_usage": True}}
        if seed >= 0:
            body["seed"] = seed
        with self.client.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code >= 400:
                raise ValueError(f"vLLM refused the request: {resp.read().decode(errors='replace')[:500]}")
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
                usage = chunk.get("usage")
                if usage:
                    emit_metric("input_token_count", usage["prompt_tokens"])
                    emit_metric("output_token_count", usage["completion_tokens"])
