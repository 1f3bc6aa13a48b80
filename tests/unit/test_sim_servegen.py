"""ServeGen day/week workload: the busiest-span selection, per-client arrivals, and the workload builder."""

import gzip
import io
import tarfile

import numpy as np
import pytest

from scaler.sim import servegen as sg
from scaler.sim.workload import Requests, ServeGenWorkloadConfig, Trace, batch_jobs, servegen_workload


def test_busiest_span_picks_the_heaviest_consecutive_windows_earliest_on_ties():
    rate = np.array([1.0, 5.0, 1.0, 1.0, 9.0, 9.0, 1.0, 9.0, 9.0])
    assert sg.busiest_span(rate, 2) == 4  # [9, 9] twice: the first wins
    assert sg.busiest_span(rate, 3) == 3  # 1 + 9 + 9 = 19 at 3 ties with 4 and 6: earliest
    assert sg.busiest_span(rate, 1) == 4
    assert sg.busiest_span(rate, 20) == 0  # longer than the trace: all of it


def test_span_name_says_windows_hours_and_days():
    name = sg.span_name(144, 144)
    assert "windows 144-287" in name and "hours 24.0-48.0" in name and "day 2.00" in name


def _windows(rows, n_windows):
    client, window, rate, shape, weibull = (np.array(c) for c in zip(*rows))
    return sg.ClientWindows(client, window, rate.astype(float), shape.astype(float), weibull.astype(bool), n_windows)


def test_window_rows_wrap_past_the_end_of_the_trace():
    cw = _windows([(0, 0, 1.0, 1.0, False), (0, 2, 3.0, 1.0, False)], 3)
    offset, rate, _, _ = sg.window_rows(cw, 2, 3)  # windows 2, 3 (= 0 again), 4 (= 1, empty)
    assert sorted(zip(offset.tolist(), rate.tolist())) == [(0, 3.0), (1, 1.0)]


@pytest.mark.parametrize("shape, weibull", [(1.0, False), (0.25, False), (0.5, True)])
def test_arrivals_keep_each_windows_rate_and_the_clients_burstiness(shape, weibull):
    rng = np.random.default_rng(1)
    n = 40
    offset = np.arange(n)
    rate = np.full(n, 2.0)
    t = sg.arrivals_in_windows(offset, rate, np.full(n, shape), np.full(n, weibull), rng)
    assert np.all(np.diff(t) >= 0)
    counts = np.bincount((t // sg.WINDOW_S).astype(int), minlength=n)
    assert counts.size == n  # nothing spills past the last window
    assert counts.mean() == pytest.approx(2.0 * sg.WINDOW_S, rel=0.08)
    gaps = np.diff(t)[np.diff((t // sg.WINDOW_S).astype(int)) == 0]
    cv = gaps.std() / gaps.mean()
    expected_cv = 1.0 if shape == 1.0 and not weibull else (2.0 if not weibull else np.sqrt(24 / 4 - 1))
    assert cv == pytest.approx(expected_cv, rel=0.2)


def test_compact_client_windows_round_trips_the_raw_tarball(tmp_path):
    raw = {
        "chunk-0-trace.csv": "0,2.5,0.9,Gamma,1.2,0.3\n600,0,0,,,\n1200,1.0,3.0,Weibull,0.4,0.1\n",
        "chunk-7-trace.csv": "0,0,0,,,\n600,4.0,1.0,Gamma,1.0,0.25\n1200,0,0,,,\n",
    }
    tarball = tmp_path / "raw.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name, text in raw.items():
            data = text.encode()
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "clients.csv.gz"
    assert sg.compact_client_windows(tarball, out) == 3  # empty windows are dropped
    cw = sg.load_client_windows(out, n_windows=3)
    assert cw.total_rate().tolist() == [2.5, 4.0, 1.0]
    assert cw.client.tolist() == [0, 0, 7] and cw.weibull.tolist() == [False, True, False]
    assert gzip.open(out, "rt").readline().strip() == "client,window,rate_rps,dist,shape"


def test_batch_jobs_cover_the_requested_count_with_sizes_and_deadlines_in_range():
    cfg = ServeGenWorkloadConfig(batch_job_requests=(100, 500), batch_deadlines_s=(7200.0, 86400.0))
    starts, sizes, deadlines = batch_jobs(10_000, 86400.0, cfg, np.random.default_rng(0))
    assert sizes.sum() >= 10_000 and sizes.sum() < 10_000 + 500
    assert sizes.min() >= 100 and sizes.max() <= 500
    assert np.all(np.diff(starts) >= 0) and starts.min() >= 0 and starts.max() < 86400.0
    assert set(np.round(deadlines - starts).tolist()) <= {7200.0, 86400.0}


def _trace(n, ctx, gen):
    return Trace(np.arange(n, dtype=float), np.full(n, ctx), np.full(n, gen))


def test_servegen_workload_takes_the_busiest_day_scales_its_peak_and_adds_a_third_in_batch():
    # Two days of 10-min windows: day 2 busier; one client, Poisson, 1 req/s on day 1, 2 then 4 req/s on day 2.
    rows = [(0, w, 1.0, 1.0, False) for w in range(144)]
    rows += [(0, w, 4.0 if w == 200 else 2.0, 1.0, False) for w in range(144, 288)]
    cw = _windows(rows, 288)
    cfg = ServeGenWorkloadConfig(peak_interactive_rps=0.2, batch_job_requests=(200, 400), batch_deadlines_s=(7200.0, 86400.0))
    w = servegen_workload(cfg, _trace(10, 100, 20), _trace(10, 300, 5), windows=cw)
    assert w.start_window == 144 and "windows 144-287" in w.name
    assert w.rate_scale == pytest.approx(0.2 / 4.0)
    assert w.span_s == 86400.0 and w.horizon_s == 86400.0 + 86400.0
    inter = w.interactive
    in_span = inter.arrival_s < w.span_s
    assert in_span.sum() == pytest.approx(0.1 * 86400, rel=0.05)  # 2 req/s x 0.05, the peak window aside
    after = (~in_span).sum()  # the trace wraps to day 1 (1 req/s x 0.05)
    assert after == pytest.approx(0.05 * 86400, rel=0.05)
    assert np.all(inter.context_tokens == 100) and np.all(np.isinf(inter.deadline_s))
    batch: Requests = w.batch
    assert batch.arrival_s.size / in_span.sum() == pytest.approx(1 / 3, rel=0.05)
    assert np.all(batch.context_tokens == 300) and np.all(batch.arrival_s < w.span_s)
    assert np.all(np.isin(np.round(batch.deadline_s - batch.arrival_s), [7200.0, 86400.0]))
