"""The `platform:` section of the gateway config: run replicas of pushed models here."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from server.platform.vllm import VllmDeploymentConfig


class PlatformConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    controller: bool = True                 # run the reconciliation loop in this process
    instance: str | None = None             # label of this platform's replicas; default: from the store URL
    interval: float = 1.0                   # seconds between reconcile passes (a waiting request wakes it at once)
    stop_replicas_on_exit: bool = True      # a clean stop leaves no container behind (kill -9 leaves them: adopted)
    inventory: str | None = None            # a simulated GPU inventory (YAML); default: NVML if present, else none
    ray_address: str | None = None          # run replicas on this Ray cluster (its node agents), not the local engine
    vllm: list[VllmDeploymentConfig] = Field(default_factory=list)   # engine: vllm deployments (server/platform/vllm.py)
    process_dir: str | None = None          # process replicas' pid records and logs; default: <home>/platform-processes
