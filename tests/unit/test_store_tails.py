"""Appending one closed candle is cheap (a tail object), readers always see every candle, compaction folds
tails into the month file, and every write goes through the storage seam."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.unit.test_store_concurrency import frame
from xylen.core import store as store_mod
from xylen.core import store_files as sf
from xylen.core.storage import Conflict, LocalStorage, Missing, Versioned
from xylen.core.store import Store

pytestmark = pytest.mark.unit

JAN = 1704067200000  # 2024-01-01 00:00 UTC
FEB = 1706745600000  # 2024-02-01
MIN = 60_000


def ones(t0: int, n: int, marker: float = 0.0, step: int = MIN) -> pl.DataFrame:
    return frame(t0 + step * np.arange(n), marker, step)


def names(store: Store) -> list[str]:
    return [f.name for f in store.files("BTCUSDT", "1m")]


def test_a_closed_candle_is_a_new_tail_and_the_month_file_is_not_rewritten(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "1m", ones(JAN, 1000))
    month = store.partition_path("BTCUSDT", "1m", 2024, 1)
    before = month.read_bytes()
    for i in range(1000, 1003):
        r = store.append("BTCUSDT", "1m", ones(JAN + i * MIN, 1))
        assert (r.added, r.duplicates) == (1, 0)
    assert month.read_bytes() == before  # O(1) per candle: the month file stays as it was
    tails = [n for n in names(store) if n.startswith("tail-")]
    assert len(tails) == 3 and tails[0].startswith(f"tail-{JAN + 1000 * MIN}-{JAN + 1000 * MIN}-")
    assert store.read("BTCUSDT", "1m")["open_time"].to_list() == (JAN + MIN * np.arange(1003)).tolist()
    assert store.last_open_time("BTCUSDT", "1m") == JAN + 1002 * MIN
    # tails are Parquet with the month file's columns: hive readers read every candle as is
    lf = pl.scan_parquet(store.klines, hive_partitioning=True)
    assert lf.select(pl.len()).collect().item() == 1003
    duckdb = pytest.importorskip("duckdb")
    q = (f"select count(*), count(distinct open_time) from read_parquet('{store.klines}/**/*.parquet', "
         "hive_partitioning=true)")
    assert duckdb.sql(q).fetchall() == [(1003, 1003)]
    dd = pytest.importorskip("dask.dataframe")
    assert len(dd.read_parquet(str(store.klines), dataset={"partitioning": "hive"}).compute()) == 1003


def test_last_open_time_reads_no_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "1m", ones(JAN, 100))
    store.append("BTCUSDT", "1m", ones(JAN + 100 * MIN, 2))
    read = LocalStorage.read

    def no_tails(self: LocalStorage, key: str) -> bytes:
        assert "/tail-" not in key, key
        return read(self, key)

    monkeypatch.setattr(LocalStorage, "read", no_tails)
    assert store.last_open_time("BTCUSDT", "1m") == JAN + 101 * MIN


def test_a_stored_candle_appended_again_takes_the_new_values(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "1m", ones(JAN, 100))
    store.append("BTCUSDT", "1m", ones(JAN + 100 * MIN, 1))  # a tail
    for t in (JAN + 5 * MIN, JAN + 100 * MIN):  # stored in the month file, stored in a tail
        r = store.append("BTCUSDT", "1m", ones(t, 1, marker=7.0))
        assert (r.added, r.duplicates) == (0, 1)
    df = store.read("BTCUSDT", "1m")
    assert df.height == 101
    assert df.filter(pl.col("open") == 7.0)["open_time"].to_list() == [JAN + 5 * MIN, JAN + 100 * MIN]


def test_many_tails_are_folded_into_the_month_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert store_mod.MAX_TAILS == 256  # the README's figure; 8 here keeps the test short
    monkeypatch.setattr(store_mod, "MAX_TAILS", 8)
    store = Store(tmp_path)
    store.append("BTCUSDT", "1m", ones(JAN, 100))
    for i in range(100, 109):
        store.append("BTCUSDT", "1m", ones(JAN + i * MIN, 1))
    assert names(store) == ["data.parquet"]  # the 9th tail made 9 > 8: all folded, the tails deleted
    assert pl.read_parquet(store.partition_path("BTCUSDT", "1m", 2024, 1)).height == 109
    store.append("BTCUSDT", "1m", ones(JAN + 109 * MIN, 1))
    assert len(names(store)) == 2
    assert store.compact("BTCUSDT", "1m") == 1
    assert names(store) == ["data.parquet"] and store.read("BTCUSDT", "1m").height == 110


def test_a_complete_month_is_folded_when_the_series_moves_on(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "1m", ones(FEB - 100 * MIN, 98))
    store.append("BTCUSDT", "1m", ones(FEB - 2 * MIN, 1))
    store.append("BTCUSDT", "1m", ones(FEB - MIN, 1))
    assert sum(n.startswith("tail-") for n in names(store)) == 2
    store.append("BTCUSDT", "1m", ones(FEB, 1))  # the first candle of February
    files = [f.relative_to(store.klines).as_posix() for f in store.files("BTCUSDT", "1m")]
    assert files[0] == "exchange=binance/symbol=BTCUSDT/interval=1m/year=2024/month=01/data.parquet"
    assert len(files) == 2 and "/month=02/tail-" in files[1]
    assert pl.read_parquet(store.klines / files[0]).height == 100


def test_a_compaction_between_a_readers_two_reads_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "1m", ones(JAN, 100))
    for i in range(100, 105):
        store.append("BTCUSDT", "1m", ones(JAN + i * MIN, 1))
    read = LocalStorage.read
    fired = []

    def compact_after_first_tail(self: LocalStorage, key: str) -> bytes:
        data = read(self, key)
        if "/tail-" in key and not fired:
            fired.append(key)
            monkeypatch.setattr(LocalStorage, "read", read)
            Store(tmp_path).compact("BTCUSDT", "1m")  # folds and deletes the tails the reader listed
        return data

    monkeypatch.setattr(LocalStorage, "read", compact_after_first_tail)
    df = Store(tmp_path).read("BTCUSDT", "1m")
    assert fired and names(store) == ["data.parquet"]
    assert df["open_time"].to_list() == (JAN + MIN * np.arange(105)).tolist()


def test_a_crash_between_swap_and_delete_changes_no_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "1m", ones(JAN, 100))
    store.append("BTCUSDT", "1m", ones(JAN + 100 * MIN, 1))
    want = store.read("BTCUSDT", "1m")

    def killed(self: LocalStorage, key: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalStorage, "delete", killed)
    with pytest.raises(KeyboardInterrupt):
        store.compact("BTCUSDT", "1m")
    monkeypatch.undo()
    assert len(names(store)) == 2  # the folded tail is still there, its candle also in data.parquet
    assert store.read("BTCUSDT", "1m").equals(want)
    lf = pl.scan_parquet(store.klines, hive_partitioning=True)
    direct = lf.drop("exchange", "symbol", "interval", "year", "month").collect()
    assert direct.height == 102  # a direct reader sees that candle twice, with the same values
    assert direct.unique().sort("open_time").equals(want)
    store.compact("BTCUSDT", "1m")
    assert names(store) == ["data.parquet"] and store.read("BTCUSDT", "1m").equals(want)


class MemoryStorage:
    """The seam's contract in memory: no file, no rename, no lock. The store must work on it unchanged."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.calls: list[str] = []

    def _tok(self, data: bytes) -> str:
        return str(hash(data))

    def read(self, key: str) -> bytes:
        with self.lock:
            if key not in self.objects:
                raise Missing(key)
            return self.objects[key]

    def read_versioned(self, key: str) -> Versioned | None:
        with self.lock:
            data = self.objects.get(key)
        return None if data is None else Versioned(data, self._tok(data))

    def token(self, key: str) -> str | None:
        got = self.read_versioned(key)
        return None if got is None else got.token

    def put_new(self, key: str, data: bytes, *, sync_folder: bool = True) -> bool:
        with self.lock:
            self.calls.append(f"put_new {key}")
            if key in self.objects:
                return False
            self.objects[key] = data
            return True

    def swap(self, key: str, data: bytes, expect: str | None) -> str:
        with self.lock:
            self.calls.append(f"swap {key}")
            found = self.objects.get(key)
            if (None if found is None else self._tok(found)) != expect:
                raise Conflict(key, expect, None)
            self.objects[key] = data
            return self._tok(data)

    def list(self, prefix: str = "") -> list[str]:
        with self.lock:
            return sorted(k for k in self.objects if k == prefix or k.startswith(prefix.rstrip("/") + "/"))

    def delete(self, key: str) -> None:
        with self.lock:
            self.calls.append(f"delete {key}")
            self.objects.pop(key, None)

    def publish_tree(self, folder: Path, prefix: str) -> bool:
        raise NotImplementedError

    def local_path(self, key: str) -> Path | None:
        return None


