"""The dashboard at /ui (issue #14): its pages, its JSON feeds and the promote/rollback actions.

Contract with the page (src/xylen/serve/ui_assets/): the dashboard's routes and shapes are written down in the
repository's ui-contract; the OpenAPI schema documents every JSON feed under the tag "dashboard".

Who may call: the gate lets every /ui path through without a key (the login page must load) and applies its Host
rule to keyless servers; this module decides the rest. Without API keys: everyone the gate let in. With keys: a
valid key header, or a session cookie (serve/ui_auth.py) for the feeds, reports and actions; the page itself
answers a login form until there is one. A state-changing POST authenticated by the cookie needs
``Content-Type: application/json`` (the gate) and the session's ``X-CSRF-Token``; any POST whose ``Origin`` is
another site is refused (403).

Nothing here is on the /predict path: the feeds run their file reads in worker threads, cache them briefly, and
the server history is sampled by a background task (serve/ui_history.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import html
import logging
import mimetypes
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

import orjson
import psutil
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from xylen import __version__
from xylen.core import labels, summary
from xylen.core.bundle import Manifest
from xylen.core.errors import BundleError, ConfigError, XylenError
from xylen.core.registry import Registry, _primary_edge, check_name, check_version
from xylen.serve import ui_auth, ui_schemas
from xylen.serve.auth import presented_key
from xylen.serve.decode import RequestError
from xylen.serve.state import ServeState
from xylen.serve.ui_history import History, metrics_totals
from xylen.train import watch

log = logging.getLogger("xylen.serve.ui")

ASSETS_DIR = Path(__file__).with_name("ui_assets")
ASSETS_URL = "/ui/assets"
JSON = "application/json"
FEED_TTL = 1.0  # seconds a models/versions/server answer is reused: a page refreshing every second, many tabs
DATA_TTL = 5.0  # the data feed reads the store: at most once per 5 s, and only series whose files changed
MAX_GAPS = 200  # gaps listed per series (the newest); "missing" counts them all
JOBS = 20  # retrain jobs listed, newest first
# the page: only this origin (its scripts, styles, images, fetch and WebSocket), never framed (promote buttons)
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
            "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
# a training report: inline CSS and data: images only, no script at all
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; "
              "form-action 'none'; frame-ancestors 'self'")
_PAGE_HEADERS = {"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY", "Cache-Control": "no-store",
                 # not no-referrer: a form POST from such a page carries "Origin: null", which check_origin refuses
                 "Referrer-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}

Kind = Literal["none", "key", "cookie"]


@dataclass(frozen=True)
class Auth:
    kind: Kind
    digest: bytes | None = None  # cookie: the key digest that signed the session
    token: str | None = None  # cookie: the session token


def ms(epoch_s: float | None) -> int | None:
    return None if epoch_s is None else int(epoch_s * 1000)


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=JSON,
                    headers={"Cache-Control": "no-store", **(headers or {})})


class _Cache:
    """Answers reused for ``ttl`` seconds; one computation at a time per key (in a worker thread)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[str, tuple[float, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, key: str, ttl: float, compute: Callable[[], Any]) -> Any:
        hit = self._hits.get(key)
        if hit is not None and self._clock() - hit[0] < ttl:
            return hit[1]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._hits.get(key)
            if hit is not None and self._clock() - hit[0] < ttl:
                return hit[1]
            value = await asyncio.to_thread(compute)
            if len(self._hits) > 256:
                self._hits.clear()
            self._hits[key] = (self._clock(), value)
            return value

    def drop(self, prefix: str) -> None:
        for k in [k for k in self._hits if k.startswith(prefix)]:
            del self._hits[k]


class Dashboard:
    """What the /ui routes need, once per app: the serve state, the history sampler and the caches."""

    def __init__(self, state: ServeState, *, assets: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.assets = assets or ASSETS_DIR
        self.clock = clock
        self.max_age = state.settings.ui_session_max_age
        self.interval = state.settings.ui_sample_s
        self.history = History(metrics_totals(state.metrics), pids=self._pids)
        self.cache = _Cache()
        self._manifests: dict[tuple[str, str], Manifest | str] = {}
        self._series: dict[tuple[str, str, str], tuple[Any, dict[str, Any]]] = {}
        self._stores: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    # -- lifespan ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.history.sample)
            except Exception as exc:  # a sample must never end the sampler
                log.warning("dashboard history sample failed: %s", exc)
            await asyncio.sleep(self.interval)

    def _pids(self) -> list[int]:
        board = self.state.board
        return [e.pid for e in board.live()] if board is not None else [os.getpid()]

    # -- who is calling ----------------------------------------------------------------------------------
    def who(self, request: Request) -> Auth | None:
        keys = self.state.keys
        if not keys.enabled:
            return Auth("none")
        headers = request.scope["headers"]
        if keys.check(presented_key(headers)):
            return Auth("key")
        token = ui_auth.cookie_value(headers)
        digest = ui_auth.verify(keys.session_secret, token, keys.digests, self.clock(), self.max_age)
        return None if digest is None or token is None else Auth("cookie", digest, token)

    def require(self, request: Request) -> Auth:
        auth = self.who(request)
        if auth is None:
            raise RequestError(401, "Not logged in: open /ui and log in with an API key (the session may have "
                                    "expired), or send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
        return auth

    def check_origin(self, request: Request) -> None:
        """A POST from a page of another site is refused, whatever it carries."""
        headers = request.scope["headers"]
        origin = ui_auth.header(headers, b"origin")
        site = ui_auth.header(headers, b"sec-fetch-site")
        if site is not None and site.lower() == b"cross-site":
            raise RequestError(403, "A page of another site may not act on this server (Sec-Fetch-Site: "
                                    "cross-site). hint: use the dashboard at /ui on this server.")
        if origin is not None and not ui_auth.origin_ok(origin, ui_auth.header(headers, b"host"),
                                                        self.state.settings.allowed_host_list()):
            raise RequestError(403, f"Origin {origin[:100].decode('latin-1')!r} may not act on this server: only "
                                    "its own pages, loopback pages and hosts in XYLEN_ALLOWED_HOSTS may. hint: use "
                                    "the dashboard at /ui on this server.")

    def require_post(self, request: Request) -> Auth:
        auth = self.require(request)
        self.check_origin(request)
        if auth.kind == "cookie":
            assert auth.digest is not None and auth.token is not None
            got = ui_auth.header(request.scope["headers"], ui_auth.CSRF_HEADER)
            if got is None:
                raise RequestError(403, "This action needs the header X-CSRF-Token (the dashboard's session sends "
                                        "it; its value is the `csrf` of GET /ui/api/session).")
            if not ui_auth.csrf_ok(self.state.keys.session_secret, auth.digest, auth.token, got.decode("latin-1")):
                raise RequestError(403, "The X-CSRF-Token does not belong to this session. hint: reload /ui "
                                        "(GET /ui/api/session gives the current one).")
        return auth

    def secure(self, request: Request) -> bool:
        proto = ui_auth.header(request.scope["headers"], b"x-forwarded-proto")
        return request.url.scheme == "https" or (proto is not None and proto.strip().lower() == b"https")

    # -- registry reads (worker threads) -----------------------------------------------------------------
    @property
    def registry(self) -> Registry | None:
        return self.state.holder.registry

    def manifest(self, name: str, version: str) -> Manifest:
        """A version's manifest; bundles never change, so it is read once (a damaged one: its error, once)."""
        key = (name, version)
        got = self._manifests.get(key)
        if got is None:
            reg = self.registry
            assert reg is not None
            try:
                got = reg.manifest(name, version)
            except BundleError as exc:
                got = exc.message
            if len(self._manifests) > 4096:
                self._manifests.clear()
            self._manifests[key] = got
        if isinstance(got, str):
            raise BundleError(got)
        return got

    def report_url(self, name: str, version: str) -> str | None:
        reg = self.registry
        if reg is None:
            return None
        path = reg.path(name, version) / "report.html"
        return f"/ui/report/{name}/{version}/report.html" if path.is_file() and not path.is_symlink() else None

    def models_feed(self) -> dict[str, Any]:
        now = self.clock()
        reg = self.registry
        loaded = self.state.holder.live
        names = sorted(set(reg.live_names()) | set(loaded)) if reg is not None else sorted(loaded)
        return {"now": ms(now), "models": [self._model_row(n, now) for n in names]}

    def _model_row(self, name: str, now: float) -> dict[str, Any]:
        reg = self.registry
        live = self.state.holder.live.get(name)
        row: dict[str, Any] = {
            "name": name, "live_version": None, "loaded_version": live.version if live else None,
            "created_at": None, "age_s": None, "stale": False, "max_age_s": self.state.settings.model_max_age,
            "label": None, "sentence": None, "edge": None, "live": None, "report_url": None, "members": None,
            "ok": True, "error": None}
        try:
            if reg is not None:
                ptr = reg.current(name)
                if ptr is None:
                    raise BundleError(f"Model {name!r} has no live version (no CURRENT.json).")
                row["live_version"] = ptr.version
                m = self.manifest(name, ptr.version)
                row["report_url"] = self.report_url(name, ptr.version)
                rec = watch.read(reg, name)
                row["live"] = None if rec is None else live_of(rec, ptr.promoted_at)
            else:
                assert live is not None
                row["live_version"] = live.version
                m = live.bundle.manifest
            row.update(describe(m, self.state.settings.model_max_age, now))
        except XylenError as exc:
            row["ok"], row["error"] = False, exc.message
        return row

    def versions_feed(self, name: str) -> dict[str, Any]:
        reg = self.registry
        if reg is None:
            raise RequestError(404, "This server serves one MODEL_PATH model, not a registry: it has no versions. "
                                    "hint: serve the registry (unset MODEL_PATH).")
        versions = reg.versions(name)
        try:
            ptr = reg.current(name)
            pointer_error = None
        except BundleError as exc:
            ptr, pointer_error = None, exc.message
        if not versions and ptr is None and pointer_error is None:
            raise RequestError(404, f"No model named {name!r} in the registry; see GET /ui/api/models.")
        try:
            pins: set[str] | None = reg.pins(name)
        except BundleError:
            pins = None
        rows = []
        history: list[dict[str, Any]] = []
        for v in reversed(versions):
            row: dict[str, Any] = {"version": v, "created_at": None, "live": bool(ptr and ptr.version == v),
                                   "pinned": None if pins is None else v in pins, "backend": None, "sentence": None,
                                   "edge": None, "report_url": None, "ok": True, "error": None, "gate": None,
                                   "parent": None}
            try:
                m = self.manifest(name, v)
                created = watch.parse_iso(m.created_at)
                extra = m.model_extra or {}
                retrain = _dict(extra.get("retrain"))
                row.update(created_at=ms(created), backend=m.backend, sentence=summary.sentence(m),
                           edge=_primary_edge(m.metrics or {}), report_url=self.report_url(name, v),
                           gate=gate_of(extra.get("gate"), created), parent=retrain.get("parent"))
                history.append(publish_event(v, created, row["gate"], row["parent"]))
            except XylenError as exc:
                row["ok"], row["error"] = False, exc.message
            rows.append(row)
        if ptr is not None:
            history.append({"at": ms(watch.parse_iso(ptr.promoted_at)), "event": "live", "version": ptr.version,
                            "detail": f"made live (CURRENT.json); rollback target: "
                                      f"{ptr.history[0] if ptr.history else 'none'}"})
        history.sort(key=lambda e: e["at"] or 0, reverse=True)
        return {"name": name, "live_version": ptr.version if ptr else None,
                "previous_version": ptr.history[0] if ptr and ptr.history else None,
                "earlier_live": list(ptr.history) if ptr else [], "error": pointer_error,
                "versions": rows, "history": history}

    def change(self, name: str, version: str | None) -> dict[str, Any]:
        """Promote ``version`` (None: roll back) through the registry, which verifies it first."""
        reg = self.registry
        if reg is None:
            raise RequestError(409, "This server serves one MODEL_PATH model, not a registry: nothing to promote "
                                    "or roll back. hint: serve the registry (unset MODEL_PATH).")
        if name not in reg.names():
            raise RequestError(404, f"No model named {name!r} in the registry; see GET /ui/api/models.")
        if version is not None and version not in reg.versions(name):
            raise RequestError(404, f"Model {name!r} has no version {version!r} (known: "
                                    f"{', '.join(reg.versions(name)) or 'none'}).")
        try:
            before = reg.current(name)
        except BundleError:
            before = None  # a damaged pointer: a promotion repairs it
        try:
            ptr = reg.promote(name, version) if version is not None else reg.rollback(name)
        except XylenError as exc:
            raise RequestError(409, f"{exc.message} hint: {exc.hint}" if exc.hint else exc.message) from None
        log.info("dashboard: %s %s -> %s", name, "promote" if version else "rollback", ptr.version)
        return {"name": name, "live_version": ptr.version, "previous_version": before.version if before else None}

    # -- the store (worker thread) -----------------------------------------------------------------------
    def data_feed(self) -> dict[str, Any]:
        from xylen.core.imports import allow_heavy_import

        allow_heavy_import("polars")  # the store reads Parquet with polars: loaded once the Data view is opened
        from xylen.core.store import Store

        now = self.clock()
        settings = self.state.settings
        root, endpoint, cache = settings.data_location, settings.s3_endpoint_url, settings.home / "cache"
        series: list[dict[str, Any]] = []
        try:
            listable = isinstance(root, str) or root.is_dir()
            exchanges = Store.exchanges(root, endpoint_url=endpoint, cache=cache) if listable else []
        except XylenError as exc:
            return {"now": ms(now), "series": [], "error": exc.message}
        seen = set()
        for ex in exchanges:
            store = self._stores.get(ex)
            if store is None:
                store = self._stores[ex] = Store(root, ex, serialize_writers=False, endpoint_url=endpoint, cache=cache)
            try:
                listed = store.series()
            except XylenError as exc:
                series.append(_series_error(ex, "", "", exc.message))
                continue
            for sym, iv in listed:
                seen.add((ex, sym, iv))
                series.append(self._series_row(store, sym, iv, now))
        for key in [k for k in self._series if k not in seen]:
            del self._series[key]
        return {"now": ms(now), "series": series, "error": None}

    def _series_row(self, store: Any, symbol: str, interval: str, now: float) -> dict[str, Any]:
        from xylen.core import intervals
        from xylen.core.store_files import covered

        key = (store.exchange, symbol, interval)
        try:
            stamp = store.fingerprint(symbol, interval) if store.remote else _fingerprint(store, symbol, interval)
            hit = self._series.get(key)
            if hit is not None and hit[0] == stamp:
                base = hit[1]
            else:
                t = store.read(symbol, interval)["open_time"].to_numpy()
                known = store.known_gaps(symbol, interval)
                holes = [(a, b) for a, b in intervals.holes(t, interval) if not covered(a, b, known)]
                base = {"exchange": store.exchange, "symbol": symbol, "interval": interval,
                        "first_open_time": int(t[0]) if len(t) else None,
                        "last_open_time": int(t[-1]) if len(t) else None, "candles": int(len(t)),
                        "next_open_time": intervals.next_open(int(t[-1]), interval) if len(t) else None,
                        "gaps": [list(g) for g in holes[-MAX_GAPS:]], "gaps_total": len(holes),
                        "missing": sum(intervals.slots(a, b, interval) for a, b in holes),
                        "known_gaps": [list(g) for g in known[-MAX_GAPS:]], "error": None}
                self._series[key] = (stamp, base)
        except XylenError as exc:
            return _series_error(store.exchange, symbol, interval, exc.message)
        nxt = base["next_open_time"]
        lag = None if nxt is None else max(0.0, now - nxt / 1000)  # since the last stored candle closed
        return {k: v for k, v in base.items() if k != "next_open_time"} | {"lag_s": lag}

    # -- the server (worker thread) ----------------------------------------------------------------------
    def server_feed(self) -> dict[str, Any]:
        st = self.state
        reason = st.not_ready_reason()
        history = self.history.to_json()
        history["interval_s"] = self.interval
        return {"now": ms(self.clock()), "ready": reason is None, "reason": reason,
                "workers": st.board.workers if st.board is not None else 1, "pid": os.getpid(),
                "rss_bytes": _rss(self._pids()), "uptime_s": round(st.uptime(), 3), "history": history,
                "jobs": self.jobs()}

    def jobs(self) -> list[dict[str, Any]]:
        jobs = self.state.jobs
        if jobs is None:
            return []
        try:
            files = sorted(jobs.dir.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:JOBS]
        except OSError:
            return []
        out = []
        for f in files:
            rec = jobs.read(f.stem)
            if rec is None:
                continue
            models = rec.get("models")
            out.append({"id": f.stem, "state": rec.get("state"),
                        "started_at": ms(watch.parse_iso(rec.get("started_at"))),
                        "finished_at": ms(watch.parse_iso(rec.get("finished_at"))),
                        "models": [str(m) for m in models] if isinstance(models, list) else None,
                        "result": str(rec["message"])[:2000] if rec.get("message") is not None else None})
        return out

    # -- reports -----------------------------------------------------------------------------------------
    def report_file(self, name: str, version: str, file: str) -> Path:
        """The file of a version's report (report.html, report/<plot>): nothing outside the bundle folder, no
        symlink, no hidden file; RequestError 404 for anything else."""
        reg = self.registry
        missing = RequestError(404, f"No report file {file[:80]!r} for model {name[:64]!r} {version[:16]!r}. hint: "
                                    "the dashboard's report links name the files a training wrote.")
        if reg is None:
            raise missing
        try:
            folder = reg.path(check_name(name), check_version(name, version))
        except XylenError:
            raise missing from None
        parts = file.split("/")
        if not (parts == ["report.html"] or (len(parts) == 2 and parts[0] == "report")):
            raise missing
        if any(not p or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            raise missing
        path = folder
        try:
            for p in [*parts]:
                path = path / p
                if stat.S_ISLNK(os.lstat(path).st_mode):
                    raise missing
            if not stat.S_ISREG(os.lstat(path).st_mode) or stat.S_ISLNK(os.lstat(folder).st_mode):
                raise missing
            if os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) != os.path.realpath(folder):
                raise missing
        except OSError:
            raise missing from None
        return path


def describe(m: Manifest, max_age_s: float, now: float) -> dict[str, Any]:
    """The row fields a manifest gives: age, stale flag, what the label means, the honest sentence, the edge."""
    age = watch.staleness(m, max_age_s, now)
    spec = labels.read(m.label)
    members = _dict((m.model_extra or {}).get("ensemble")).get("members") if m.backend == "ensemble" else None
    return {"created_at": ms(watch.parse_iso(m.created_at)), "age_s": age["age_seconds"],
            "stale": bool(age["stale"]), "label": spec.predicts() if spec is not None else None,
            "sentence": summary.sentence(m), "edge": _primary_edge(m.metrics or {}),
            "members": [f"{x.get('name')} {x.get('version')}" for x in members if isinstance(x, dict)]
            if isinstance(members, list) else None}


def live_of(rec: dict[str, Any], promoted_at: str) -> dict[str, Any]:
    """The watch record (WATCH.json) as the feed's ``live``: outcomes realised since the promotion."""
    model, base = _dict(rec.get("model")), _dict(rec.get("volatility_baseline"))
    return {"rows": int(rec.get("rows") or 0), "auc": model.get("auc"), "hit_rate": model.get("hit_rate"),
            "signals": model.get("signals"), "baseline_auc": base.get("auc"),
            "baseline_hit_rate": base.get("hit_rate"), "since": ms(watch.parse_iso(promoted_at)),
            "computed_at": ms(watch.parse_iso(rec.get("computed_at"))), "note": rec.get("note")}


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def gate_of(gate: Any, created: float | None) -> dict[str, Any] | None:
    """A retrain candidate's gate record (manifest model_extra.gate) as the feed shows it: the decision, both
    scores on the gate's metric (the live model's, or the constant base rate's when the live one was unreadable),
    and the reason."""
    if not isinstance(gate, dict):
        return None
    metric = gate.get("metric") if isinstance(gate.get("metric"), str) else None

    def score(side: Any) -> float | None:
        v = side.get(metric) if isinstance(side, dict) and metric else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    against = gate.get("compared_with")
    decision = {"promote": "promoted", "keep": "refused"}.get(str(gate.get("decision")), str(gate.get("decision")))
    return {"decision": decision, "candidate_score": score(gate.get("candidate")),
            "live_score": score(gate.get("live") if against != "base_rate" else gate.get("base_rate")),
            "compared_with": against if isinstance(against, str) else None, "metric": metric,
            "reason": str(gate["reason"]) if gate.get("reason") is not None else None, "at": ms(created)}


def publish_event(version: str, created: float | None, gate: dict[str, Any] | None,
                  parent: Any) -> dict[str, Any]:
    if gate is None:
        return {"at": ms(created), "event": "published", "version": version, "detail": "trained"}
    verdict = "passed the gate" if gate["decision"] == "promoted" else "refused by the gate"
    return {"at": ms(created), "event": f"gate {gate['decision']}", "version": version,
            "detail": f"retrain candidate of {parent or 'the live version'} {verdict}: {gate['reason']}"}


def _series_error(exchange: str, symbol: str, interval: str, message: str) -> dict[str, Any]:
    return {"exchange": exchange, "symbol": symbol, "interval": interval, "first_open_time": None,
            "last_open_time": None, "candles": 0, "lag_s": None, "gaps": [], "gaps_total": 0, "missing": 0,
            "known_gaps": [], "error": message}


def _fingerprint(store: Any, symbol: str, interval: str) -> tuple[Any, ...]:
    """What changes when a series' candles or known gaps do: its files (name, inode, size, mtime)."""
    from xylen.core.store_meta import gaps_key

    out: list[Any] = []
    for path in [*store.files(symbol, interval), store.root / gaps_key(store.exchange, symbol, interval)]:
        try:
            st = path.stat()
            out.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(path), None))
    return tuple(out)


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


# -- pages ---------------------------------------------------------------------------------------------------
_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>xylen dashboard: log in</title><link rel="icon" href="data:,">
<style>
body{{font-family:system-ui,sans-serif;background:#f6f7f9;color:#111;display:flex;justify-content:center;
margin:0;padding-top:12vh}}
form{{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:24px 28px;width:320px}}
h1{{font-size:18px;margin:0 0 12px}} label{{display:block;font-size:13px;margin-bottom:6px}}
input{{width:100%;box-sizing:border-box;padding:8px;font-size:14px;border:1px solid #bbb;border-radius:4px}}
button{{margin-top:14px;padding:8px 14px;font-size:14px;border:0;border-radius:4px;background:#2563eb;color:#fff}}
.error{{color:#b91c1c;font-size:13px;margin:0 0 10px}} .note{{color:#555;font-size:12px;margin-top:14px}}
</style></head><body>
<form id="login" method="post" action="{action}" autocomplete="off">
<h1>xylen dashboard</h1>
{error}<label for="key">API key</label>
<input id="key" name="key" type="password" required autofocus>
<button type="submit">Log in</button>
<p class="note">The key is checked once; the browser keeps a signed session cookie (HttpOnly), never the key.</p>
</form></body></html>
"""


def login_page(root: str, error: str | None = None, status: int = 200) -> Response:
    body = _LOGIN.format(action=html.escape(f"{root}/ui/login"),
                         error=f'<p class="error" role="alert">{html.escape(error)}</p>\n' if error else "")
    return Response(body, status_code=status, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


@functools.cache
def _assets_digest(folder: Path, stamp: tuple[Any, ...]) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def assets_digest(folder: Path) -> str:
    """A digest of the page's files, for ``?v=`` in their URLs (recomputed when the folder changes)."""
    try:
        stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*")))
    except OSError:
        stamp = ()
    return _assets_digest(folder, stamp)


class Assets:
    """StaticFiles over the page's folder (404 for anything that leaves it, symlinks out included), with an
    ETag, and a year's cache for a URL carrying the current ``?v=`` digest (revalidation otherwise)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = StaticFiles(directory=folder, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.folder.is_dir():
            await Response(orjson.dumps({"error": "The dashboard's files are not installed."}), 404,
                           media_type=JSON)(scope, receive, send)
            return
        current = scope.get("query_string", b"") == b"v=" + assets_digest(self.folder).encode()
        cache = b"public, max-age=31536000, immutable" if current else b"no-cache"

        async def with_cache(msg: Message) -> None:
            if msg["type"] == "http.response.start" and msg["status"] < 400:
                msg["headers"] = [*msg.get("headers", ()), (b"cache-control", cache),
                                  (b"x-content-type-options", b"nosniff")]
            await send(msg)

        await self.files(scope, receive, with_cache)


# -- routes --------------------------------------------------------------------------------------------------
router = APIRouter()
TAG = "dashboard"
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ui_schemas.Error, "description": "API keys are set and the request has neither a valid key nor "
                                                    "a valid session cookie."},
    421: {"model": ui_schemas.Error, "description": "A server without API keys: the Host is not a loopback name "
                                                    "nor in XYLEN_ALLOWED_HOSTS."},
}
_POST_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH_ERRORS,
    403: {"model": ui_schemas.Error, "description": "Cookie-authenticated without a valid X-CSRF-Token, or sent by "
                                                    "a page of another origin."},
    404: {"model": ui_schemas.Error, "description": "No such model or version."},
    409: {"model": ui_schemas.Error, "description": "Refused by the registry (the version failed verification, "
                                                    "nothing to roll back to): the reason; nothing changed."},
    415: {"model": ui_schemas.Error, "description": "Not Content-Type: application/json (without a key)."},
    422: {"model": ui_schemas.Error, "description": "The body is not the expected JSON object."},
}


def dash(request: Request) -> Dashboard:
    return request.app.state.dashboard  # type: ignore[no-any-return]


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/ui/", include_in_schema=False)
async def slash(request: Request) -> Response:
    """The page's asset and feed URLs are relative to /ui: /ui/ would resolve them one folder too deep."""
    return Response(status_code=308, headers={"Location": f"{_root(request)}/ui"})


@router.get("/ui", include_in_schema=False)
async def page(request: Request) -> Response:
    d = dash(request)
    if d.who(request) is None:
        return login_page(_root(request))
    index = d.assets / "index.html"
    try:
        text = await asyncio.to_thread(index.read_text, encoding="utf-8")
    except OSError:
        return Response("<!doctype html><title>xylen dashboard</title><p>The dashboard's page is not installed "
                        "(xylen/serve/ui_assets/index.html is missing): reinstall xylen.</p>", 503,
                        media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)
    text = text.replace("__ASSETS_V__", assets_digest(d.assets))
    return Response(text, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


@router.post("/ui/login", include_in_schema=False)
async def login(request: Request) -> Response:
    d = dash(request)
    root = _root(request)
    keys = d.state.keys
    if not keys.enabled:  # nothing to log in to: the page is open (to the Hosts the gate answers)
        return Response(status_code=303, headers={"Location": f"{root}/ui"})
    d.check_origin(request)
    raw = await request.body()
    kind = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded" or len(raw) > 4096:
        return login_page(root, "Send the form of this page (field `key`, application/x-www-form-urlencoded).", 400)
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        fields = {}
    key = (fields.get("key") or [""])[0].strip().encode()
    digest = _digest_of(key, keys.digests) if key else None
    if digest is None:
        log.info("dashboard: a login with a key that is not accepted")
        return login_page(root, "That key was not accepted. Use one of the server's API keys "
                                "(XYLEN_API_KEYS or XYLEN_API_KEYS_FILE).", 401)
    token = ui_auth.issue(keys.session_secret, digest, d.max_age, d.clock())
    return Response(status_code=303, headers={
        "Location": f"{root}/ui", "Cache-Control": "no-store",
        "Set-Cookie": ui_auth.set_cookie(token, d.max_age, d.secure(request))})


def _digest_of(key: bytes, digests: tuple[bytes, ...]) -> bytes | None:
    d = hashlib.sha256(key).digest()
    found = None
    for want in digests:
        if hmac.compare_digest(d, want) and found is None:
            found = want
    return found


@router.post("/ui/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    d = dash(request)
    d.check_origin(request)
    return Response(status_code=303, headers={"Location": f"{_root(request)}/ui", "Cache-Control": "no-store",
                                              "Set-Cookie": ui_auth.clear_cookie(d.secure(request))})


@router.get("/ui/api/session", tags=[TAG], summary="Who the dashboard is talking as",
            response_model=ui_schemas.Session, responses=_AUTH_ERRORS)
async def session(request: Request) -> Response:
    """`auth`: none (a server without API keys), key (a key header) or cookie (a dashboard login, whose `csrf`
    token every POST must send as X-CSRF-Token); the server's readiness."""
    d = dash(request)
    auth = d.require(request)
    csrf = None
    if auth.kind == "cookie":
        assert auth.digest is not None and auth.token is not None
        csrf = ui_auth.csrf_token(d.state.keys.session_secret, auth.digest, auth.token)
    reason = d.state.not_ready_reason()
    return _json({"auth": auth.kind, "csrf": csrf, "version": __version__, "ready": reason is None,
                  "reason": reason})


@router.get("/ui/api/models", tags=[TAG], summary="Every model: live version, age, meaning, honest sentence",
            response_model=ui_schemas.ModelsFeed, responses=_AUTH_ERRORS)
async def models_feed(request: Request) -> Response:
    """One row per model with a live version (and each model this server has loaded): its age and stale flag
    (XYLEN_MODEL_MAX_AGE), what its probability means, the honest sentence with the edge and its interval, its
    performance on the outcomes realised since its promotion (WATCH.json, written by `xylen retrain`), and its
    report's URL."""
    d = dash(request)
    d.require(request)
    return _json(await d.cache.get("models", FEED_TTL, d.models_feed))


@router.get("/ui/api/models/{name}", tags=[TAG], summary="A model's versions, gate decisions, pins and history",
            response_model=ui_schemas.VersionsFeed,
            responses={**_AUTH_ERRORS, 404: {"model": ui_schemas.Error, "description": "No such model."}})
async def versions_feed(request: Request, name: str) -> Response:
    """Every version, newest first: its gate record when a retrain made it (the decision, the candidate's and the
    live model's score on the gate's metric, and the reason), whether it is pinned or live; and the history
    (publications, gate decisions, the current promotion), newest first."""
    d = dash(request)
    d.require(request)
    _name(name)
    return _json(await d.cache.get(f"versions/{name}", FEED_TTL, lambda: d.versions_feed(name)))


@router.post("/ui/api/models/{name}/promote", tags=[TAG], summary="Promote a version (verified first)",
             response_model=ui_schemas.Changed, responses=_POST_ERRORS,
             openapi_extra={"requestBody": {"required": True, "content": {
                 JSON: {"schema": ui_schemas.PromoteBody.model_json_schema()}}}})
async def promote(request: Request, name: str) -> Response:
    """Through `Registry.promote`, as `xylen models promote`: the version is verified in a child process (size,
    sha256, trial load, golden predictions) before CURRENT.json changes; a version that fails is refused (409)
    with the reason and the live model stays. Cookie sessions send X-CSRF-Token."""
    d = dash(request)
    d.require_post(request)
    _name(name)
    version = _version_of(await request.body())
    out = await asyncio.to_thread(d.change, name, version)
    d.cache.drop("models")
    d.cache.drop(f"versions/{name}")
    return _json(out)


@router.post("/ui/api/models/{name}/rollback", tags=[TAG], summary="Make the previous live version live again",
             response_model=ui_schemas.Changed, responses=_POST_ERRORS)
async def rollback(request: Request, name: str) -> Response:
    """Through `Registry.rollback` (verified first, like a promotion); 409 when there is nothing to roll back to.
    Send `{}` or no body. Cookie sessions send X-CSRF-Token."""
    d = dash(request)
    d.require_post(request)
    _name(name)
    body = (await request.body()).strip()
    if body and body not in (b"{}", b"null"):
        raise RequestError(422, f"POST /ui/api/models/{name}/rollback takes no fields (got {body[:60]!r}). hint: "
                                "send {} or no body.")
    out = await asyncio.to_thread(d.change, name, None)
    d.cache.drop("models")
    d.cache.drop(f"versions/{name}")
    return _json(out)


@router.get("/ui/api/data", tags=[TAG], summary="Every stored series: first and last candle, lag, gaps",
            response_model=ui_schemas.DataFeed, responses=_AUTH_ERRORS)
async def data_feed(request: Request) -> Response:
    """Read from the candle store (never the exchange): per exchange, symbol and interval the first and last
    candle, the lag of the last one behind now, the gaps (missing candles the exchange did not report as a known
    gap) and the known gaps. Recomputed at most every 5 s, and only for series whose files changed."""
    d = dash(request)
    d.require(request)
    return _json(await d.cache.get("data", DATA_TTL, d.data_feed))


@router.get("/ui/api/server", tags=[TAG], summary="Readiness, resources, request history, retrain jobs",
            response_model=ui_schemas.ServerFeed, responses=_AUTH_ERRORS)
async def server_feed(request: Request) -> Response:
    """The server's own counters (those /metrics renders; every worker's under --workers) sampled every
    XYLEN_UI_SAMPLE_S seconds over the last 360 samples: per route the request rate and p50/p99 latency, the 5xx
    and 4xx rates, and the RSS; the retrain jobs; readiness and its reason."""
    d = dash(request)
    d.require(request)
    return _json(await d.cache.get("server", FEED_TTL, d.server_feed))


@router.get("/ui/report/{name}/{version}/{file:path}", include_in_schema=False)
async def report(request: Request, name: str, version: str, file: str) -> Response:
    d = dash(request)
    d.require(request)
    path = await asyncio.to_thread(d.report_file, name, version, file)
    data = await asyncio.to_thread(path.read_bytes)
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers = {"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff",
               "Cache-Control": "private, max-age=3600"}
    return Response(data, media_type=kind, headers=headers)


def _name(name: str) -> None:
    try:
        check_name(name)
    except ConfigError:
        raise RequestError(404, f"No model named {name[:64]!r}; names look like btcusdt-5m (see GET "
                                "/ui/api/models).") from None


_EXAMPLE = '{"version": "v0003"}'


def _version_of(body: bytes) -> str:
    try:
        got = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError:
        raise RequestError(400, f"The body is not JSON ({body[:40]!r}). hint: send {_EXAMPLE}.") from None
    version = got.get("version") if isinstance(got, dict) else None
    if not isinstance(got, dict) or not isinstance(version, str) or set(got) != {"version"}:
        raise RequestError(422, f"The body must be {_EXAMPLE} (got {str(got)[:80]!r}).")
    try:
        return check_version("model", version)
    except BundleError:
        raise RequestError(422, f"{version[:40]!r} is not a version; versions look like v0003.") from None


def install(app: FastAPI, state: ServeState, *, assets: Path | None = None) -> Dashboard:
    """Mount the dashboard on ``app``; the caller starts and stops its sampler with the app's lifespan."""
    d = Dashboard(state, assets=assets)
    app.state.dashboard = d
    app.mount(ASSETS_URL, Assets(d.assets), name="ui-assets")
    app.include_router(router)
    return d

