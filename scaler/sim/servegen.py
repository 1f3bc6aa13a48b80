"""Interactive arrivals from the ServeGen m-large client windows (Alibaba Bailian, 14 days, 10-min windows).

The raw data (``../shared/data/servegen/m-large-client-traces.tar.gz``, 162 CSVs, 13 MB unpacked) is
compacted by :func:`compact_client_windows` into ``bench/data/servegen/m-large-clients.csv.gz``: one row
per (client, window) in which the client sent anything, with its mean rate and the shape of its fitted
inter-arrival distribution (Gamma or Weibull). The fitted scale is not stored: the rate fixes it.

Burstiness is kept per client, not as an aggregate: each (client, window) is a renewal process whose
inter-arrival gaps follow that client's fitted distribution and shape (so its CV), with the scale set
so that the mean gap is 1 / (rate x ``rate_scale``). Scaling the rate this way keeps every client's
CV; the superposition of the 162 clients gives the aggregate burstiness. Each window's process starts
afresh at the window boundary (first gap drawn uniformly within an ordinary gap).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WINDOW_S = 600.0
DATA_DIR = Path(__file__).resolve().parents[2] / "bench" / "data" / "servegen"
CLIENTS_FILE = DATA_DIR / "m-large-clients.csv.gz"


@dataclass(frozen=True)
class ClientWindows:
    """Rows of (client, window) with traffic; ``shape`` is the fitted inter-arrival shape (1 = Poisson)."""

    client: np.ndarray
    window: np.ndarray
    rate_rps: np.ndarray
    shape: np.ndarray
    weibull: np.ndarray  # bool: Weibull fit, else Gamma
    n_windows: int

    def total_rate(self) -> np.ndarray:
        """The clients' rates summed per window (req/s)."""
        return np.bincount(self.window, weights=self.rate_rps, minlength=self.n_windows)


def compact_client_windows(tarball: Path, out: Path = CLIENTS_FILE) -> int:
    """Write the non-empty (client, window) rows of the raw tarball as one gzipped CSV; returns the row count."""
    rows = []
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.endswith("-trace.csv"):
                continue
            client = int(Path(member.name).name.split("-")[1])
            for line in io.TextIOWrapper(tar.extractfile(member)):
                start_s, rate, _cv, dist, shape, _scale = line.strip().split(",")
                if float(rate) > 0:
                    kind = {"Gamma": "G", "Weibull": "W"}.get(dist, "E")
                    rows.append((client, int(float(start_s) // WINDOW_S), float(rate), kind, float(shape or 1.0)))
    rows.sort()
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["client", "window", "rate_rps", "dist", "shape"])
        for client, window, rate, kind, shape in rows:
            w.writerow([client, window, f"{rate:.5g}", kind, f"{shape if kind != 'E' else 1.0:.4g}"])
    return len(rows)


def load_client_windows(path: Path = CLIENTS_FILE, n_windows: int = 2016) -> ClientWindows:
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    return ClientWindows(
        client=np.array([int(r["client"]) for r in rows]),
        window=np.array([int(r["window"]) for r in rows]),
        rate_rps=np.array([float(r["rate_rps"]) for r in rows]),
        shape=np.array([float(r["shape"]) for r in rows]),
        weibull=np.array([r["dist"] == "W" for r in rows]),
        n_windows=n_windows,
    )


def busiest_span(total_rate: np.ndarray, windows: int) -> int:
    """First window of the ``windows`` consecutive windows with the most requests (earliest on ties)."""
    if windows >= total_rate.size:
        return 0
    sums = np.convolve(total_rate, np.ones(windows), mode="valid")
    return int(np.argmax(sums))


def span_name(start_window: int, windows: int) -> str:
    h0, h1 = start_window * WINDOW_S / 3600.0, (start_window + windows) * WINDOW_S / 3600.0
    return (
        f"ServeGen m-large windows {start_window}-{start_window + windows - 1} "
        f"(trace hours {h0:.1f}-{h1:.1f}, day {h0 / 24 + 1:.2f} to {h1 / 24 + 1:.2f} of 14)"
    )


def window_rows(cw: ClientWindows, start_window: int, windows: int) -> tuple[np.ndarray, ...]:
    """(offset window in the span, rate, shape, weibull) of the rows in the span; the trace wraps past its end."""
    parts = []
    for k in range(math.ceil((start_window + windows) / cw.n_windows)):
        lo, hi = start_window - k * cw.n_windows, start_window + windows - k * cw.n_windows
        keep = (cw.window >= lo) & (cw.window < hi)
        parts.append((cw.window[keep] + k * cw.n_windows - start_window, keep))
    offset = np.concatenate([p[0] for p in parts])
    pick = np.concatenate([np.flatnonzero(p[1]) for p in parts])
    return offset, cw.rate_rps[pick], cw.shape[pick], cw.weibull[pick]


def gaps(shape: np.ndarray, weibull: np.ndarray, mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One inter-arrival gap per entry with the given distribution shape and mean."""
    out = np.empty(shape.size)
    g = ~weibull
    out[g] = rng.gamma(shape[g], mean[g] / shape[g])
    w = weibull
    if w.any():
        k = shape[w]
        scale = mean[w] / np.array([math.gamma(1 + 1 / x) for x in k])
        out[w] = scale * rng.weibull(k)
    return out


def arrivals_in_windows(
    offset: np.ndarray, rate: np.ndarray, shape: np.ndarray, weibull: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Sorted arrival times (s from the span start) of one renewal process per row, each confined to its window."""
    rows = np.arange(rate.size)
    times = []
    clock = rng.random(rate.size)  # the first gap's share that falls in the window (an ordinary gap, cut uniformly)
    first = True
    elapsed = np.zeros(rate.size)
    while rows.size:
        # Draw enough gaps for most rows to leave their window at once; the rest loop.
        n = np.ceil(2.0 * rate[rows] * WINDOW_S + 8).astype(int)
        owner = np.repeat(np.arange(rows.size), n)
        g = gaps(np.repeat(shape[rows], n), np.repeat(weibull[rows], n), np.repeat(1.0 / rate[rows], n), rng)
        if first:
            starts = np.cumsum(n) - n
            g[starts] *= clock
            first = False
        cum = np.cumsum(g)
        before = np.repeat(cum[np.cumsum(n) - n] - g[np.cumsum(n) - n], n)
        t = elapsed[rows][owner] + cum - before
        inside = t < WINDOW_S
        times.append(offset[rows][owner[inside]] * WINDOW_S + t[inside])
        last = np.cumsum(n) - 1
        still = t[last] < WINDOW_S
        elapsed[rows[still]] = t[last][still]
        rows = rows[still]
    return np.sort(np.concatenate(times)) if times else np.zeros(0)