def test_every_write_goes_through_the_storage_seam(tmp_path: Path) -> None:
    store = Store(tmp_path, serialize_writers=False)
    mem = MemoryStorage()
    store.storage = mem
    store.append("BTCUSDT", "1m", ones(JAN, 100))
    store.append("BTCUSDT", "1m", ones(JAN + 100 * MIN, 1))
    store.add_known_gaps("BTCUSDT", "1m", [(0, MIN)])
    assert store.read("BTCUSDT", "1m").height == 101
    assert store.last_open_time("BTCUSDT", "1m") == JAN + 100 * MIN
    assert store.compact("BTCUSDT", "1m") == 1
    assert store.known_gaps("BTCUSDT", "1m") == [(0, MIN)]
    assert store.series() == [("BTCUSDT", "1m")]
    assert not any(tmp_path.rglob("*"))  # nothing written beside the seam
    kinds = {c.split(" ")[0] + " " + c.split(" ")[1].split("/")[-1].split("-")[0] for c in mem.calls}
    assert kinds == {
        "swap data.parquet",
        "put_new tail",
        "swap BTCUSDT",  # meta/BTCUSDT-1m.known_gaps.json
        "delete tail",
    }
    assert store.read("BTCUSDT", "1m")["open_time"].to_list() == (JAN + MIN * np.arange(101)).tolist()


