"""Scaling policies behind one interface: ``decide(snapshot, state, config) -> (decisions, state)``."""

from __future__ import annotations

from scaler.policies.base import Policy
from scaler.policies.chiron import ChironPolicy
from scaler.policies.offline_bound import OfflineBoundPolicy
from scaler.policies.queue import QueuePolicy
from scaler.policies.static import StaticPeakPolicy, StaticPolicy
from scaler.policies.utilization import UtilizationPolicy

_REGISTRY: dict[str, type] = {
    "chiron": ChironPolicy,
    "static": StaticPolicy,
    "static_peak": StaticPeakPolicy,
    "utilization": UtilizationPolicy,
    "queue": QueuePolicy,
    "offline_bound": OfflineBoundPolicy,
}

POLICY_NAMES = tuple(_REGISTRY)


def get_policy(name: str, **options) -> Policy:
    """A policy by name; ``options`` go to its constructor (``offline_bound`` takes its ``schedule``)."""
    try:
        return _REGISTRY[name](**options)
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}") from None


__all__ = ["Policy", "POLICY_NAMES", "get_policy"]
