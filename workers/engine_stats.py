"""What the vLLM engine reports about itself, kept for the heartbeat."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from vllm.v1.metrics.loggers import StatLoggerBase


@dataclass
class EngineState:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    preemptions: int = 0
    generation_tokens: int = 0
    # (timestamp, cumulative generation tokens) samples for a windowed tokens/s.
    samples: list[tuple[float, int]] = field(default_factory=list)
    # (timestamp, inter-token latency) samples from the engine's own iteration stats.
    itl_samples: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def tokens_per_second(self, window_s: float = 5.0) -> float:
        with self.lock:
            now = time.time()
            recent = [(t, n) for t, n in self.samples if now - t <= window_s]
            if len(recent) < 2:
                return 0.0
            (t0, n0), (t1, n1) = recent[0], recent[-1]
            return (n1 - n0) / max(now - t0, t1 - t0, 1e-6)

    def mean_itl(self, window_s: float = 2.0) -> float | None:
        """Mean inter-token latency over the last window; None when nothing was decoded."""
        with self.lock:
            now = time.time()
            recent = [itl for t, itl in self.itl_samples if now - t <= window_s]
        return sum(recent) / len(recent) if recent else None

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "running": self.running,
                "waiting": self.waiting,
                "kv_cache_usage": round(self.kv_cache_usage, 4),
                "preemptions": self.preemptions,
                "generation_tokens": self.generation_tokens,
            }


def stat_logger_factory(state: EngineState):
    """A vLLM stat-logger factory that writes into ``state``."""

    class SluiceStatLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            self.state = state

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            with state.lock:
                if scheduler_stats is not None:
                    state.running = scheduler_stats.num_running_reqs
                    state.waiting = scheduler_stats.num_waiting_reqs
                    state.kv_cache_usage = scheduler_stats.kv_cache_usage
                if iteration_stats is not None:
                    state.generation_tokens += iteration_stats.num_generation_tokens
                    state.preemptions += iteration_stats.num_preempted_reqs
                    now = time.time()
                    state.samples.append((now, state.generation_tokens))
                    if len(state.samples) > 4096:
                        del state.samples[:2048]
                    state.itl_samples.extend((now, itl) for itl in iteration_stats.inter_token_latencies_iter)
                    if len(state.itl_samples) > 8192:
                        del state.itl_samples[:4096]

        def log_engine_initialized(self):
            pass

    return SluiceStatLogger
