"""Node-local weight snapshots (see cache.py)."""

from scheduler.snapshots.cache import (
    Origin,
    Snapshot,
    SnapshotCache,
    SnapshotError,
    SnapshotFile,
    directory_origin,
    read_safetensors,
)

__all__ = ["Origin", "Snapshot", "SnapshotCache", "SnapshotError", "SnapshotFile", "directory_origin",
           "read_safetensors"]
