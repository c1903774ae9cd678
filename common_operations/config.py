"""Typed settings: ``configs/config.yaml`` (or ``CONFIG_FILE``) overridden by environment variables.

Environment variables use the ``CO_`` prefix with ``__`` for nesting (``CO_HTTP__PORT=8080``); the
well-known ``DATABASE_URL``, ``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE`` and ``REDIS_URL`` are read
as they are.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from common_operations.domain.errors import UnknownTaskType
from common_operations.domain.workflow_types import (
    AutoRetrySpec,
    HandlerKind,
    HandlerSpec,
    RetrySpec,
    RunLimits,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "configs" / "config.yaml"


class RetrySettings(BaseModel):
    """Exponential backoff of a delegated activity."""

    maximum_attempts: int = Field(5, ge=1)
    initial_interval: float = Field(1.0, gt=0)
    backoff_coefficient: float = Field(2.0, ge=1.0)
    maximum_interval: float = Field(60.0, gt=0)


class AutoRetrySettings(BaseModel):
    """Automatic retries of a failed task by its workflow, after a durable timer."""

    attempts: int = Field(1, ge=1, le=100, description="automatic retries after the first attempt")
    initial_interval: float = Field(30.0, gt=0, description="seconds before the first retry")
    backoff_coefficient: float = Field(2.0, ge=1.0)
    maximum_interval: float = Field(3600.0, gt=0, description="longest wait between retries, seconds")


class TaskTypeSettings(BaseModel):
    """How one task type is handled."""

    kind: HandlerKind = HandlerKind.EXTERNAL
    task_queue: str | None = None
    activity: str | None = None
    heartbeat_timeout: float = Field(300.0, gt=0, description="seconds of worker silence tolerated")
    retry: RetrySettings = RetrySettings()
    auto_retry: AutoRetrySettings | None = None
    # Who may report progress (UpdateTaskProgress) on tasks of this type: principal subjects with
    # the `service` role, or "*" for any of them. Admins always may; end users never.
    reporters: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _delegated_needs_a_target(self) -> TaskTypeSettings:
        # Refused when the configuration loads, not by a failing workflow at run time.
        if self.kind is HandlerKind.DELEGATED and not (self.activity and self.task_queue):
            raise ValueError("a delegated task type needs both `activity` and `task_queue`")
        return self

    def to_spec(self) -> HandlerSpec:
        """The workflow-side description of this handler."""
        auto = self.auto_retry
        return HandlerSpec(
            kind=self.kind,
            task_queue=self.task_queue,
            activity=self.activity,
            heartbeat_timeout_seconds=self.heartbeat_timeout,
            retry=RetrySpec(
                maximum_attempts=self.retry.maximum_attempts,
                initial_interval_seconds=self.retry.initial_interval,
                backoff_coefficient=self.retry.backoff_coefficient,
                maximum_interval_seconds=self.retry.maximum_interval,
            ),
            auto_retry=AutoRetrySpec(
                attempts=auto.attempts,
                initial_interval_seconds=auto.initial_interval,
                backoff_coefficient=auto.backoff_coefficient,
                maximum_interval_seconds=auto.maximum_interval,
            )
            if auto is not None
            else None,
        )


class OperationsSettings(BaseModel):
    """Task execution rules."""

    task_timeout: float = Field(86400.0, gt=0, description="seconds one run may take")
    default_max_retries: int = Field(3, ge=0)
    cancel_wait: float = Field(10.0, ge=0, description="seconds CancelTask waits for cleanup")
    reconcile_interval: float = Field(15.0, gt=0)
    orphan_grace: float = Field(30.0, ge=0, description="seconds before a run-less task is restarted")
    progress_interval: float = Field(
        1.0, ge=0, description="seconds between mirror writes of a task's coalesced progress"
    )
    max_reports_per_run: int = Field(
        1000, ge=10, le=1800, description="progress reports one workflow run takes before continuing as new"
    )
    remembered_report_ids: int = Field(
        500, ge=1, le=10_000, description="report ids kept across runs so a retried report applies once"
    )
    max_in_flight_reports: int = Field(
        5, ge=1, le=100, description="progress reports of one task this process sends to Temporal at once"
    )
    report_queue_timeout: float = Field(
        30.0, gt=0, description="seconds a report may wait for its turn before it is answered 429"
    )
    task_types: dict[str, TaskTypeSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bulk_action_type(self) -> OperationsSettings:
        # Built in: POST /api/v1/operations/bulk-actions needs a type of kind bulk_action. A
        # configuration written before bulk actions existed gets one with the defaults.
        if not any(t.kind is HandlerKind.BULK_ACTION for t in self.task_types.values()):
            self.task_types.setdefault(
                "bulk_action", TaskTypeSettings(kind=HandlerKind.BULK_ACTION, heartbeat_timeout=60)
            )
        return self

    def run_limits(self) -> RunLimits:
        """How a workflow run bounds its history and coalesces reports."""
        return RunLimits(
            progress_interval_seconds=self.progress_interval,
            max_reports_per_run=self.max_reports_per_run,
            remembered_report_ids=self.remembered_report_ids,
        )

    def handler_for(self, task_type: str) -> HandlerSpec:
        """The handler of ``task_type``.

        Raises:
            UnknownTaskType: the type is not configured (the message lists the allowed ones).
        """
        settings = self.task_types.get(task_type)
        if settings is None:
            allowed = sorted(self.task_types)
            raise UnknownTaskType(
                f"unknown taskType {task_type!r}; allowed: {', '.join(allowed)}",
                field="taskType",
                allowed=allowed,
            )
        return settings.to_spec()


class HttpSettings(BaseModel):
    """REST listener."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # TLS: both set → HTTPS only.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # CORS is off unless origins are listed (exact origins; no wildcard with credentials).
    cors_origins: list[str] = Field(default_factory=list)
    # The OpenAPI document and Swagger UI under /docs.
    docs: bool = True
    # Roles that may read /metrics and /health/detailed (empty: anyone who reaches the port).
    internal_roles: list[str] = Field(default_factory=lambda: ["admin", "operator"])

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("http TLS needs both tls_cert_file and tls_key_file")
        return self


