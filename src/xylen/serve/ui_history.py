"""The dashboard's server history: the counters /metrics renders, sampled every XYLEN_UI_SAMPLE_S seconds.

Each sample keeps, per route label (gate.route_of's bounded set), the request rate and the p50/p99 latency of the
requests finished since the previous sample (from the latency histogram's bucket deltas, interpolated within the
bucket as Prometheus' ``histogram_quantile`` does), the rate of 5xx and of 4xx answers, and the RSS. 360 samples
are kept (an hour at 10 s). Under ``--workers N`` the counters are those of every worker (prometheus_client's
multiprocess files, as /metrics merges them), so whichever worker answers charts the whole server.

The request path never touches this: a background task calls ``sample`` every interval (the file reads of the
multiprocess mode happen in a thread).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil
from prometheus_client.metrics_core import Metric

from xylen.serve.metrics import Metrics

SIZE = 360
_REQUESTS = "xylen_http_requests"
_LATENCY = "xylen_http_request_duration_seconds"


@dataclass
class Totals:
    """Cumulative counters at one moment: per route the count and the cumulative bucket counts (by upper bound)."""

    count: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    errors: float = 0.0  # 5xx
    client_errors: float = 0.0  # 4xx


@dataclass(frozen=True)
class Sample:
    t_ms: int
    rss_bytes: int
    errors_per_s: float | None
    client_errors_per_s: float | None
    routes: dict[str, tuple[float, float | None, float | None]]  # route -> (rate, p50 ms, p99 ms)


def totals_of(families: Iterable[Metric]) -> Totals:
    out = Totals()
    for fam in families:
        if fam.name == _REQUESTS:
            for s in fam.samples:
                if not s.name.endswith("_total"):
                    continue
                route, status = s.labels.get("route", "other"), s.labels.get("status", "")
                out.count[route] = out.count.get(route, 0.0) + s.value
                if status.startswith("5"):
                    out.errors += s.value
                elif status.startswith("4"):
                    out.client_errors += s.value
        elif fam.name == _LATENCY:
            for s in fam.samples:
                if not s.name.endswith("_bucket"):
                    continue
                le = float(s.labels["le"])
                per = out.buckets.setdefault(s.labels.get("route", "other"), {})
                per[le] = per.get(le, 0.0) + s.value
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile (seconds) of cumulative bucket counts {upper bound: count}, linear within the bucket;
    None without observations. Past the last finite bound: that bound (as Prometheus answers)."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return prev_bound
            if c == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (c - prev_count)
        prev_bound, prev_count = b, c
    return prev_bound


def _rss(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return total


class History:
    """The ring of samples. ``collect`` reads the counters, ``clock`` is epoch seconds, ``pids`` the server's
    processes (every worker under --workers); tests pass fakes of all three."""

    def __init__(self, collect: Callable[[], Totals], *, clock: Callable[[], float] = time.time,
                 pids: Callable[[], Iterable[int]] = lambda: (os.getpid(),), size: int = SIZE) -> None:
        self._collect = collect
        self._clock = clock
        self._pids = pids
        self._ring: deque[Sample] = deque(maxlen=size)
        self._last: tuple[float, Totals] | None = None
        self._lock = threading.Lock()

    def sample(self) -> Sample | None:
        """Take one sample; the first only sets the baseline (None). A counter that went down (a restarted
        worker's file removed) is a new baseline for that route, never a negative rate."""
        now = self._clock()
        cur = self._collect()
        rss = _rss(self._pids())
        with self._lock:
            last = self._last
            self._last = (now, cur)
            if last is None or now <= last[0]:
                return None
            dt = now - last[0]
            prev = last[1]
            routes: dict[str, tuple[float, float | None, float | None]] = {}
            for route, count in cur.count.items():
                d = count - prev.count.get(route, 0.0)
                if d < 0:
                    d = 0.0
                b_now, b_prev = cur.buckets.get(route, {}), prev.buckets.get(route, {})
                delta = {le: max(0.0, c - b_prev.get(le, 0.0)) for le, c in b_now.items()}
                p50, p99 = quantile(0.5, delta), quantile(0.99, delta)
                routes[route] = (d / dt, None if p50 is None else p50 * 1000, None if p99 is None else p99 * 1000)
            s = Sample(
                t_ms=int(now * 1000),
                rss_bytes=rss,
                errors_per_s=max(0.0, cur.errors - prev.errors) / dt,
                client_errors_per_s=max(0.0, cur.client_errors - prev.client_errors) / dt,
                routes=routes,
            )
            self._ring.append(s)
            return s

    def to_json(self) -> dict[str, Any]:
        """The contract's ``history`` object: parallel arrays, one entry per sample, oldest first."""
        with self._lock:
            ring = list(self._ring)
        names = sorted({r for s in ring for r in s.routes})
        routes: dict[str, dict[str, list[Any]]] = {}
        for name in names:
            got = [s.routes.get(name, (0.0, None, None)) for s in ring]
            routes[name] = {"rate": [round(g[0], 4) for g in got], "p50_ms": [_r(g[1]) for g in got],
                            "p99_ms": [_r(g[2]) for g in got]}
        return {"interval_s": None, "t": [s.t_ms for s in ring], "rss_bytes": [s.rss_bytes for s in ring],
                "errors_per_s": [_r(s.errors_per_s) for s in ring],
                "client_errors_per_s": [_r(s.client_errors_per_s) for s in ring], "routes": routes}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def metrics_totals(metrics: Metrics) -> Callable[[], Totals]:
    """What /metrics renders for requests and latency: this process's values, or (--workers) every worker's."""
    if metrics.multiprocess:
        from prometheus_client.multiprocess import MultiProcessCollector

        collector = MultiProcessCollector(None)
        return lambda: totals_of(collector.collect())
    return lambda: totals_of([*metrics.requests.collect(), *metrics.latency.collect()])
