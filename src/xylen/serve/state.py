"""What every route needs, bundled once per app (no module globals)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from xylen.core.settings import Settings
from xylen.serve.auth import KeyRing
from xylen.serve.holder import ModelHolder
from xylen.serve.metrics import Metrics
from xylen.serve.readyboard import ReadyBoard
from xylen.serve.retrain_jobs import RetrainJobs


@dataclass
class ServeState:
    settings: Settings
    holder: ModelHolder
    metrics: Metrics
    keys: KeyRing
    # wall clock in epoch seconds: decides which candle is still open. An argument, so tests pass a fixed one.
    clock: Callable[[], float] = time.time
    jobs: RetrainJobs | None = None  # POST /retrain; None when serving one MODEL_PATH (no registry to retrain)
    started_at: float = field(default_factory=time.monotonic)
    board: ReadyBoard | None = None  # `--workers N`: every worker's readiness (serve/readyboard.py); None: one process

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def not_ready_reason(self) -> str | None:
        """What readiness answers: this worker's reason, then (``--workers N``) any other worker's."""
        own = self.holder.not_ready_reason()
        return own if self.board is None else self.board.reason(own, tuple(self.holder.live))