class GrpcSettings(BaseModel):
    """gRPC listener."""

    host: str = "127.0.0.1"
    port: int = Field(9000, ge=0, le=65535)
    # TLS: both set → a TLS listener. mTLS: tls_client_ca_file with require_client_cert: every client
    # presents a certificate that CA signed, and its subject (common name) is the principal.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    require_client_cert: bool = False
    # The server reflection service (grpcurl without the .proto files).
    reflection: bool = True

    @model_validator(mode="after")
    def _tls_consistent(self) -> GrpcSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("grpc TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("grpc.tls_client_ca_file needs a TLS listener (tls_cert_file, tls_key_file)")
        # gRPC Python cannot ask for an optional client certificate: with a client CA it requires one.
        if (self.tls_client_ca_file is not None) != self.require_client_cert:
            raise ValueError("grpc.require_client_cert and grpc.tls_client_ca_file go together (mTLS)")
        return self


class JwtSettings(BaseModel):
    """How bearer tokens are verified (any of jwks_url, public_key(_file), secret)."""

    jwks_url: str | None = None
    # A PEM public key (RS256/ES256), inline or from a file.
    public_key: str | None = None
    public_key_file: Path | None = None
    # HS256 shared secret (also JWT_SECRET or the file named by JWT_SECRET_FILE).
    secret: SecretStr | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    issuer: str | None = None
    audience: str | None = None
    leeway: float = Field(30.0, ge=0, description="seconds of clock skew tolerated (exp, nbf, iat)")
    subject_claim: str = "sub"
    # Where the roles are: a claim name, dotted for nested claims ("realm_access.roles").
    roles_claim: str = "roles"
    jwks_cache_seconds: float = Field(300.0, gt=0, description="seconds a fetched JWKS is trusted")


class AuthSettings(BaseModel):
    """Who callers are.

    ``required``: every request but the public ones needs a bearer token, an API key or (gRPC) a
    verified client certificate. ``dev`` (the embedded `make run` default, loopback only): a request
    without credentials is the local admin; one with credentials is verified as usual.
    """

    mode: str = Field("required", pattern="^(dev|required)$")
    dev_subject: str = "local-admin"
    dev_roles: list[str] = Field(default_factory=lambda: ["admin"])
    jwt: JwtSettings = JwtSettings()
    api_key_header: str = "x-api-key"
    # Seconds between two writes of an API key's last use.
    api_key_touch_interval: float = Field(60.0, ge=0)
    # Roles of the subjects of verified gRPC client certificates (subject → roles).
    mtls_roles: dict[str, list[str]] = Field(default_factory=dict)


class RateLimit(BaseModel):
    """A token bucket: ``requests`` at once, refilled at ``requests`` per ``per_seconds``."""

    requests: int = Field(ge=1)
    per_seconds: float = Field(gt=0)


class LimitSettings(BaseModel):
    """Per-principal rate limits (Redis token buckets shared by replicas) and the unfinished-task cap."""

    enabled: bool = True
    # Operation → bucket per principal; "progress" is per principal and task.
    rates: dict[str, RateLimit] = Field(
        default_factory=lambda: {
            "create": RateLimit(requests=600, per_seconds=60),
            "progress": RateLimit(requests=50, per_seconds=1),
            "read": RateLimit(requests=3000, per_seconds=60),
            "change": RateLimit(requests=600, per_seconds=60),
            "admin": RateLimit(requests=300, per_seconds=60),
        }
    )
    # Tasks one owner (requestedBy) may have not yet finished; null: no cap.
    max_unfinished_tasks: int | None = Field(1000, ge=1)
    # Roles the limits do not apply to.
    exempt_roles: list[str] = Field(default_factory=list)


class TemporalSettings(BaseModel):
    """Temporal connection; an empty address starts the embedded dev server (``run`` only)."""

    address: str | None = None
    namespace: str = "default"
    task_queue: str = "common-operations"
    ui_port: int = 8233
    port: int = 7233
    # Off only for servers that cannot register custom search attributes (the time-skipping test
    # server); operators then lose the TaskType/TaskStatus filters.
    search_attributes: bool = True
    # Where the API and the worker share a process, new runs' first workflow task goes straight to
    # that worker (no round trip through the task queue).
    eager_start: bool = True
    # Base URL of the Temporal Web UI, for each task's `workflowUrl` (None: `run` uses its embedded
    # UI, http://127.0.0.1:<ui_port>; elsewhere no link).
    ui_base_url: str | None = None


class DatabaseSettings(BaseModel):
    """Postgres; an empty url starts embedded Postgres under ``data_dir``."""

    # repr=False here and on every other secret-bearing field: a URL can carry a password, and
    # settings get printed (repr, logs, tracebacks). The value itself stays a plain str for callers.
    url: str | None = Field(None, repr=False)
    pool_min: int = Field(2, ge=1)
    pool_max: int = Field(20, ge=1)


class S3Settings(BaseModel):
    """An S3-compatible endpoint (MinIO in docker-compose, AWS S3, moto in tests)."""

    endpoint: str = "127.0.0.1:9100"
    access_key: str = Field("minioadmin", repr=False)
    secret_key: str = Field("minioadmin", repr=False)
    secure: bool = False
    region: str = "us-east-1"
    bucket: str = "common-operations"
    create_bucket: bool = True
    # Where clients reach the endpoint, when it differs from the service's view (a proxy, a
    # container name): presigned URLs are signed for this host.
    public_endpoint: str | None = None


class StorageSettings(BaseModel):
    """Where task files live: ``local`` disk (served and signed by the REST API) or ``s3``."""

    backend: str = Field("local", pattern="^(local|s3)$")
    # local: objects under this directory (default: <data_dir>/storage).
    local_root: Path | None = None
    # local: base of the signed upload/download URLs (default: http://127.0.0.1:<http.port>).
    public_base_url: str | None = None
    # local: the HMAC key of signed URLs (default: generated once into <data_dir>/storage.key).
    signing_secret: str | None = Field(None, repr=False)
    s3: S3Settings = S3Settings()
    upload_url_ttl: float = Field(3600.0, gt=0, description="seconds an upload URL stays valid")
    download_url_ttl: float = Field(3600.0, gt=0, description="seconds a download URL stays valid")
    max_upload_bytes: int = Field(5 * 1024**3, gt=0, description="largest accepted input file")


class BulkSettings(BaseModel):
    """Built-in import and export jobs."""

    # Entity declarations, one YAML file per entity (relative to the project root).
    entities_dir: Path = PROJECT_ROOT / "configs" / "entities"
    # Databases the postgres sinks name (entity `sink.database`); an empty url is the service's
    # own Postgres server with the database name `commerce` (created on start).
    databases: dict[str, str | None] = Field(
        default_factory=lambda: dict[str, str | None](commerce=None), repr=False
    )
    chunk_rows: int = Field(5000, ge=1, le=100_000, description="rows one import chunk commits at once")
    heartbeat_timeout: float = Field(30.0, gt=0, description="seconds a bulk activity may stay silent")
    breaker_reset_after: float = Field(
        30.0, gt=0, description="seconds an http sink's open circuit fails fast before one trial call"
    )
    retention_days: float = Field(30.0, gt=0, description="final tasks older than this are deleted")
    retention_schedule: str = Field("0 3 * * *", description="cron of the retention job (UTC)")

    @field_validator("entities_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value if value.is_absolute() else PROJECT_ROOT / value


class EventTopics(BaseModel):
    """The pub/sub topic of each kind of event (``none``: the kind is not published)."""

    created: str = "operations.task.created"
    progress: str = "operations.task.progress"
    completed: str = "operations.task.completed"
    failed: str = "operations.task.failed"
    cancelled: str = "operations.task.cancelled"
    retried: str = "operations.task.retried"
    settings_changed: str = "settings.changed"
    messages_changed: str = "messages.changed"


class EventSettings(BaseModel):
    """The outbox relay: task events and settings/messages changes to pub/sub, at least once."""

    # none: events are marked relayed without being sent; dapr: the sidecar's PublishEvent (gRPC);
    # redis: Redis Streams laid out as Dapr's pubsub.redis component writes them.
    backend: str = Field("none", pattern="^(none|dapr|redis)$")
    pubsub_name: str = "pubsub-redis"
    source: str = Field("common-operations", description="CloudEvents `source` of every event")
    topics: EventTopics = EventTopics()
    # redis backend: the Redis to write streams to (null: the service's redis_url).
    redis_url: str | None = Field(None, repr=False)
    stream_maxlen: int | None = Field(None, ge=1, description="approximate MAXLEN of each stream")
    # dapr backend: the sidecar (also read from DAPR_GRPC_ENDPOINT / DAPR_HTTP_ENDPOINT /
    # DAPR_API_TOKEN); an unset gRPC endpoint is the sidecar's default, 127.0.0.1:50001.
    dapr_grpc_endpoint: str | None = None
    dapr_http_endpoint: str | None = None
    dapr_api_token: str | None = Field(None, repr=False)
    sweep_interval: float = Field(2.0, gt=0, description="seconds between sweeps of unrelayed events")
    lease_seconds: float = Field(30.0, gt=0, description="how long a relay holds a stream it publishes")
    batch_size: int = Field(500, ge=1, le=10_000, description="events one sweep claims at most")
    publish_timeout: float = Field(5.0, gt=0, description="seconds one publish may take")


class WebhookSettings(BaseModel):
    """Signed POSTs of a task's final state to its ``callbackUrl``."""

    # HMAC-SHA256 key of the signature header (also read from WEBHOOK_SECRET). Unset: a task with a
    # callbackUrl is refused, since nothing unsigned is ever sent.
    secret: str | None = Field(None, repr=False)
    # Loopback, link-local and private addresses are refused unless allowed here.
    allow_private_addresses: bool = False
    # Hosts (exact names or IP literals) allowed even when they resolve to a private address.
    allowed_hosts: list[str] = Field(default_factory=list)
    timeout: float = Field(10.0, gt=0, description="seconds one delivery attempt may take")
    retry: RetrySettings = RetrySettings(
        maximum_attempts=10, initial_interval=1.0, backoff_coefficient=2.0, maximum_interval=300.0
    )


class CacheSettings(BaseModel):
    """Redis read-through caches (the service works without Redis)."""

    task_ttl: float = Field(300.0, gt=0, description="seconds a cached task snapshot lives")
    settings_ttl: float = Field(300.0, gt=0, description="seconds a cached settings group lives")
    messages_ttl: float = Field(300.0, gt=0, description="seconds a cached message lives")


class SettingsGroupsSettings(BaseModel):
    """Where the schemas of the settings groups are declared (one YAML file per group)."""

    schemas_dir: Path = PROJECT_ROOT / "configs" / "settings"

    @field_validator("schemas_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value if value.is_absolute() else PROJECT_ROOT / value


class ObservabilitySettings(BaseModel):
    """Tracing, metrics and logs."""

    # OpenTelemetry tracing: on when true or when the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT
    # is set; exported over OTLP as the OTEL_* variables say (protocol, headers, sampler).
    tracing: bool = False
    service_name: str = "common-operations"
    # auto: JSON lines unless stderr is a terminal (then plain lines); json; plain.
    log_format: str = Field("auto", pattern="^(auto|json|plain)$")
    # Seconds between refreshes of the tasks-in-flight gauges from the mirror.
    gauge_interval: float = Field(15.0, gt=0)
    # The Temporal SDK's worker metrics on /metrics.
    temporal_metrics: bool = True
    # A worker started on its own (`common-operations worker`) serves /metrics on http.host and this
    # port (0: none); the API and `run` serve it on the REST port.
    worker_metrics_port: int = Field(9464, ge=0, le=65535)


class Settings(BaseSettings):
    """All settings of the service."""

    model_config = SettingsConfigDict(env_prefix="CO_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = PROJECT_ROOT / ".data"
    log_level: str = "INFO"
    http: HttpSettings = HttpSettings()
    grpc: GrpcSettings = GrpcSettings()
    temporal: TemporalSettings = TemporalSettings()
    database: DatabaseSettings = DatabaseSettings()
    operations: OperationsSettings = OperationsSettings()
    storage: StorageSettings = StorageSettings()
    bulk: BulkSettings = BulkSettings()
    events: EventSettings = EventSettings()
    webhooks: WebhookSettings = WebhookSettings()
    cache: CacheSettings = CacheSettings()
    settings_groups: SettingsGroupsSettings = SettingsGroupsSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitSettings = LimitSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "database_url"), repr=False
    )
    temporal_address: str | None = Field(
        None, validation_alias=AliasChoices("TEMPORAL_ADDRESS", "temporal_address")
    )
    temporal_namespace: str | None = Field(
        None, validation_alias=AliasChoices("TEMPORAL_NAMESPACE", "temporal_namespace")
    )
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "redis_url"), repr=False)
    dapr_grpc_endpoint: str | None = Field(None, validation_alias=AliasChoices("DAPR_GRPC_ENDPOINT"))
    dapr_http_endpoint: str | None = Field(None, validation_alias=AliasChoices("DAPR_HTTP_ENDPOINT"))
    dapr_api_token: str | None = Field(None, validation_alias=AliasChoices("DAPR_API_TOKEN"), repr=False)
    webhook_secret: str | None = Field(None, validation_alias=AliasChoices("WEBHOOK_SECRET"), repr=False)
    jwt_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("JWT_SECRET"))

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value if value.is_absolute() else PROJECT_ROOT / value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init arguments, then environment, then secret files (``<NAME>_FILE``), then the YAML file."""
        from common_operations.infra.secrets import SecretFilesSource

        path = Path(os.environ.get("CONFIG_FILE", DEFAULT_CONFIG_FILE))
        return (
            init_settings,
            env_settings,
            SecretFilesSource(settings_cls),
            YamlConfigSettingsSource(settings_cls, yaml_file=path),
        )

    def model_post_init(self, context: Any, /) -> None:
        """Fold the well-known top-level variables into their sections."""
        if self.database_url:
            self.database.url = self.database_url
        if self.temporal_address:
            self.temporal.address = self.temporal_address
        if self.temporal_namespace:
            self.temporal.namespace = self.temporal_namespace
        self.events.dapr_grpc_endpoint = self.dapr_grpc_endpoint or self.events.dapr_grpc_endpoint
        self.events.dapr_http_endpoint = self.dapr_http_endpoint or self.events.dapr_http_endpoint
        self.events.dapr_api_token = self.dapr_api_token or self.events.dapr_api_token
        self.webhooks.secret = self.webhook_secret or self.webhooks.secret
        self.auth.jwt.secret = self.jwt_secret or self.auth.jwt.secret


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings for entry points; tests build :class:`Settings` themselves."""
    return Settings()
