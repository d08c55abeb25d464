"""The platform's tables: namespaces, models, versions, deployments, predictions.

Their DDL is in ddl.py (keep both in step), applied by server/store/migrations.py (steps 4 and 5).
"""
from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Integer, Table, Text

from server.store.tables import JSONType, UTCDateTime, created_column, metadata, tenant_column, updated_column

namespaces = Table(
    "platform_namespaces", metadata,
    Column("name", Text, primary_key=True),
    tenant_column(),                                         # who may push models into it
    created_column(),
)

models = Table(
    "platform_models", metadata,
    Column("namespace", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    tenant_column(),
    Column("public", Boolean, nullable=False),
    Column("description", Text, nullable=False),
    created_column(),
)

versions = Table(
    "platform_versions", metadata,
    Column("id", Text, primary_key=True),                    # from ns/model + digest (registry.version_id)
    Column("namespace", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("image", Text, nullable=False),                   # the pushed reference (with its tag)
    Column("digest", Text, nullable=False),                  # sha256:... manifest digest, pulled by
    Column("tag", Text),
    Column("openapi_schema", JSONType, nullable=False),
    Column("cog_config", JSONType, nullable=False),
    Column("hardware", JSONType, nullable=False),            # {"gpus", "gpu_memory_mb", "cpus", "memory_mb"}
    created_column(),
)

deployments = Table(
    "platform_deployments", metadata,
    Column("name", Text, primary_key=True),                  # "ns/model" by default
    tenant_column(),
    Column("namespace", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("version_id", Text),                              # NULL: the model's latest version
    Column("min_replicas", Integer, nullable=False),
    Column("max_replicas", Integer, nullable=False),
    Column("idle_timeout", Float, nullable=False),           # seconds idle before a replica is drained
    Column("target_concurrency", Float, nullable=False),     # outstanding requests per replica to aim for
    Column("queue_limit", Integer, nullable=False),          # requests waiting for a replica, at most
    Column("cold_start_timeout", Float, nullable=False),
    Column("env", JSONType, nullable=False),
    Column("hardware", JSONType, nullable=False),
    Column("status", JSONType, nullable=False),              # written by the controller: replicas, last failure
    created_column(),
    updated_column(),
    Column("engine", Text, nullable=False, server_default="cog"),   # "cog" (a pushed image) or "vllm"
    Column("engine_spec", JSONType),                         # engine: vllm: weights, engine args (vllm_deployments.py)
)

predictions = Table(
    "platform_predictions", metadata,
    Column("id", Text, primary_key=True),
    tenant_column(),
    Column("model", Text, nullable=False),                   # "ns/model"
    Column("version_id", Text, nullable=False),
    Column("status", Text, nullable=False),                  # starting | processing | succeeded | failed | canceled
    Column("input", JSONType, nullable=False),
    Column("output", JSONType),
    Column("error", Text),
    Column("logs", Text, nullable=False),
    Column("metrics", JSONType, nullable=False),             # predict_time, token counts, cold_start_time
    Column("webhook", Text),
    Column("webhook_events_filter", JSONType, nullable=False),
    created_column(),
    Column("started_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
)
