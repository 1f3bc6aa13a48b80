"""The scaler's decision log in Redis: written by the scaler, read by the API, ``sluice scaler status``
and the benches.

It lives in ``broker/`` (with the other Redis records) so that its readers need not import the scaler.
Each entry is one JSON object: ``kind`` (``instances``: a pool's size; ``admission_limit``: one worker's
limit), ``at`` (Unix time) and the decision's own fields (pool, action, from, to, reason, inputs).
"""

from __future__ import annotations

import json
import time

from core import keys

# The newest decisions kept in the list; older ones fall off (the per-kind counters keep counting).
DECISIONS_KEPT = 1000


def record_decision(client, kind: str, payload: dict) -> None:
    """Append one decision and count it in ``sluice:scaler:actions`` under ``kind:pool:action``."""
    entry = json.dumps({"kind": kind, "at": time.time(), **payload}, default=str)
    with client.pipeline() as pipe:
        pipe.lpush(keys.SCALER_DECISIONS, entry)
        pipe.ltrim(keys.SCALER_DECISIONS, 0, DECISIONS_KEPT - 1)
        pipe.hincrby(keys.SCALER_ACTIONS, f"{kind}:{payload.get('pool', '')}:{payload.get('action', '')}", 1)
        pipe.execute()


def read_decisions(client, limit: int = 50) -> list[dict]:
    """The newest ``limit`` decisions, newest first."""
    return [json.loads(raw) for raw in client.lrange(keys.SCALER_DECISIONS, 0, limit - 1)]


def read_action_counts(client) -> dict[str, int]:
    """Decisions counted by ``kind:pool:action`` since the counters were created."""
    return {(k.decode() if isinstance(k, bytes) else k): int(v)
            for k, v in client.hgetall(keys.SCALER_ACTIONS).items()}
