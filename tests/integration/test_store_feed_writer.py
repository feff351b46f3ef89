"""The push feed against another process writing the store, as `xylen collect` does: a writer killed with SIGKILL at
an arbitrary point of its writes and restarted never makes the feed deliver a partial, duplicated, missing or
out-of-order candle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import wait_for
from tests.unit.test_store_feed import JAN, STEP, Loop, candles, times
from xylen.core.store import Store
from xylen.serve import store_feed
from xylen.serve.store_feed import StoreFeed

pytestmark = pytest.mark.integration

# closed candles one by one (tails), a page now and then (a month merge), a compaction every 25: from the newest
# stored on, so a restarted writer carries on where the killed one stopped (as `xylen collect` backfills)
WRITER = """
import sys
from tests.unit.test_store_feed import JAN, STEP, candles
from xylen.core.store import Store

root, end = sys.argv[1], int(sys.argv[2])
store = Store(root)
i = (store.last_open_time("BTCUSDT", "5m") - JAN) // STEP + 1
while i < end:
    k = min(1 if i % 50 < 40 else 10, end - i)
    store.append("BTCUSDT", "5m", candles(i, k))
    if i % 25 == 0:
        store.compact("BTCUSDT", "5m")
    i += k
"""


def writer(root: Path, end: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(end)], env=env)


def test_a_writer_process_killed_and_restarted_every_candle_once_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = 1706745600000 // STEP - JAN // STEP - 200  # the writes cross 2024-02-01
    store.append("BTCUSDT", "5m", candles(first - 100, 100))
    end = first + 400
    loop = Loop()
    feed = StoreFeed(tmp_path, poll_s=0.001)
    feed.start(loop.loop)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        loop.run(lambda: feed.listen("binance", "BTCUSDT", "5m", loop.on_rows, since=JAN + (first - 1) * STEP))
        for stop_after in (60, 180, 300):  # killed mid-write, wherever it is then
            procs.append(proc := writer(tmp_path, end))
            wait_for(lambda n=stop_after: len(loop.times) >= n, what=f"{stop_after} pushed candles")
            proc.send_signal(signal.SIGKILL)
            proc.wait(60)
        procs.append(proc := writer(tmp_path, end))
        assert proc.wait(120) == 0
        wait_for(lambda: len(loop.times) >= end - first, what="every candle")
        polls = feed.polls
        wait_for(lambda: feed.polls > polls + 5, what="a few more looks")
        loop.settle()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(60)
        feed.stop()
        loop.loop.call_soon_threadsafe(loop.loop.stop)
        loop.thread.join(10)
        loop.loop.close()
    assert loop.times == times(range(first, end))
    rows = np.concatenate(loop.got)
    assert np.array_equal(rows, candles(first, end - first).select(list(store_feed.COLUMNS)).to_numpy())
