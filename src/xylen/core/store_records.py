"""What the candle store returns: the result of an append, a series' summary, a quarantined file and its fix."""

from __future__ import annotations

from dataclasses import dataclass, field

from xylen.core.store_files import DEFAULT_EXCHANGE


@dataclass
class AppendResult:
    added: int = 0
    duplicates: int = 0
    files: list[str] = field(default_factory=list)


@dataclass
class Quarantined:
    """One unreadable file moved aside, and how to get its candles back."""

    file: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "fix": self.fix}


@dataclass
class SeriesSummary:
    symbol: str
    interval: str
    rows: int
    first: int | None
    last: int | None
    gaps: list[tuple[int, int]]
    lag_ms: int | None
    known_gaps: list[tuple[int, int]] = field(default_factory=list)  # [start, end) the exchange has nothing in
    quarantined: list[Quarantined] = field(default_factory=list)
    exchange: str = DEFAULT_EXCHANGE

    @property
    def missing(self) -> int:
        return sum(n for _, n in self.gaps)

    def to_dict(self) -> dict[str, object]:
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "interval": self.interval,
            "rows": self.rows,
            "first": self.first,
            "last": self.last,
            "gaps": [list(g) for g in self.gaps],
            "missing": self.missing,
            "known_gaps": [list(g) for g in self.known_gaps],
            "lag_ms": self.lag_ms,
            "quarantined": [q.to_dict() for q in self.quarantined],
        }