def test_another_writers_month_file_is_never_hidden_by_a_cache(tmp_path: Path) -> None:
    a, b = Store(tmp_path), Store(tmp_path)
    a.append("BTCUSDT", "1m", ones(JAN, 100))  # a now knows (caches) the month file's open times
    b.append("BTCUSDT", "1m", ones(JAN + 100 * MIN, 100))  # another writer replaces that file
    r = a.append("BTCUSDT", "1m", ones(JAN + 150 * MIN, 1, marker=7.0))  # stored by b: a correction, not new
    assert (r.added, r.duplicates) == (0, 1)
    assert names(a) == ["data.parquet"]
    df = a.read("BTCUSDT", "1m")
    assert df.height == 200 and df.filter(pl.col("open") == 7.0)["open_time"].to_list() == [JAN + 150 * MIN]


def test_the_open_times_cache_stays_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "CACHE_BYTES", 1000 * 8)  # room for one month of 1000 open times
    store = Store(tmp_path)
    for start in (JAN, FEB, FEB + 29 * 86_400_000):  # January, February, March
        store.append("BTCUSDT", "1m", ones(start, 1000))
        store.append("BTCUSDT", "1m", ones(start + 1000 * MIN, 1))
    assert len(store._times) == 1  # only the newest month's times are kept
    assert store.read("BTCUSDT", "1m").height == 3003


def test_the_month_file_copy_wins_over_a_tail_and_the_last_named_tail_over_others(tmp_path: Path) -> None:
    """The README's rule for copies that differ (only two writers storing one candle at once can make them)."""
    store = Store(tmp_path)
    store.append("BTCUSDT", "1m", ones(JAN, 100))
    prefix = "klines/exchange=binance/symbol=BTCUSDT/interval=1m/year=2024/month=01"
    t = JAN + 5 * MIN
    store.storage.put_new(f"{prefix}/tail-{t}-{t}-{'f' * 32}.parquet", sf.encode(ones(t, 1, marker=9.0)))
    late = JAN + 100 * MIN
    for marker, tag in ((1.0, "a" * 32), (2.0, "b" * 32)):
        store.storage.put_new(f"{prefix}/tail-{late}-{late}-{tag}.parquet", sf.encode(ones(late, 1, marker=marker)))
    df = store.read("BTCUSDT", "1m")
    assert df.height == 101
    assert df.filter(pl.col("open_time") == t)["open"].to_list() == [0.0]  # data.parquet's copy
    assert df.filter(pl.col("open_time") == late)["open"].to_list() == [2.0]  # the tail named last
    store.compact("BTCUSDT", "1m")
    assert store.read("BTCUSDT", "1m").equals(df)  # folding changes nothing a reader sees
