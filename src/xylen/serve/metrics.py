"""Prometheus metrics with a tiny per-request cost: label values come from a fixed route table, never from
the request, and label children are bound once and cached."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from xylen.serve.holder import Live, SwapEvents

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series double the output and nobody graphs them
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("xylen_http_requests_total", "HTTP requests by route and status.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("xylen_http_request_duration_seconds", "Request latency by route and status.",
                                 ["route", "status"], buckets=BUCKETS, registry=r)
        self.predictions = Counter("xylen_predictions_total", "Predictions by model and class.",
                                   ["model", "prediction"], registry=r)
        self.model_info = Gauge("xylen_model_info", "1 for the live version of each model.", ["model", "version"],
                                registry=r)
        self.model_version = Gauge("xylen_model_version", "Live version number (v0007 -> 7) per model.",
                                   ["model"], registry=r)
        self.model_age = Gauge("xylen_model_loaded_age_seconds", "Seconds since the live version was loaded.",
                               ["model"], registry=r)
        self.swaps = Counter("xylen_model_swaps_total", "Hot-swap candidates by model and result.",
                             ["model", "result"], registry=r)
        self._bound: dict[tuple[str, int], tuple[object, object]] = {}
        self._pred: dict[tuple[str, int], object] = {}
        self._live_versions: dict[str, str] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        pair = self._bound.get(key)
        if pair is None:
            s = str(status)
            pair = self._bound[key] = (self.requests.labels(route, s), self.latency.labels(route, s))
        pair[0].inc()  # type: ignore[attr-defined]
        pair[1].observe(seconds)  # type: ignore[attr-defined]

    def predicted(self, model: str, cls: int) -> None:
        child = self._pred.get((model, cls))
        if child is None:
            child = self._pred[(model, cls)] = self.predictions.labels(model, str(cls))
        child.inc()  # type: ignore[attr-defined]

    def accepted(self, live: Live) -> None:
        old = self._live_versions.get(live.name)
        if old is not None:
            self.model_info.remove(live.name, old)
        self._live_versions[live.name] = live.version
        self.model_info.labels(live.name, live.version).set(1)
        digits = live.version.lstrip("v")
        if digits.isdigit():
            self.model_version.labels(live.name).set(int(digits))
        loaded = live.loaded_at
        self.model_age.labels(live.name).set_function(lambda: time.time() - loaded)
        self.swaps.labels(live.name, "accepted").inc()

    def refused(self, name: str, version: str, reason: str) -> None:
        self.swaps.labels(name, "refused").inc()

    def events(self) -> SwapEvents:
        return SwapEvents(accepted=self.accepted, refused=self.refused)

    def render(self) -> bytes:
        return generate_latest(self.registry)
