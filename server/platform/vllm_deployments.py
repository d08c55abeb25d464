"""`engine: vllm` deployments in the store: their body checked field by field (a bad one is a 4xx
naming it), kept in platform_deployments beside Cog ones (engine_spec: the weights and the engine
arguments), and turned into what the controller runs: vLLM's OpenAI server as a local process, or as
a container of the platform's GPU image (`platform.vllm_image`) with the weights bind-mounted.

    POST /v1/deployments   (admin key: it names a path on the platform's host)
    {"name": "acme/tiny", "engine": "vllm", "model": "/models/tiny",
     "args": {"dtype": "float32", "max_model_len": 512, "tensor_parallel_size": 1},
     "extra_args": ["--override-generation-config", "{\\"temperature\\": 0.5}"],
     "min_replicas": 0, "max_replicas": 2, "hardware": {"gpus": 1}}
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from scheduler.controller import DesiredDeployment
from server.platform.config import PlatformConfig
from server.platform.vllm import ENGINE, VllmDeploymentConfig

MB = 1_000_000
FLAG = re.compile(r"^[a-z][a-z0-9_-]*$")
SET_BY_PLATFORM = {"model", "host", "port", "served_model_name"}
DTYPES = {"auto", "half", "float16", "bfloat16", "float", "float32"}
# vLLM's own defaults differ from a Cog model's: it batches many requests per replica and loads slowly.
DEFAULTS = {"target_concurrency": 8.0, "queue_limit": 256, "cold_start_timeout": 600.0}


class EngineFieldError(ValueError):
    """A bad field of an engine deployment; the message names it. (RegistryError is made of it.)"""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def _int(minimum: int) -> Any:
    def check(key: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise EngineFieldError(f"args.{key}: expected an integer of at least {minimum}")
        return value
    return check


def _fraction(key: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise EngineFieldError(f"args.{key}: expected a number above 0 and at most 1 (a share of GPU memory)")
    return float(value)


def _flag(key: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise EngineFieldError(f"args.{key}: expected true or false")
    return value


def _dtype(key: str, value: Any) -> Any:
    if value not in DTYPES:
        raise EngineFieldError(f"args.{key}: expected one of {', '.join(sorted(DTYPES))}")
    return value


def _text(key: str, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        raise EngineFieldError(f"args.{key}: expected a non-empty string")
    return value


# The engine arguments the platform checks itself (it also reads tensor/pipeline sizes for GPUs);
# any other --flag of vLLM's server passes as given, and vLLM's own start-up says if it is wrong.
KNOWN_ARGS = {
    "dtype": _dtype, "max_model_len": _int(1), "tensor_parallel_size": _int(1), "pipeline_parallel_size": _int(1),
    "gpu_memory_utilization": _fraction, "enable_prefix_caching": _flag, "enforce_eager": _flag,
    "max_num_seqs": _int(1), "max_num_batched_tokens": _int(1), "seed": _int(0), "trust_remote_code": _flag,
    "quantization": _text, "kv_cache_dtype": _text,
}


def check_args(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EngineFieldError("args: expected an object of vLLM engine arguments, e.g. {\"max_model_len\": 512}")
    out: dict[str, Any] = {}
    for key, arg in value.items():
        if not isinstance(key, str) or not FLAG.match(key):
            raise EngineFieldError(f"args.{key}: expected an engine argument name like max_model_len")
        name = key.replace("-", "_")
        if name in SET_BY_PLATFORM:
            raise EngineFieldError(f"args.{key}: set by the platform (the deployment's model and replica port)")
        if name in KNOWN_ARGS:
            arg = KNOWN_ARGS[name](key, arg)
        elif arg is not None and not isinstance(arg, (str, int, float, bool)):
            raise EngineFieldError(f"args.{key}: expected a string, number or boolean (a list goes in extra_args)")
        out[name] = arg
    return out


KINDS = {int: "an integer", float: "a number", bool: "true or false"}


def _spec_field(body: dict[str, Any], key: str, kind: type, default: Any, check: Any = None) -> Any:
    value = body.get(key, default)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise EngineFieldError(f"{key}: expected {KINDS[kind]}")
    if check is not None and not check(value):
        raise EngineFieldError(f"{key}: must be {check.__doc__}")
    return value


def _positive(value: Any) -> bool:
    """above 0"""
    return bool(value > 0)


def _non_negative(value: Any) -> bool:
    """at least 0"""
    return bool(value >= 0)


SPEC_FIELDS = {"model", "args", "extra_args", "python", "max_concurrency", "setup_timeout", "prefix_affinity",
               "input_price", "output_price", "public", "sleep_when_idle"}


def check_spec(body: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The engine part of a vLLM deployment (engine_spec), each field checked; `base`: a PATCH's current one."""
    merged = {**(base or {}), **{k: v for k, v in body.items() if k in SPEC_FIELDS}}
    model = merged.get("model")
    if not isinstance(model, str) or not model.strip():
        raise EngineFieldError("model: expected the weights directory of an engine: vllm deployment "
                               "(config.json, tokenizer, safetensors), e.g. /models/llama")
    model = os.path.expanduser(model)
    if not os.path.isabs(model):
        raise EngineFieldError(f"model: expected an absolute path on the platform's host, not {model!r}")
    extra = merged.get("extra_args", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise EngineFieldError("extra_args: expected a list of strings, passed to vLLM's server as they are")
    if any(a.split("=", 1)[0].lstrip("-").replace("-", "_") in SET_BY_PLATFORM for a in extra if a.startswith("--")):
        raise EngineFieldError("extra_args: --model, --host, --port and --served-model-name are set by the platform")
    python = merged.get("python")
    if python is not None and (not isinstance(python, str) or not python):
        raise EngineFieldError("python: expected the path of vLLM's python (default: the platform's)")
    return {
        "model": model, "args": check_args(merged.get("args", {})), "extra_args": extra, "python": python,
        "max_concurrency": _spec_field(merged, "max_concurrency", int, 64, _positive),
        "setup_timeout": _spec_field(merged, "setup_timeout", float, 900.0, _positive),
        "prefix_affinity": _spec_field(merged, "prefix_affinity", bool, True),
        "input_price": _spec_field(merged, "input_price", float, 0.0, _non_negative),
        "output_price": _spec_field(merged, "output_price", float, 0.0, _non_negative),
        "public": _spec_field(merged, "public", bool, True),
        "sleep_when_idle": _spec_field(merged, "sleep_when_idle", bool, False),
    }


def check_gpus(spec: dict[str, Any], hardware: dict[str, Any]) -> None:
    """tensor_parallel_size x pipeline_parallel_size GPUs per replica, when it has GPUs at all."""
    args = spec["args"]
    wanted = int(args.get("tensor_parallel_size") or 1) * int(args.get("pipeline_parallel_size") or 1)
    gpus = int(hardware.get("gpus", 0))
    if gpus and wanted > gpus:
        raise EngineFieldError(f"args.tensor_parallel_size: {wanted} GPUs per replica (tensor x pipeline "
                               f"parallel size), but hardware.gpus is {gpus}")


def body_of(config: VllmDeploymentConfig) -> dict[str, Any]:
    """A `platform.vllm:` entry of the gateway config as a deployment body (seeded into the store)."""
    hardware = {k: v for k, v in (("gpus", config.gpus), ("gpu_memory_mb", config.gpu_memory_mb)) if v}
    return {"name": config.name, "engine": ENGINE, "model": config.model, "args": config.args,
            "extra_args": config.extra_args, "env": config.env, "python": config.python,
            "min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
            "idle_timeout": config.idle_timeout, "target_concurrency": config.target_concurrency,
            "queue_limit": config.queue_limit, "cold_start_timeout": config.cold_start_timeout,
            "setup_timeout": config.setup_timeout, "max_concurrency": config.max_concurrency,
            "prefix_affinity": config.prefix_affinity, "input_price": config.input_price,
            "output_price": config.output_price, "sleep_when_idle": config.sleep_when_idle, "hardware": hardware}


def desired(d: Any, platform: PlatformConfig) -> DesiredDeployment:
    """What the controller runs for a stored vLLM deployment `d` (a deployments.Deployment): a local
    process from vLLM's virtualenv, or, with `platform.vllm_image`, a container of that image on the
    host network with the weights (and `platform.vllm_mounts`) bind-mounted read-only at the same paths."""
    spec, hw = d.engine_spec, d.hardware
    image = platform.vllm_image or ""
    config = VllmDeploymentConfig(
        name=d.name, model=spec["model"], args=spec["args"], extra_args=spec["extra_args"], env=d.env,
        python=spec.get("python") or (platform.vllm_python if image else None),
        min_replicas=d.min_replicas, max_replicas=d.max_replicas, idle_timeout=d.idle_timeout,
        target_concurrency=d.target_concurrency, max_concurrency=spec["max_concurrency"],
        queue_limit=d.queue_limit, cold_start_timeout=d.cold_start_timeout, setup_timeout=spec["setup_timeout"],
        prefix_affinity=spec["prefix_affinity"], input_price=spec["input_price"], output_price=spec["output_price"],
        sleep_when_idle=bool(spec.get("sleep_when_idle", False)), gpus=int(hw.get("gpus", 0)),
        gpu_memory_mb=int(hw.get("gpu_memory_mb", 0)))
    mounts = (spec["model"], *platform.vllm_mounts) if image else ()
    return dataclasses.replace(config.desired(), image=image, mounts=mounts, cpus=hw.get("cpus"),
                               memory_bytes=int(hw["memory_mb"]) * MB if hw.get("memory_mb") else None)
