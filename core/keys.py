"""The Redis key schema, in one place (docs/architecture.md mirrors it)."""

from __future__ import annotations

PREFIX = "sluice"

# Lanes: one sorted set per Celery queue, member = kombu message JSON, score = schedule position.
LANE = PREFIX + ":lane:{queue}"
# A lane's wake-up signal (broker.lane_signals): a list of tokens, one pushed with each message that enters
# the lane (capped); consumers block on it with BLPOP, then pop the lane and record the message unacked in
# one script.
LANE_SIGNAL = PREFIX + ":signal:{queue}"
# Fair share inside a lane (broker.fair_share): per tenant "finish:<t>", "round:<t>", "first:<t>" (its virtual
# finish tag, its current round's start and the arrival of its first request in that round).
FAIR_CLOCKS = PREFIX + ":fair:{queue}"
# kombu ack emulation: delivery_tag -> [message, exchange, routing_key] and delivery_tag -> delivered_at.
UNACKED = PREFIX + ":unacked"
UNACKED_INDEX = PREFIX + ":unacked_index"
UNACKED_MUTEX = PREFIX + ":unacked_mutex"
# delivery_tag -> worker id that holds it, so a dead worker's messages can be found.
UNACKED_OWNER = PREFIX + ":unacked_owner"

# Workers: heartbeat hash per worker (expires when the worker stops beating) and the registry of ids.
WORKER = PREFIX + ":worker:{worker_id}"
WORKERS = PREFIX + ":workers"

# Requests: state hash and the token event stream the API reads.
REQUEST = PREFIX + ":req:{request_id}"
REQUEST_EVENTS = PREFIX + ":events:{request_id}"

# Unfinished batch work per deadline bucket (broker.deadlines): bucket -> requests, bucket -> predicted tokens.
DEADLINE_REQUESTS = PREFIX + ":deadlines:requests"
DEADLINE_TOKENS = PREFIX + ":deadlines:tokens"

# Arrival counters the scaler differentiates into rates: "requests:<lane>", "tokens:<lane>".
ARRIVALS = PREFIX + ":arrivals"

# Scaler decisions (bounded list, newest first) and action counters.
SCALER_DECISIONS = PREFIX + ":scaler:decisions"
SCALER_ACTIONS = PREFIX + ":scaler:actions"

# A model's interactive capacity per worker, measured by `sluice profile` (broker/capacity.py).
CAPACITY = PREFIX + ":capacity:{model}"

# Completed-request records (bounded list) for metrics, the scaler and the predictor.
COMPLETIONS = PREFIX + ":completions"

# Files (the OpenAI Files API, broker/files.py): one metadata hash per file; its content is in the file store.
FILE = PREFIX + ":file:{file_id}"
# Every file's id, and the ids of each purpose's files, scored by creation time (listing and its cursor).
FILES = PREFIX + ":files"
FILES_BY_PURPOSE = PREFIX + ":files:purpose:{purpose}"

# Batches (the OpenAI Batch API, broker/batches.py): one record hash per batch; every batch's id scored by
# creation time (listing), and the batches not yet ended scored by their deadline (the batch runner's work).
BATCH = PREFIX + ":batch:{batch_id}"
BATCHES = PREFIX + ":batches"
BATCHES_OPEN = PREFIX + ":batches:open"
# How many of a batch's requests are in each request status, kept by the request ledger in the step that
# moves a request (constant-cost progress), and the field "closed" (cancelled | expired) once the batch
# stops taking work: from then on its requests are ended instead of started.
BATCH_COUNTS = PREFIX + ":batch:{batch_id}:counts"
# Batch requests ended so far, all batches: status -> count (Prometheus' sluice_batch_requests_total).
BATCH_REQUESTS_ENDED = PREFIX + ":batches:requests_ended"
# Batches in each status: status -> count (Prometheus' sluice_batches), kept by each batch transition.
BATCHES_BY_STATUS = PREFIX + ":batches:by_status"
# Which API process works on a batch (validate, enqueue, close, finalize): SET NX with an expiry.
BATCH_LEASE = PREFIX + ":batch:{batch_id}:lease"

# API keys (broker/api_keys.py): one record hash per key, named by the key's SHA-256 (the key itself is never
# stored), and every key's digest scored by creation time (`sluice keys list`).
API_KEY = PREFIX + ":apikey:{digest}"
API_KEYS = PREFIX + ":apikeys"
# A key's token buckets (broker/quotas.py): requests and tokens, each its level and when it was last filled.
QUOTA = PREFIX + ":quota:{digest}"
# A tenant's own files (all, and per purpose) and batches, scored by creation time: what its listings show.
TENANT_FILES = PREFIX + ":tenant:{tenant}:files"
TENANT_FILES_BY_PURPOSE = PREFIX + ":tenant:{tenant}:files:purpose:{purpose}"
TENANT_BATCHES = PREFIX + ":tenant:{tenant}:batches"


def lane_key(queue: str) -> str:
    return LANE.format(queue=queue)


def lane_signal_key(queue: str) -> str:
    return LANE_SIGNAL.format(queue=queue)


def fair_clocks_key(queue: str) -> str:
    return FAIR_CLOCKS.format(queue=queue)


def queue_of_lane_key(key: str | bytes) -> str:
    if isinstance(key, bytes):
        key = key.decode()
    return key[len(PREFIX + ":lane:"):]


def queue_of_signal_key(key: str | bytes) -> str:
    if isinstance(key, bytes):
        key = key.decode()
    return key[len(PREFIX + ":signal:"):]


def worker_key(worker_id: str) -> str:
    return WORKER.format(worker_id=worker_id)


def request_key(request_id: str) -> str:
    return REQUEST.format(request_id=request_id)


def request_events_key(request_id: str) -> str:
    return REQUEST_EVENTS.format(request_id=request_id)


def file_key(file_id: str) -> str:
    return FILE.format(file_id=file_id)


def files_by_purpose_key(purpose: str) -> str:
    return FILES_BY_PURPOSE.format(purpose=purpose)


def batch_key(batch_id: str) -> str:
    return BATCH.format(batch_id=batch_id)


def batch_counts_key(batch_id: str) -> str:
    return BATCH_COUNTS.format(batch_id=batch_id)


def batch_lease_key(batch_id: str) -> str:
    return BATCH_LEASE.format(batch_id=batch_id)


def capacity_key(model: str) -> str:
    return CAPACITY.format(model=model)


def api_key_key(digest: str) -> str:
    return API_KEY.format(digest=digest)


def quota_key(digest: str) -> str:
    return QUOTA.format(digest=digest)


def files_index_key(tenant: str | None, purpose: str | None = None) -> str:
    """The listing index of a tenant's files (every file's when ``tenant`` is None), of one purpose or all."""
    if tenant is None:
        return FILES if purpose is None else files_by_purpose_key(purpose)
    if purpose is None:
        return TENANT_FILES.format(tenant=tenant)
    return TENANT_FILES_BY_PURPOSE.format(tenant=tenant, purpose=purpose)


def batches_index_key(tenant: str | None) -> str:
    """The listing index of a tenant's batches (every batch's when ``tenant`` is None)."""
    return BATCHES if tenant is None else TENANT_BATCHES.format(tenant=tenant)
