"""A model's measured interactive capacity (``sluice profile``), kept in Redis where the scaler reads it.

One record per served model (``sluice:capacity:<model>``): the output tokens/s one worker sustains while
its interactive requests' inter-token latency stays within the ITL SLO, and the load steps that showed
it.  ``sluice profile`` writes it; the scaler's snapshot reads it for the model its workers serve, and
Chiron's ``measure_capacity`` uses it until online measurement has a better figure (docs/scaler.md).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Mapping

from core import keys

CAPACITY_RECORD_VERSION = 1


@dataclass(frozen=True)
class ProfileStep:
    """One load level of a profile: ``concurrency`` requests kept in flight for the step."""

    concurrency: int
    requests: int  # finished during the step
    tokens_per_s: float  # output tokens/s of the finished requests, per worker
    itl_p90_s: float | None
    ttft_p50_s: float | None


@dataclass(frozen=True)
class CapacityProfile:
    model: str
    tokens_per_s: float  # per worker, at the ITL SLO
    itl_slo_s: float
    concurrency: int  # the load level that gave it
    workers: int  # workers that served the profile (the figure is per worker)
    measured_at: float
    steps: tuple[ProfileStep, ...] = field(default_factory=tuple)
    version: int = CAPACITY_RECORD_VERSION

    def to_redis(self) -> dict[str, str]:
        out = {item.name: str(getattr(self, item.name)) for item in dataclasses.fields(self) if item.name != "steps"}
        out["steps"] = json.dumps([dataclasses.asdict(step) for step in self.steps])
        return out

    @classmethod
    def from_redis(cls, raw: Mapping) -> CapacityProfile:
        fields = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                  for k, v in raw.items()}
        return cls(model=fields["model"], tokens_per_s=float(fields["tokens_per_s"]),
                   itl_slo_s=float(fields["itl_slo_s"]), concurrency=int(fields["concurrency"]),
                   workers=int(fields.get("workers", 1)), measured_at=float(fields["measured_at"]),
                   steps=tuple(ProfileStep(**step) for step in json.loads(fields.get("steps", "[]"))),
                   version=int(fields.get("version", CAPACITY_RECORD_VERSION)))


def write_profile(client, profile: CapacityProfile) -> None:
    key = keys.capacity_key(profile.model)
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=profile.to_redis())
        pipe.execute()


def read_profile(client, model: str) -> CapacityProfile | None:
    raw = client.hgetall(keys.capacity_key(model))
    return CapacityProfile.from_redis(raw) if raw else None
