"""Prometheus metrics with a tiny per-request cost: label values come from a fixed route table, never from
the request, and label children are bound once and cached.

One process keeps its values in memory (the cheapest). Under `xylen serve --workers N` the parent points
PROMETHEUS_MULTIPROC_DIR at a private directory before the workers start, so prometheus_client keeps each
worker's values in its own mmap file there, and /metrics merges every worker's file when it renders: whichever
worker answers, the counters are those of all workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from xylen.serve.holder import Live, ModelHolder, SwapEvents
from xylen.serve.model_health import ModelHealth

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# a stream message costs tens of µs: finer buckets below 1 ms
WS_BUCKETS = (0.000025, 0.00005, 0.000075, 0.0001, 0.00015, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
INFO = "xylen_model_info"


def multiprocess_mode() -> bool:
    """Whether prometheus_client stores values in PROMETHEUS_MULTIPROC_DIR (decided when it was imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series double the output and nobody graphs them
        self.multiprocess = multiprocess_mode()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "xylen_http_requests_total", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "xylen_http_request_duration_seconds",
            "Request latency by route and status.",
            ["route", "status"],
            buckets=BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "xylen_predictions_total", "Predictions by model and class.", ["model", "prediction"], registry=r
        )
        # workers: 1 while any live worker serves the version (a worker that died is marked dead by the parent)
        self.model_info = Gauge(
            INFO, "1 for the live version of each model.", ["model", "version"], registry=r, multiprocess_mode="livemax"
        )
        # workers: the version the last swap in any live worker made live (a rollback lowers it)
        self.model_version = Gauge(
            "xylen_model_version",
            "Live version number (v0007 -> 7) per model.",
            ["model"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.swaps = Counter(
            "xylen_model_swaps_total", "Hot-swap candidates by model and result.", ["model", "result"], registry=r
        )
        self.retrain_jobs = Counter(
            "xylen_retrain_jobs_total",
            "POST /retrain jobs by outcome: succeeded, failed, aborted (server shutdown), busy (409: one was running).",
            ["outcome"],
            registry=r,
        )
        # /ws/predict (serve/stream.py): label values from stream.MESSAGE_TYPES, never from a message
        self.ws_connections = Gauge(
            "xylen_ws_connections", "Open /ws/predict connections.", registry=r, multiprocess_mode="livesum"
        )
        self.ws_messages = Counter(
            "xylen_ws_messages_total", "/ws/predict messages received, by type.", ["type"], registry=r
        )
        self.ws_latency = Histogram(
            "xylen_ws_message_duration_seconds",
            "Server time per /ws/predict message, by type (from receiving it to its answers sent).",
            ["type"],
            buckets=WS_BUCKETS,
            registry=r,
        )
        self._ws_bound: dict[str, tuple[object, object]] = {}
        self._bound: dict[tuple[str, int], tuple[object, object]] = {}
        self._pred: dict[tuple[str, int], object] = {}
        self._live_versions: dict[str, str] = {}
        self._loaded_at: dict[str, float] = {}  # replaced, never mutated: render() reads it from another thread
        ages = _Ages(self)
        r.register(ages)
        if self.multiprocess:
            from prometheus_client.multiprocess import MultiProcessCollector

            self._rendered = CollectorRegistry()
            self._rendered.register(_LiveVersionsOnly(MultiProcessCollector(None)))
            self._rendered.register(ages)
        else:
            self._rendered = r

    def watch_models(self, holder: ModelHolder, max_age_s: float) -> None:
        """Add the per-model age, stale flag and watch-record gauges: read from the manifests and WATCH.json when
        /metrics renders (never stored in the multiprocess files, so N workers never add them up)."""
        self._rendered.register(ModelHealth(holder, max_age_s))

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        pair = self._bound.get(key)
        if pair is None:
            s = str(status)
            pair = self._bound[key] = (self.requests.labels(route, s), self.latency.labels(route, s))
        pair[0].inc()  # type: ignore[attr-defined]
        pair[1].observe(seconds)  # type: ignore[attr-defined]

    def ws_message(self, kind: str, seconds: float) -> None:
        pair = self._ws_bound.get(kind)
        if pair is None:
            pair = self._ws_bound[kind] = (self.ws_messages.labels(kind), self.ws_latency.labels(kind))
        pair[0].inc()  # type: ignore[attr-defined]
        pair[1].observe(seconds)  # type: ignore[attr-defined]

    def predicted(self, model: str, cls: int) -> None:
        child = self._pred.get((model, cls))
        if child is None:
            child = self._pred[(model, cls)] = self.predictions.labels(model, str(cls))
        child.inc()  # type: ignore[attr-defined]

    def accepted(self, live: Live) -> None:
        old = self._live_versions.get(live.name)
        if old is not None and old != live.version:
            if self.multiprocess:  # prometheus_client cannot remove a series there: 0, and render() drops it
                self.model_info.labels(live.name, old).set(0)
            else:
                self.model_info.remove(live.name, old)
        self._live_versions[live.name] = live.version
        self.model_info.labels(live.name, live.version).set(1)
        digits = live.version.lstrip("v")
        if digits.isdigit():
            self.model_version.labels(live.name).set(int(digits))
        self._loaded_at = {**self._loaded_at, live.name: live.loaded_at}
        self.swaps.labels(live.name, "accepted").inc()

    def refused(self, name: str, version: str, reason: str) -> None:
        self.swaps.labels(name, "refused").inc()

    def retrain_finished(self, outcome: str) -> None:
        self.retrain_jobs.labels(outcome).inc()

    def events(self) -> SwapEvents:
        return SwapEvents(accepted=self.accepted, refused=self.refused)

    def render(self) -> bytes:
        return generate_latest(self._rendered)


class _Ages(Collector):
    """Seconds since each live version was loaded, computed when /metrics renders (a callback gauge cannot be
    stored in a multiprocess file); under --workers, as seen by the worker that answers."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "xylen_model_loaded_age_seconds", "Seconds since the live version was loaded.", labels=["model"]
        )
        now = time.time()
        for name, loaded in sorted(self._metrics._loaded_at.items()):
            family.add_metric([name], now - loaded)
        yield family


class _LiveVersionsOnly(Collector):
    """Every worker's files, less the xylen_model_info series no live worker sets to 1 any more."""

    def __init__(self, inner: Collector) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        for metric in self._inner.collect():
            if metric.name == INFO:
                metric.samples = [s for s in metric.samples if s.value != 0]
            yield metric
