"""One settings model for every Sluice process.

Values come from ``SLUICE_*`` environment variables (nested fields use a double
underscore, e.g. ``SLUICE_LANE_QUEUE_LIMITS='{"interactive": 500}'``) and
from command-line flags (``Settings(**flags)``: init arguments beat variables).  Each process
builds its Settings once and passes it down; a child gets its parent's as variables
(``settings_env``).  ``docs/configuration.md`` lists every field; keep the two in step.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.names import SLO_CLASSES
from core.scaler_config import ScalerConfig

QueuePolicyName = Literal["fcfs", "ssjf", "oracle"]
BatchingMode = Literal["continuous", "dynamic", "none"]
AuthMode = Literal["auto", "required", "off"]


def is_loopback(host: str) -> bool:
    """Whether an address the API binds is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, "" or "0.0.0.0"-like wildcards: assume it is reachable from outside


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", env_nested_delimiter="__", extra="ignore")

    # --- where things live -------------------------------------------------
    redis_url: str | None = Field(
        None, description="Redis/Valkey URL: `redis://[:password@]host:port/db`, or a Sentinel group "
        "`redis+sentinel://[:password@]host:26379,host2:26379/<service>/<db>` (docs/operations.md). Unset: "
        "`sluice run` starts an embedded Valkey."
    )
    enqueue_wait_replicas: int = Field(
        0, ge=0, description="Replicas that must have each enqueued request before the API answers (Redis "
        "`WAIT`); 0: no wait. See docs/operations.md for what it protects and costs.")
    enqueue_wait_timeout_ms: int = Field(
        1000, ge=1, description="Longest an enqueue waits for `enqueue_wait_replicas` (then it logs a warning "
        "and the request stays queued on the master).")
    data_dir: Path = Field(Path("var"), description="Models, embedded Valkey files, logs, predictor versions.")
    model: Path | None = Field(None, description="Local Hugging Face model directory. Unset: the built-in tiny Llama.")
    served_model_name: str | None = Field(None, description="Name clients use in `model`. Unset: the model directory's name.")

    # --- API -----------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    auth: AuthMode = Field(
        "auto", description="API keys (docs/security.md): auto (required unless the API listens on loopback only), "
        "required, or off.")
    auth_insecure: bool = Field(
        False, description="Allow auth=off on an address beyond loopback (anyone who reaches the port may use it).")
    flower_port: int = 5555
    flower_address: str = "127.0.0.1"
    lane_queue_limits: dict[str, int] = Field(
        default_factory=lambda: {"interactive": 2000, "batch": 100_000},
        description="Queued requests a lane holds before the API answers 429.",
    )
    default_max_tokens: int = Field(256, description="max_tokens when a request names none.")
    request_timeout_s: float = Field(900.0, description="How long the API waits for a request to finish.")
    retry_after_s: int = Field(2, description="Retry-After sent with 429, and with 503 while Redis is unreachable.")
    redis_ride_through_s: float = Field(
        30.0, ge=0, description="How long workers, the scaler and the API's event reader keep retrying Redis through "
        "an outage (capped exponential backoff) before an operation fails; the API's request path gives up after "
        "about half a second and answers 503 (docs/operations.md).")
    stream_outage_s: float = Field(
        30.0, gt=0, description="A stream (or a waiting non-streamed request) whose events cannot be read from Redis "
        "for this long ends with an error instead of waiting on.")
    # Hostile input (docs/security.md): bounds on what one client may send and how slowly.
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1, description="Largest JSON request body (completions, batch creation); 413 above it. "
        "File uploads have their own limit (batch_file_max_bytes).")
    max_json_depth: int = Field(32, ge=2, description="Deepest nesting of arrays/objects in a JSON body (400 above it).")
    max_messages: int = Field(1024, ge=1, description="Most messages in one chat completion request (400 above it).")
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Largest request line + headers block; 431 above it (the HTTP protocol's "
        "receive buffer).")
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection's request line and headers must arrive within this; slower clients "
        "are cut off (408). After a response, the connection's keep-alive time is added.")
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="A JSON request body must arrive within this once its headers did (408 after).")
    keep_alive_timeout_s: int = Field(
        75, ge=1, description="An idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive).")
    batch_file_max_bytes: int = Field(
        200 * 1024 * 1024, ge=1, description="Largest file `POST /v1/files` accepts (413 above it).")
    batch_file_max_lines: int = Field(
        100_000, ge=1, description="Most lines a file `POST /v1/files` accepts (400 above it).")
    batch_prediction_sample: int = Field(
        256, ge=1, description="Lines of a batch whose output length is predicted; their mean is every line's "
        "prediction (docs/batch.md).")
    batch_lease_s: float = Field(
        30.0, gt=0, description="How long an API process holds a batch it works on without renewing; another "
        "(or a restarted one) takes it over after that.")
    batch_poll_interval_s: float = Field(
        0.5, gt=0, description="How often the batch runner looks at open batches (deadlines, progress, cancels).")

    # --- queue ---------------------------------------------------------------
    lanes: list[str] = Field(
        default_factory=lambda: list(SLO_CLASSES),
        description="Lanes in priority order: a worker always serves the first non-empty one.",
    )
    bench_fields: bool = Field(
        False, description="Accept benchmark-only request fields (sluice.bench_output_tokens). Benchmarks only.")
    queue_policy: QueuePolicyName = Field(
        "ssjf", description="Queue policy (broker/queue_policies.py): ssjf (predicted shortest first), fcfs or oracle.")
    ssjf_aging_tokens_per_s: float = Field(
        20.0, description="Aging: a request is overtaken only by requests arriving < predicted_tokens/this seconds later."
    )
    ssjf_max_predicted_tokens: float = Field(4096.0, description="Cap on the predicted length used in scores.")
    fair_share: bool = Field(
        True, description="Fair share inside a lane (broker/fair_share.py): a request with a tenant is placed by its "
        "tenant's virtual clock, so one tenant's backlog does not starve another's. Requests without a tenant are "
        "scored by the queue policy alone either way.")
    fair_share_round_tokens: float = Field(
        2048.0, ge=0, description="Fair-share round, in tokens of a weight-1 tenant's work: a tenant's requests "
        "within one round keep the queue policy's order among themselves (SSJF); another tenant waits for at "
        "most this much more of its work. 0: no rounds (a backlogged tenant's requests in arrival order).")
    predict_lengths: bool | None = Field(
        None, description="Predict output lengths at enqueue, under any policy. Unset: when the policy needs them (ssjf).")
    predictor_registry: Path | None = Field(
        None, description="Predictor version registry (versions/ + CURRENT). Unset: <data_dir>/predictor-registry.")
    predictor_threads: int = Field(
        1, ge=1, description="CPU threads of the API's predictor: one, because the API shares its host with vLLM "
        "engines whose OpenMP threads spin, and a multi-threaded forward stalls at every barrier behind them.")
    predictor_reload_interval_s: float = Field(10.0, description="How often the API checks for a new predictor version.")
    predictor_feedback: bool = Field(True, description="Log finished requests for `sluice predictor retrain`.")
    predictor_feedback_max_entries: int = Field(50_000, description="Bound on the traffic log.")
    keep_prompt_text: bool = Field(False, description="Keep prompt text in the completion log (privacy: off by default).")
    visibility_timeout_s: float = Field(
        6 * 3600.0,
        description="Backstop redelivery of unacked messages; dead workers are detected by heartbeat much sooner.",
    )

    # --- worker --------------------------------------------------------------
    worker_id: str | None = Field(None, description="Worker name. Unset: sluice-<pid>@<host>.")
    worker_lanes: list[str] = Field(default_factory=lambda: list(SLO_CLASSES), description="Lanes this worker consumes.")
    worker_pool: Literal["interactive", "batch", "mixed"] = "mixed"
    admission_limit: int = Field(32, description="Initial admission limit: requests a worker runs at once.")
    max_admission_limit: int = Field(128, description="Upper bound for the admission limit (worker threads).")
    batching_mode: BatchingMode = "continuous"
    dynamic_batch_timeout_s: float = 0.05
    heartbeat_interval_s: float = 1.0
    stream_interval_s: float = Field(
        0.05, ge=0, description="A request's token events are published at most this often after its first token "
        "(0: every engine step); fewer Redis writes per token leave the worker's CPU to its engine and its queue.")
    heartbeat_ttl_s: float = Field(15.0, description="A worker whose heartbeat is older is dead; its requests are redelivered.")
    kv_cache_gib: int = Field(1, description="KV cache for the CPU build of vLLM (VLLM_CPU_KVCACHE_SPACE).")
    max_model_len: int = 2048
    engine_threads: int = Field(1, description="CPU threads for the vLLM CPU engine (OMP).")
    preemption: bool = Field(
        True, description="A full mixed worker aborts and requeues (at their score) non-streamed batch requests "
        "for interactive ones.")
    preemption_check_interval_s: float = Field(0.1, description="How often a mixed worker checks for interactive arrivals.")
    batch_watch_interval_s: float = Field(
        1.0, gt=0, description="How often a worker running batch requests checks whether their batch was cancelled "
        "or expired (and aborts them).")
    preemption_max_attempts: int = Field(
        4, description="A batch request on this attempt or later is not preempted again (no starvation).")

    # --- scaler --------------------------------------------------------------
    scaler_policy: Literal["chiron", "static", "static_peak", "utilization", "queue"] = "chiron"
    scaler_actuator: Literal["local", "docker", "kubernetes"] = "local"
    scaler: ScalerConfig = Field(default_factory=ScalerConfig, description="Every scaling constant (docs/scaler.md).")
    # The docker actuator's workers (`sluice scaler run --actuator docker`).
    docker_image: str = Field("sluice:latest", description="Image of the worker containers the docker actuator starts.")
    docker_network: str | None = Field(None, description="Docker network the worker containers join (where Redis is).")
    docker_redis_url: str | None = Field(
        None, description="Redis URL the worker containers use. Unset: redis_url (which must then resolve from "
        "inside the containers, not 127.0.0.1).")
    docker_gpus_per_worker: int = Field(1, ge=0, description="GPUs each worker container requests (0: none).")
    docker_gpu_device_ids: list[str] | None = Field(
        None, description="GPU ids the containers share out, one each. Unset: the engine picks.")

    @model_validator(mode="after")
    def _ssjf_needs_predictions(self) -> "Settings":
        # Fails at start-up; the running API asks the policy object (broker.queue_policies.predicts_lengths).
        if self.queue_policy == "ssjf" and self.predict_lengths is False:
            raise ValueError("queue_policy=ssjf scores by predicted length: predict_lengths cannot be false")
        return self

    @field_validator("lanes", "worker_lanes")
    @classmethod
    def _known_lanes(cls, lanes: list[str]) -> list[str]:
        unknown = [lane for lane in lanes if lane not in SLO_CLASSES]
        if unknown:
            raise ValueError(f"unknown lane(s) {unknown}; known: {list(SLO_CLASSES)}")
        return lanes

    @property
    def auth_enabled(self) -> bool:
        """Whether the API asks for API keys: `auto` means on unless the API binds loopback only."""
        if self.auth == "auto":
            return not is_loopback(self.api_host)
        return self.auth == "required"

    def auth_refusal(self) -> str | None:
        """Why the API must not start with these settings (auth off on a public address, not asked twice)."""
        if self.auth == "off" and not is_loopback(self.api_host) and not self.auth_insecure:
            return (f"auth is off but the API would listen on {self.api_host!r}, beyond this machine: anyone who "
                    "reaches the port could use it. Drop --no-auth (keys: `sluice keys create`), bind 127.0.0.1, "
                    "or add --insecure if that is really meant")
        return None

    @property
    def model_dir(self) -> Path:
        return self.model if self.model is not None else self.data_dir / "models" / "sluice-tiny-llama"

    @property
    def predictor_registry_dir(self) -> Path:
        return self.predictor_registry if self.predictor_registry is not None else self.data_dir / "predictor-registry"

    @property
    def files_dir(self) -> Path:
        """Where the local file store keeps uploaded and batch output files."""
        return self.data_dir / "files"

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model_dir.name

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError(
                "SLUICE_REDIS_URL is not set: point it at a Redis server, or use `sluice run`, "
                "which starts an embedded Valkey when none is configured"
            )
        return self.redis_url


def settings_env(settings: Settings) -> dict[str, str]:
    """The SLUICE_* variables that give a child process these settings: every field that was given
    (by a variable or a flag), JSON for lists, dicts and nested models. A child started with them, and
    with no other SLUICE_* variable, builds an equal Settings."""
    env = {}
    for name, value in settings.model_dump(mode="json", include=settings.model_fields_set).items():
        if value is None:
            continue  # unset is the default of every optional field
        if isinstance(value, (dict, list, bool)):
            value = json.dumps(value)
        env[f"SLUICE_{name.upper()}"] = str(value)
    return env
