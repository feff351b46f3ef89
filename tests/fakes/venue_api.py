"""What a fake exchange's API is made of (``venue_apis.py`` has the five exchanges): routes, answers, errors, rate
rules. No I/O: ``venues.py`` is the HTTP server around them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.venue_book import Book, exchange_id


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # JSON-able, or a str sent as it is
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    rows: list[Any] | None = None  # the candle rows inside ``body``, for the row faults (empty, duplicate...)
    wrap: Callable[[list[Any]], Any] | None = None  # rows -> body


class ApiError(Exception):
    def __init__(self, answer: Answer) -> None:
        super().__init__(str(answer.body)[:200])
        self.answer = answer


@dataclass(frozen=True)
class RateRule:
    """At most ``requests`` (weights summed) in any ``per_s`` seconds, counted for the routes named (``*``: all),
    per symbol too when ``per_symbol``."""

    scope: str
    routes: tuple[str, ...]
    requests: int
    per_s: float
    per_symbol: bool = False
    weights: tuple[tuple[str, int], ...] = ()
    header: str | None = None  # a header reporting the used amount on every answer (Binance.US)

    def counts(self, route: str) -> bool:
        return "*" in self.routes or route in self.routes

    def weight(self, route: str) -> int:
        return dict(self.weights).get(route, 1)


def _int(value: str | None, error: Callable[[], ApiError]) -> int | None:
    if value is None or value == "":
        return None
    if not re.fullmatch(r"-?\d{1,20}", value):
        raise error()
    return int(value)


GATEWAY_PAGES = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class VenueApi:
    """One exchange's public REST API over a :class:`Book`."""

    name = ""
    routes: tuple[str, ...] = ()
    ohlcv_route = ""  # the default path of scripted faults (a prefix matches several routes)
    policy = "window"  # what exceeding the limit does: window | ban | lockout | escalate
    ban_s = 0.0  # ban (Bybit, Binance.US 418) or lockout (Kraken) length, seconds

    def __init__(self, book: Book) -> None:
        self.book = book

    # --- routing
    def route(self, path: str) -> tuple[str, dict[str, str]] | None:
        for template in self.routes:
            pattern = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"
            m = re.match(pattern, path)
            if m:
                return template, m.groupdict()
        return None

    def ids(self) -> dict[str, str]:
        return {s: exchange_id(self.name, s) for s in self.book.markets()}

    def canonical(self, market_id: str | None) -> str | None:
        if not market_id:
            return None
        return next((s for s, i in self.ids().items() if i == market_id), None)

    # --- to implement
    def symbol(self, route: str, path_params: dict[str, str], params: dict[str, str]) -> str | None:
        raise NotImplementedError

    def answer(self, route: str, path_params: dict[str, str], params: dict[str, str], now: int) -> Answer:
        raise NotImplementedError

    def rate_rules(self) -> list[RateRule]:
        raise NotImplementedError

    def refusal(self, kind: str, retry_after: int, now: int) -> Answer:
        """The answer to a request over the limit (``limit``) or during a ban (``ban``)."""
        raise NotImplementedError

    def fault(self, status: int, now: int) -> Answer:
        """A scripted error status in this exchange's clothes: its rate-limit body for 429, a gateway page for 5xx."""
        if status == 429:
            ans = self.refusal("limit", 0, now)
            ans.status = 429  # scripted: an HTTP 429 even where the exchange's own refusal is a 200 (Kraken)
            return ans
        if status >= 500:
            page = f"<html><body><h1>{status} {GATEWAY_PAGES.get(status, 'Server Error')}</h1></body></html>"
            return Answer(status, page, content_type="text/html")
        return Answer(status, {"error": f"HTTP {status}"})
