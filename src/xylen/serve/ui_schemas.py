"""Pydantic models that DOCUMENT the dashboard's JSON feeds (OpenAPI tag "dashboard"); the feeds are built as plain
dicts (serve/ui.py) and never parsed with these. Times are epoch milliseconds, durations seconds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Error(BaseModel):
    error: str = Field(description="What went wrong and the fix.")


class Session(BaseModel):
    auth: Literal["none", "key", "cookie"] = Field(description="none: a server without API keys; key: an API key "
                                                               "header; cookie: a dashboard login.")
    csrf: str | None = Field(description="With a cookie session: the X-CSRF-Token every POST must send.")
    version: str = Field(description="xylen's version.")
    ready: bool
    reason: str | None = Field(description="Why the server is not ready (null when ready).")


class Edge(BaseModel):
    value: float | None = Field(description="The primary head's edge over the volatility-only baseline.")
    low: float | None
    high: float | None = Field(description="low..high: its interval from the walk-forward evaluation.")
    verdict: str | None


class LivePerformance(BaseModel):
    rows: int = Field(description="Candles with a realised label since the promotion (scored).")
    auc: float | None
    hit_rate: float | None = Field(description="Share of the signals (p >= XYLEN_ENTRY_THRESHOLD) whose label was 1.")
    signals: int | None
    baseline_auc: float | None = Field(description="The volatility-only baseline's AUC on the same candles.")
    baseline_hit_rate: float | None
    since: int | None = Field(description="The promotion time.")
    computed_at: int | None = Field(description="When `xylen retrain` last computed the record (WATCH.json).")
    note: str | None = Field(description="Why a figure is missing (too few labels, ...).")


class DashboardModelRow(BaseModel):
    name: str
    live_version: str | None = Field(description="The version CURRENT.json names.")
    loaded_version: str | None = Field(description="The version this server answers with (it follows "
                                                   "CURRENT.json within seconds).")
    created_at: int | None
    age_s: float | None
    stale: bool = Field(description="Older than XYLEN_MODEL_MAX_AGE.")
    max_age_s: float
    label: str | None = Field(description="What `probability` means, one sentence.")
    sentence: str | None = Field(description="The honest sentence: skill with its interval and the baseline, as "
                                             "`xylen models show` says it.")
    edge: Edge | None
    live: LivePerformance | None = Field(description="Outcomes realised since the promotion; null: none computed.")
    report_url: str | None
    members: list[str] | None = Field(description="An ensemble's members (name version).")
    ok: bool
    error: str | None


class ModelsFeed(BaseModel):
    now: int
    models: list[DashboardModelRow]


class Gate(BaseModel):
    decision: str = Field(description="promoted (the candidate passed the gate) or refused (the live one was kept).")
    candidate_score: float | None = Field(description="The candidate's score on the gate's holdout.")
    live_score: float | None = Field(description="The live model's score on the same rows (the constant base rate's "
                                                 "when the live one could not be scored: see compared_with).")
    compared_with: str | None = Field(description="live or base_rate.")
    metric: str | None = Field(description="The gate's metric (logloss: lower is better).")
    reason: str | None
    at: int | None


class VersionRow(BaseModel):
    version: str
    created_at: int | None
    live: bool
    pinned: bool | None = Field(description="null: PINS.json is unreadable.")
    backend: str | None
    sentence: str | None
    edge: Edge | None
    report_url: str | None
    ok: bool
    error: str | None
    gate: Gate | None = Field(description="null: not made by a retrain (no gate ran).")
    parent: str | None = Field(description="The live version a retrain candidate was compared with.")


class HistoryEvent(BaseModel):
    at: int | None
    event: str = Field(description="published, gate promoted, gate refused, live.")
    version: str | None
    detail: str | None


class VersionsFeed(BaseModel):
    name: str
    live_version: str | None
    previous_version: str | None = Field(description="The rollback target.")
    earlier_live: list[str] = Field(description="Earlier live versions, most recent first (CURRENT.json).")
    error: str | None = Field(description="CURRENT.json is unreadable: why.")
    versions: list[VersionRow] = Field(description="Newest first.")
    history: list[HistoryEvent] = Field(description="Newest first.")


class PromoteBody(BaseModel):
    version: str = Field(examples=["v0003"])


class Changed(BaseModel):
    name: str
    live_version: str
    previous_version: str | None


class Series(BaseModel):
    exchange: str
    symbol: str
    interval: str
    first_open_time: int | None
    last_open_time: int | None
    candles: int
    lag_s: float | None = Field(description="Seconds since the last stored candle closed.")
    gaps: list[list[int]] = Field(description="[start, end) of open times missing and not known to the exchange as "
                                              "a gap (the newest 200).")
    gaps_total: int
    missing: int = Field(description="Candles missing in all those gaps.")
    known_gaps: list[list[int]] = Field(description="[start, end) the exchange answered no candles for.")
    error: str | None


class DataFeed(BaseModel):
    now: int
    series: list[Series]
    error: str | None


class RouteHistory(BaseModel):
    rate: list[float] = Field(description="Requests per second.")
    p50_ms: list[float | None]
    p99_ms: list[float | None] = Field(description="null: no request in that sample.")


class ServerHistory(BaseModel):
    interval_s: float
    t: list[int]
    rss_bytes: list[int]
    errors_per_s: list[float | None] = Field(description="5xx answers per second.")
    client_errors_per_s: list[float | None] = Field(description="4xx answers per second.")
    routes: dict[str, RouteHistory]


class Job(BaseModel):
    id: str
    state: str | None = Field(description="running, succeeded, failed, aborted, lost.")
    started_at: int | None
    finished_at: int | None
    models: list[str] | None
    result: str | None


class ServerFeed(BaseModel):
    now: int
    ready: bool
    reason: str | None
    workers: int
    pid: int = Field(description="The worker that answered.")
    rss_bytes: int = Field(description="All workers together.")
    uptime_s: float
    history: ServerHistory
    jobs: list[Job] = Field(description="Retrain jobs, newest first (the last 20).")
