"""Where replicas run: one interface (base.Runtime), one implementation per kind (docker now)."""
from scheduler.runtimes.base import ReplicaSpec, Runtime, RuntimeError_, StartedReplica

__all__ = ["ReplicaSpec", "Runtime", "RuntimeError_", "StartedReplica"]
