"""How old the served models are and how they have scored since their promotion: /health's stale flag and the
per-model gauges of /metrics.

Age comes from each live manifest's created_at (in memory: no file I/O), judged against XYLEN_MODEL_MAX_AGE by
``xylen.train.watch.staleness`` -- the same rule as `xylen models list`. The live scores come from the watch record
``xylen retrain`` writes (``models/<name>/WATCH.json``, read by ``xylen.train.watch.read``), cached a few seconds
so that a scrape every second costs one small file read per model every few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from xylen.train import watch

if TYPE_CHECKING:
    from xylen.serve.holder import Live, ModelHolder

log = logging.getLogger("xylen.serve")
WATCH_TTL = 5.0  # seconds a WATCH.json read is reused for
# gauge name -> (help, where in the watch record)
LIVE_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "xylen_live_auc": ("AUC of the live version on the labels realised since its promotion.", ("model", "auc")),
    "xylen_live_hit_rate": (
        "Share of the live version's signals (p >= XYLEN_ENTRY_THRESHOLD) since its promotion whose label was 1.",
        ("model", "hit_rate"),
    ),
    "xylen_live_rows": ("Candles with a realised label since the live version's promotion (scored).", ("rows",)),
    "xylen_live_baseline_auc": (
        "AUC of the volatility-only baseline on the same candles as xylen_live_auc.",
        ("volatility_baseline", "auc"),
    ),
    "xylen_live_baseline_hit_rate": (
        "Hit rate of the volatility-only baseline on the same candles as xylen_live_hit_rate.",
        ("volatility_baseline", "hit_rate"),
    ),
}


def staleness(lives: dict[str, Live], max_age_s: float, now: float | None = None) -> dict[str, dict[str, Any]]:
    """{name: {"age_seconds", "max_age_seconds", "stale"}} for each live model (stale None: age unknown)."""
    return {name: watch.staleness(live.bundle.manifest, max_age_s, now) for name, live in sorted(lives.items())}


def stale_names(lives: dict[str, Live], max_age_s: float, now: float | None = None) -> list[str]:
    return [name for name, s in staleness(lives, max_age_s, now).items() if s["stale"]]


def _value(record: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = record
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    return float(node)


class ModelHealth(Collector):
    """Gauges computed when /metrics renders, by whichever worker answers: every worker reads the same files, so
    the values agree and nothing is summed across workers."""

    def __init__(
        self,
        holder: ModelHolder,
        max_age_s: float,
        *,
        ttl: float = WATCH_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._holder = holder
        self._max_age = max_age_s
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, str, dict[str, Any] | None]] = {}  # name -> (read at, version, record)
        self._lock = threading.Lock()  # two scrapes at once read the file once

    def watch_record(self, live: Live) -> dict[str, Any] | None:
        registry = self._holder.registry
        if registry is None:
            return None  # a MODEL_PATH model has no watch record
        now = self._clock()
        with self._lock:
            hit = self._cache.get(live.name)
            if hit is not None and hit[1] == live.version and now - hit[0] < self._ttl:
                return hit[2]
            record = watch.read(registry, live.name)  # never raises; None unless it describes the live version
            if record is not None and record.get("version") != live.version:
                record = None  # CURRENT moved on and this worker has not swapped yet
            self._cache[live.name] = (now, live.version, record)
            return record

    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "xylen_model_age_seconds", "Seconds since the live version was created (its manifest).", labels=["model"]
        )
        stale = GaugeMetricFamily(
            "xylen_model_stale", "1 when the live version is older than XYLEN_MODEL_MAX_AGE, else 0.", labels=["model"]
        )
        gauges = {name: GaugeMetricFamily(name, text, labels=["model"]) for name, (text, _) in LIVE_GAUGES.items()}
        lives = self._holder.live
        for name, s in staleness(lives, self._max_age).items():
            if s["age_seconds"] is not None:
                age.add_metric([name], s["age_seconds"])
                stale.add_metric([name], 1.0 if s["stale"] else 0.0)
            try:
                record = self.watch_record(lives[name])
            except Exception as exc:  # a scrape must never fail because of one model's files
                log.warning("watch record of %s unreadable: %s", name, exc)
                record = None
            for gauge, (_, path) in LIVE_GAUGES.items():
                value = None if record is None else _value(record, path)
                if value is not None:  # not computed yet (too few labels, no baseline): absent, not 0
                    gauges[gauge].add_metric([name], value)
        yield age
        yield stale
        yield from gauges.values()
