"""What online capacity measurement would see: every serving worker's observation, per policy period.

``python -m bench.capacity_probe --hours 0.5 [--online]`` simulates Chiron on the azure-hour workload and
prints the distribution of the samples `chiron.capacity_sample` would take (latency-saturated workers with
no batch work) next to the load-test capacity.  docs/scaler.md ("Online capacity measurement") reports a run.
"""

from __future__ import annotations

import json

import click
import numpy as np

from bench.cluster import BenchSetup, simulate


class RecordingPolicy:
    """Delegates to a policy and keeps, per worker and period, what a capacity sample is made of."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.rows: list[tuple[float, float, float, float, float]] = []

    def __getattr__(self, name):  # everything but decide() is the inner policy's
        return getattr(self.inner, name)

    def decide(self, snapshot, state, config):
        for w in snapshot.workers_in("interactive", "mixed"):
            if w.itl_ewma_s is not None:
                self.rows.append((w.running_batch, w.running_interactive, w.admission_limit, w.itl_ewma_s,
                                  w.interactive_tokens_per_s))
        return self.inner.decide(snapshot, state, config)


def saturated_samples(rows: np.ndarray, itl_slo_s: float, fraction: float) -> np.ndarray:
    """The rows chiron.capacity_sample counts: no batch work, smoothed ITL near the SLO, tokens served."""
    running_batch, _, _, itl, tokens = rows.T
    return rows[(running_batch == 0) & (itl >= fraction * itl_slo_s) & (tokens > 0)]


@click.command()
@click.option("--hours", type=float, default=0.5, show_default=True)
@click.option("--online/--no-online", default=True, show_default=True,
              help="Let Chiron use its online measurement (on: the runaway; off: the prior decides).")
def main(hours: float, online: bool) -> None:
    setup = BenchSetup(hours=hours)
    setup.scaler.chiron.measure_capacity_online = online
    recorder: list[RecordingPolicy] = []

    def wrap(policy):
        recorder.append(RecordingPolicy(policy))
        return recorder[0]

    summary, _ = simulate("chiron", setup, wrap_policy=wrap)
    rows = np.array(recorder[0].rows, dtype=float).reshape(-1, 5)
    cfg = setup.scaler
    hot = saturated_samples(rows, cfg.slo.itl_s, cfg.chiron.saturation_itl_fraction)
    report = {
        "online": online,
        "summary": {k: summary.get(k) for k in ("interactive_slo_attainment", "batch_deadline_attainment",
                                                 "gpu_hours", "scale_actions_per_hour")},
        "worker_periods": int(rows.shape[0]),
        "saturated_samples": int(hot.shape[0]),
        "load_test_capacity_tokens_per_s": cfg.chiron.interactive_capacity_tokens_per_s_prior,
    }
    if hot.size:
        report["saturated_tokens_per_s_p10_p50_p90_max"] = np.percentile(hot[:, 4], [10, 50, 90, 100]).round().tolist()
        report["saturated_running_p10_p50_p90"] = np.percentile(hot[:, 1], [10, 50, 90]).tolist()
        report["saturated_admission_limit_p10_p50_p90"] = np.percentile(hot[:, 2], [10, 50, 90]).tolist()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
