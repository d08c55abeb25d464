"""`engine: vllm` deployments: an LLM served by vLLM's OpenAI-compatible server, declared in the
gateway config's `platform.vllm` list (the operator's YAML; seeded into the store on start) or through
`/v1/deployments` (vllm_deployments.py), run by the same controller as Cog replicas (as a local
process from vLLM's own virtualenv, or a container of `platform.vllm_image`), and called as
`@ns/model` through every client format, like a third-party chat model.

    platform:
      vllm:
        - name: acme/tiny-llama           # the model string is @acme/tiny-llama
          model: /models/tiny-llama       # a weights directory (config.json, tokenizer, safetensors)
          args: {dtype: float32, max_model_len: 512, enforce_eager: true, enable_prefix_caching: true}
          env: {VLLM_CPU_KVCACHE_SPACE: "1"}
          min_replicas: 1
          max_replicas: 2
          sleep_when_idle: true           # idle: vLLM sleep mode (woken on demand) instead of stopped
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from scheduler.autoscaler import ScalePolicy
from scheduler.controller import DesiredDeployment
from scheduler.vllm_sleep import DEV_MODE_ENV, sleep_mode_args

VLLM_PROVIDER = "cogkit-vllm"            # the Target.provider of every vLLM deployment
ENGINE = "vllm"
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$")


def default_python() -> str:
    """vLLM's virtualenv (scripts/install makes it): COGKIT_VLLM_PYTHON, else ~/.cache/cogkit/vllm-venv."""
    return os.environ.get("COGKIT_VLLM_PYTHON") or str(Path.home() / ".cache/cogkit/vllm-venv/bin/python")


class VllmDeploymentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str                                 # ns/model: called as @ns/model
    model: str                                # weights directory (or anything vLLM's --model takes)
    args: dict[str, Any] = Field(default_factory=dict)   # engine arguments: {max_model_len: 512, ...}
    extra_args: list[str] = Field(default_factory=list)  # more of vLLM's argv, as they are
    env: dict[str, str] = Field(default_factory=dict)
    python: str | None = None                 # vLLM's python; default: default_python()
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(1, ge=1)
    idle_timeout: float = Field(300.0, ge=0)
    target_concurrency: float = Field(8.0, gt=0)    # vLLM batches: many requests per replica
    max_concurrency: int = Field(64, ge=1)          # outstanding requests one replica gets at most
    queue_limit: int = Field(256, ge=0)
    cold_start_timeout: float = Field(600.0, gt=0)
    setup_timeout: float = Field(900.0, gt=0)       # vLLM loads, profiles and warms up before /health
    prefix_affinity: bool = True                    # a long shared prompt prefix goes back to its replica
    sleep_when_idle: bool = False                   # idle: vLLM sleep mode instead of stopping (scheduler/vllm_sleep.py)
    gpus: int = Field(0, ge=0)
    gpu_memory_mb: int = Field(0, ge=0)
    input_price: float = Field(0.0, ge=0)           # per token, for spend
    output_price: float = Field(0.0, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("expected ns/model (lowercase letters, digits, . _ -)")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return os.path.expanduser(value)

    @field_validator("args")
    @classmethod
    def _args(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in ("model", "host", "port", "served_model_name"):
            if key.replace("-", "_") in {k.replace("-", "_") for k in value}:
                raise ValueError(f"{key} is set by the platform, not in args")
        return value

    def command(self) -> tuple[str, ...]:
        """vLLM's OpenAI server on 127.0.0.1:{port}, serving the weights under the deployment's name."""
        argv = [self.python or default_python(), "-m", "vllm.entrypoints.openai.api_server",
                "--model", self.model, "--served-model-name", self.name, "--host", "127.0.0.1", "--port", "{port}"]
        for key, value in self.args.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is False or value is None:
                continue
            else:
                argv += [flag, value if isinstance(value, str) else str(value)]
        if self.sleep_when_idle:
            argv += sleep_mode_args(gpu_host=self.gpus > 0)
        return (*argv, *self.extra_args)

    def desired(self) -> DesiredDeployment:
        policy = ScalePolicy(self.min_replicas, self.max_replicas, self.target_concurrency, self.idle_timeout)
        return DesiredDeployment(
            name=self.name, model=self.name, version_id=f"vllm:{self.model}", image="", max_concurrency=self.max_concurrency,
            policy=policy, env={"VLLM_NO_USAGE_STATS": "1", **(DEV_MODE_ENV if self.sleep_when_idle else {}), **self.env},
            gpus=self.gpus,
            gpu_memory_bytes=self.gpu_memory_mb * 1_000_000, queue_limit=self.queue_limit,
            cold_start_timeout=self.cold_start_timeout, setup_timeout=self.setup_timeout,
            engine=ENGINE, command=self.command(), sleep_when_idle=self.sleep_when_idle)
