"""The platform tables' DDL (see tables.py), one migration step of server/store/migrations.py.
No imports: the store's migrations load it while the store package itself is loading."""

MIGRATION: list[str] = [
    """CREATE TABLE platform_namespaces (
        name TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        created_at {ts} NOT NULL)""",
    """CREATE TABLE platform_models (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        public {bool} NOT NULL,
        description TEXT NOT NULL,
        created_at {ts} NOT NULL,
        PRIMARY KEY (namespace, name))""",
    """CREATE TABLE platform_versions (
        id TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        model TEXT NOT NULL,
        image TEXT NOT NULL,
        digest TEXT NOT NULL,
        tag TEXT,
        openapi_schema {json} NOT NULL,
        cog_config {json} NOT NULL,
        hardware {json} NOT NULL,
        created_at {ts} NOT NULL)""",
    "CREATE INDEX platform_versions_model ON platform_versions (namespace, model, created_at)",
    """CREATE TABLE platform_deployments (
        name TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        namespace TEXT NOT NULL,
        model TEXT NOT NULL,
        version_id TEXT,
        min_replicas INTEGER NOT NULL,
        max_replicas INTEGER NOT NULL,
        idle_timeout {float} NOT NULL,
        target_concurrency {float} NOT NULL,
        queue_limit INTEGER NOT NULL,
        cold_start_timeout {float} NOT NULL,
        env {json} NOT NULL,
        hardware {json} NOT NULL,
        status {json} NOT NULL,
        created_at {ts} NOT NULL,
        updated_at {ts} NOT NULL)""",
    """CREATE TABLE platform_predictions (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        model TEXT NOT NULL,
        version_id TEXT NOT NULL,
        status TEXT NOT NULL,
        input {json} NOT NULL,
        output {json},
        error TEXT,
        logs TEXT NOT NULL,
        metrics {json} NOT NULL,
        webhook TEXT,
        webhook_events_filter {json} NOT NULL,
        created_at {ts} NOT NULL,
        started_at {ts},
        completed_at {ts})""",
    "CREATE INDEX platform_predictions_tenant ON platform_predictions (tenant_id, created_at)",
]

# engine: vllm deployments in the same table: which engine, and its weights and engine arguments.
ENGINES_MIGRATION: list[str] = [
    "ALTER TABLE platform_deployments ADD COLUMN engine TEXT NOT NULL DEFAULT 'cog'",
    "ALTER TABLE platform_deployments ADD COLUMN engine_spec {json}",
]
