"""A scaling decision: what to set a pool to, why, and from which inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ScaleDecision:
    pool: str
    current: int  # provisioned instances (ready + starting) when decided
    target: int
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def action(self) -> str:
        if self.target > self.current:
            return "scale_out"
        if self.target < self.current:
            return "scale_in"
        return "hold"

    @property
    def is_change(self) -> bool:
        return self.target != self.current

    def describe(self) -> str:
        return f"{self.pool}: {self.current} -> {self.target} ({self.action}): {self.reason}"
