"""What `sluice run` does when a child crashes: restart it now, after a delay, or give up (pure).

The decision is a function of the child's crash history and ``now`` only, so it is unit-tested without
processes. A first crash restarts at once; each further crash within ``window_s`` doubles the delay
(``backoff_base_s``, capped at ``backoff_cap_s``); ``max_crashes`` crashes within ``window_s`` mean the
child cannot stay up (a bad setting, a broken model, a port taken) and the stack stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence


@dataclass(frozen=True)
class RestartPolicy:
    max_crashes: int = 5
    window_s: float = 60.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0


@dataclass(frozen=True)
class RestartDecision:
    action: Literal["restart", "give_up"]
    delay_s: float  # restart this long after now (0: at once)
    reason: str


def restart_decision(crash_times: Sequence[float], now: float, policy: RestartPolicy = RestartPolicy()
                     ) -> RestartDecision:
    """``crash_times``: when the child crashed (the crash being decided on included), any order."""
    recent = sorted(t for t in crash_times if now - policy.window_s <= t <= now)
    if not recent:
        return RestartDecision("restart", 0.0, "no crash on record")
    if len(recent) >= policy.max_crashes:
        return RestartDecision("give_up", 0.0, f"{len(recent)} crashes within {policy.window_s:.0f} s "
                                               f"(limit {policy.max_crashes})")
    if len(recent) == 1:
        return RestartDecision("restart", 0.0, f"first crash within {policy.window_s:.0f} s")
    delay = min(policy.backoff_cap_s, policy.backoff_base_s * 2 ** (len(recent) - 2))
    # The delay counts from the latest crash: a crash history evaluated late does not wait twice.
    remaining = max(0.0, recent[-1] + delay - now)
    return RestartDecision("restart", remaining, f"{len(recent)} crashes within {policy.window_s:.0f} s: "
                                                 f"backing off {delay:.0f} s")
