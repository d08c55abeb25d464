"""vLLM sleep mode, the fastest rung of the cold-start ladder: an idle vLLM replica is put to sleep
(its weights offloaded to host memory and its KV cache dropped, level 1) instead of stopped, and
woken when its model is asked for again: seconds instead of a cold start.

The endpoints are vLLM's development API, served only with VLLM_SERVER_DEV_MODE=1:
`POST /sleep?level=1`, `POST /wake_up`, `GET /is_sleeping`. Freeing GPU memory also needs
`--enable-sleep-mode`, which vLLM refuses where its platform has no sleep mode (CPU: "Sleep mode is
not supported on current platform", vllm/config/model.py), so it is passed on GPU hosts only. On
CPU the engine still sleeps and wakes (paused, `is_sleeping` true) while its worker ignores the
memory part, which is what lets the whole protocol be tested without a GPU.
"""
from __future__ import annotations

import httpx

DEV_MODE_ENV = {"VLLM_SERVER_DEV_MODE": "1"}
SLEEP_LEVEL = 1            # weights to host memory, KV cache dropped; level 2 drops the weights too
# What a sleeping replica still holds on its GPU (CUDA context, allocator pools): placement counts it
# as promised until the replica is woken or stopped.
SLEEPING_HELD_BYTES = 1 * 2**30


def sleep_mode_args(gpu_host: bool) -> list[str]:
    """The server flag that makes sleeping free GPU memory: on GPU hosts only (CPU refuses it)."""
    return ["--enable-sleep-mode"] if gpu_host else []


class SleepError(Exception):
    """The replica did not go to sleep or wake up; the message says which call and what came back."""


async def is_sleeping(http: httpx.AsyncClient, url: str) -> bool:
    try:
        response = await http.get(url + "/is_sleeping")
    except httpx.HTTPError as e:
        raise SleepError(f"GET /is_sleeping: {e.__class__.__name__}: {e}") from None
    if response.status_code != 200:
        raise SleepError(f"GET /is_sleeping answered {response.status_code} (is VLLM_SERVER_DEV_MODE=1 set?)")
    return bool(response.json().get("is_sleeping"))


async def put_to_sleep(http: httpx.AsyncClient, url: str, timeout: float = 60.0) -> None:
    """Sleep, then check that the engine says it sleeps."""
    await _call(http, url, f"/sleep?level={SLEEP_LEVEL}", timeout)
    if not await is_sleeping(http, url):
        raise SleepError("POST /sleep answered but /is_sleeping is still false")


async def wake_up(http: httpx.AsyncClient, url: str, timeout: float = 60.0) -> None:
    """Wake, then check that the engine is awake."""
    await _call(http, url, "/wake_up", timeout)
    if await is_sleeping(http, url):
        raise SleepError("POST /wake_up answered but /is_sleeping is still true")


async def _call(http: httpx.AsyncClient, url: str, path: str, timeout: float) -> None:
    try:
        response = await http.post(url + path, timeout=timeout)
    except httpx.HTTPError as e:
        raise SleepError(f"POST {path}: {e.__class__.__name__}: {e}") from None
    if response.status_code != 200:
        raise SleepError(f"POST {path} answered {response.status_code}: {response.text[:200]}")
