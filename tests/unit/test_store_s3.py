"""The candle store on S3 (moto's server on loopback) keeps the local store's contract: the same tests run on a
local folder and on ``s3://bucket/prefix``. Round trips across months, concurrent writers, a re-sync of the same
candles, quarantine, known gaps and market metadata, and the number of S3 requests of a follow-mode append."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests import s3moto
from tests.unit.test_store_concurrency import frame
from xylen.core import store_files as sf
from xylen.core.errors import ConfigError, DataError
from xylen.core.settings import load_settings
from xylen.core.store import Store, open_store

pytestmark = pytest.mark.unit
boto3, make_bucket = s3moto.boto3, s3moto.make_bucket
moto_endpoint, s3_env = s3moto.moto_endpoint, s3moto.s3_env  # fixtures

JAN = 1704067200000  # 2024-01-01
FEB = 1706745600000  # 2024-02-01
HOUR = 3_600_000
SERIES = "klines/exchange=binance/symbol=BTCUSDT/interval=1h"


def hours(t0: int, n: int, marker: float = 1.0) -> pl.DataFrame:
    return frame(t0 + HOUR * np.arange(n), marker, HOUR)


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The root of a fresh store: a local folder, or s3://<fresh bucket>/data."""
    if request.param == "local":
        return str(tmp_path / "data")
    endpoint = request.getfixturevalue("s3_env")
    return f"s3://{make_bucket(endpoint)}/data"


def open_at(where: str, tmp_path: Path, **kw: object) -> Store:
    return Store(where, cache=tmp_path / "cache", **kw)  # type: ignore[arg-type]


def raw(store: Store, key: str, data: bytes) -> None:
    """Overwrite an object behind the store's back (a foreign tool, a bad disk)."""
    if store.remote:
        st = store.storage
        st.client.put_object(Bucket=st.bucket, Key=f"{st.prefix}/{key}", Body=data)  # type: ignore[attr-defined]
    else:
        (store.root / key).write_bytes(data)


def test_round_trip_small_and_big_appends_across_months(where: str, tmp_path: Path) -> None:
    store = open_at(where, tmp_path)
    big = hours(JAN, 24 * 31 + 10)  # all of January (a month file) and 10 hours of February (a tail)
    store.append("BTCUSDT", "1h", big)
    for i in range(24 * 31 + 10, 24 * 31 + 14):  # closed candles one by one: tails
        r = store.append("BTCUSDT", "1h", hours(JAN + i * HOUR, 1))
        assert r.added == 1 and "/tail-" in r.files[0]
    assert sum("/tail-" in k for k in store.keys("BTCUSDT", "1h")) == 5  # February's 10 of the page too
    last_jan = hours(FEB - 2 * HOUR, 3, marker=7.0)  # a page across the month boundary: new values win
    store.append("BTCUSDT", "1h", last_jan)
    want = pl.concat([big, hours(JAN + (24 * 31 + 10) * HOUR, 4)])
    want = pl.concat([want.filter(~pl.col("open_time").is_in(last_jan["open_time"].implode())), last_jan])
    assert store.read("BTCUSDT", "1h").equals(want.sort("open_time"))
    assert store.last_open_time("BTCUSDT", "1h") == JAN + (24 * 31 + 13) * HOUR
    assert store.read("BTCUSDT", "1h", start=FEB).height == 14
    assert store.series() == [("BTCUSDT", "1h")] and Store.exchanges(where, cache=tmp_path / "c") == ["binance"]
    keys = store.keys("BTCUSDT", "1h")
    assert f"{SERIES}/year=2024/month=01/data.parquet" in keys and f"{SERIES}/year=2024/month=02/data.parquet" in keys
    # another Store (a reader in another process) sees the same candles
    assert open_at(where, tmp_path / "other").read("BTCUSDT", "1h").equals(want.sort("open_time"))
    store.append("BTCUSDT", "1h", hours(JAN + (24 * 31 + 14) * HOUR, 1))
    assert any("/tail-" in k for k in store.keys("BTCUSDT", "1h"))
    store.compact("BTCUSDT", "1h")
    assert not any("/tail-" in k for k in store.keys("BTCUSDT", "1h"))
    assert store.read("BTCUSDT", "1h").height == want.height + 1


def test_the_same_keys_on_a_local_folder_and_on_s3(s3_env: str, tmp_path: Path) -> None:
    """Same layout under the prefix, tail names included (they are named by their content)."""
    stores = [Store(tmp_path / "data"), Store(f"s3://{make_bucket(s3_env)}/x/data", cache=tmp_path / "c")]
    for store in stores:
        store.append("BTCUSDT", "1h", hours(JAN, 30))
        for i in range(30, 33):
            store.append("BTCUSDT", "1h", hours(JAN + i * HOUR, 1))
        store.add_known_gaps("BTCUSDT", "1h", [(FEB, FEB + HOUR)])
        store.set_market("BTCUSDT", {"id": "BTCUSDT"})
    local, remote = stores
    assert local.storage.list() == remote.storage.list() and len(local.storage.list()) == 6


def test_a_resync_of_the_same_candles_adds_no_object(where: str, tmp_path: Path) -> None:
    first = open_at(where, tmp_path / "a", serialize_writers=False)
    first.append("BTCUSDT", "1h", hours(JAN, 100))
    for i in range(100, 105):
        first.append("BTCUSDT", "1h", hours(JAN + i * HOUR, 1))
    before = first.storage.list()
    # a second collector that looked before the first's tails existed (a race) writes the very same closed
    # candles: the same tail keys (named by their content), and create-if-absent makes each write a no-op
    second = open_at(where, tmp_path / "b", serialize_writers=False)
    second._all_new = lambda m, t: True  # type: ignore[method-assign]
    for i in range(100, 105):
        r = second.append("BTCUSDT", "1h", hours(JAN + i * HOUR, 1))
        assert (r.added, r.duplicates) == (0, 1)
    assert first.storage.list() == before
    # a re-sync of the whole range (a restart's backfill): nothing added, the tails folded into the month file
    third = open_at(where, tmp_path / "c", serialize_writers=False)
    r = third.append("BTCUSDT", "1h", hours(JAN, 105))
    assert (r.added, r.duplicates) == (0, 105)
    for i in range(100, 105):
        r = third.append("BTCUSDT", "1h", hours(JAN + i * HOUR, 1))
        assert (r.added, r.duplicates) == (0, 1)
    after = first.storage.list()
    assert set(after) <= set(before) and len(after) == 1
    df = first.read("BTCUSDT", "1h")
    assert df.height == 105 and df["open_time"].n_unique() == 105
    # a direct reader of every object sees each candle once too
    assert sum(sf.decode(first.storage.read(k), k).height for k in after) == 105


def test_two_writers_appending_interleaved_candles_lose_nothing(where: str, tmp_path: Path) -> None:
    """No lock at all (serialize_writers=False, and S3 has none): the compare-and-swap alone keeps every candle."""
    writers = [open_at(where, tmp_path / f"w{k}", serialize_writers=False) for k in range(2)]
    n = 60
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            start.wait(60)
            store = writers[k]
            store.append("BTCUSDT", "1h", hours(FEB - 10 * HOUR + k * HOUR, 5, marker=k))  # pages over a month end
            for i in range(k, n, 2):  # closed candles, interleaved with the other writer's
                store.append("BTCUSDT", "1h", hours(FEB + i * HOUR, 1, marker=k))
            store.append("BTCUSDT", "1h", hours(FEB + n * HOUR + k * 100 * HOUR, 80, marker=k))  # big: a swap
            store.compact("BTCUSDT", "1h")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and not any(t.is_alive() for t in threads)
    got = open_at(where, tmp_path / "reader").read("BTCUSDT", "1h")
    want = {FEB - 10 * HOUR + h * HOUR for h in range(6)} | {FEB + i * HOUR for i in range(n)}
    want |= {FEB + n * HOUR + k * 100 * HOUR + h * HOUR for k in range(2) for h in range(80)}
    assert got.height == len(want) and set(got["open_time"].to_list()) == want
    # each closed candle kept its own writer's values
    odd = got.filter(pl.col("open_time").is_in([FEB + i * HOUR for i in range(1, n, 2)]))
    assert odd["open"].unique().to_list() == [1.0]


def test_a_corrupt_object_is_quarantined_not_lost(where: str, tmp_path: Path) -> None:
    store = open_at(where, tmp_path)
    store.append("BTCUSDT", "1h", hours(JAN, 100))
    key = f"{SERIES}/year=2024/month=01/data.parquet"
    torn = store.storage.read(key)[:-40]
    raw(store, key, torn)
    with pytest.raises(DataError) as info:
        store.read("BTCUSDT", "1h")
    assert store.where(key) in info.value.message
    store.append("BTCUSDT", "1h", hours(JAN + 100 * HOUR, 1))  # the merge path moves the torn file aside
    [moved] = store.storage.list("quarantine")
    assert moved.startswith(f"quarantine/{key}.") and store.storage.read(moved) == torn  # nothing deleted
    assert store.read("BTCUSDT", "1h")["open_time"].to_list() == [JAN + 100 * HOUR]
    [q] = store.summary("BTCUSDT", "1h").quarantined
    assert q.file == store.where(moved) and (q.file.startswith("s3://") == store.remote)
    assert "--since 2024-01-01 --until 2024-02-01 --once" in q.fix
    assert store.quarantined_series() == [("BTCUSDT", "1h")]


def test_known_gaps_and_market_metadata(where: str, tmp_path: Path) -> None:
    a, b = open_at(where, tmp_path / "a"), open_at(where, tmp_path / "b")
    a.add_known_gaps("BTCUSDT", "1h", [(JAN, JAN + 5 * HOUR)])
    b.add_known_gaps("BTCUSDT", "1h", [(JAN + 5 * HOUR, JAN + 9 * HOUR), (FEB, FEB + HOUR)])
    assert a.known_gaps("BTCUSDT", "1h") == [(JAN, JAN + 9 * HOUR), (FEB, FEB + HOUR)]
    a.set_market("BTCUSDT", {"id": "BTC-USDT", "unified": "BTC/USDT"})
    assert b.market("BTCUSDT") == {"id": "BTC-USDT", "unified": "BTC/USDT"} and b.market("ETHUSDT") is None


def test_a_store_from_before_exchanges_is_refused_on_s3_with_the_way_out(s3_env: str, tmp_path: Path) -> None:
    url = f"s3://{make_bucket(s3_env)}/data"
    store = Store(url, cache=tmp_path)
    raw(store, "klines/symbol=BTCUSDT/interval=1h/year=2024/month=01/data.parquet", sf.encode(hours(JAN, 3)))
    with pytest.raises(DataError) as info:
        store.read("BTCUSDT", "1h")
    assert url in info.value.message and "collect migrate" in (info.value.hint or "")


class Requests:
    """Counts the S3 requests a store's client sends, by operation."""

    def __init__(self, store: Store) -> None:
        self.ops: list[str] = []
        store.storage.client.meta.events.register("before-call.s3", self._seen)  # type: ignore[attr-defined]

    def _seen(self, model: object, **kw: object) -> None:
        self.ops.append(str(getattr(model, "name", model)))


def test_a_follow_mode_append_costs_one_listing_and_one_put(s3_env: str, tmp_path: Path) -> None:
    store = Store(f"s3://{make_bucket(s3_env)}/data", cache=tmp_path)
    store.append("BTCUSDT", "1h", hours(JAN, 200))  # the backfill: a month file
    store.append("BTCUSDT", "1h", hours(JAN + 200 * HOUR, 1))  # the first closed candle reads the month's times
    seen = Requests(store)
    for i in range(201, 211):
        store.append("BTCUSDT", "1h", hours(JAN + i * HOUR, 1))
    assert seen.ops == ["ListObjectsV2", "PutObject"] * 10  # the month file is not read again: its ETag is listed
    # a compaction reads the 10 tails, swaps the month file and deletes the tails in one request
    seen.ops.clear()
    assert store.compact("BTCUSDT", "1h") == 11
    assert seen.ops.count("GetObject") == 12 and seen.ops.count("DeleteObjects") == 1 and "DeleteObject" not in seen.ops
    assert not any("/tail-" in k for k in store.keys("BTCUSDT", "1h"))
    # after the compaction (a swap) the writer knows the new version's times: still no GET
    seen.ops.clear()
    store.append("BTCUSDT", "1h", hours(JAN + 211 * HOUR, 1))
    assert seen.ops == ["ListObjectsV2", "PutObject"]
    # another writer replaces the month file: the listing shows a new ETag, and the times are read again
    other = Store(store.location, cache=tmp_path / "o")
    other.append("BTCUSDT", "1h", hours(JAN, 100, marker=3.0))
    seen.ops.clear()
    store.append("BTCUSDT", "1h", hours(JAN + 212 * HOUR, 1))
    assert seen.ops == ["ListObjectsV2", "GetObject", "PutObject"]
    assert store.read("BTCUSDT", "1h").height == 213


def test_open_store_uses_xylen_data_url(s3_env: str, tmp_path: Path) -> None:
    url = f"s3://{make_bucket(s3_env)}/some/prefix"
    settings = load_settings({"home": tmp_path}, environ={"XYLEN_DATA_URL": url, "XYLEN_S3_ENDPOINT_URL": s3_env})
    store = open_store(settings, "okx")
    assert store.remote and store.location == url and store.exchange == "okx"
    store.append("BTCUSDT", "1h", hours(JAN, 100))
    s3 = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    bucket = url.split("/")[2]
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == ["some/prefix/klines/exchange=okx/symbol=BTCUSDT/interval=1h/year=2024/month=01/data.parquet"]
    assert not (tmp_path / "data").exists()
    local = load_settings({"home": tmp_path}, environ={"XYLEN_DATA_URL": str(tmp_path / "elsewhere")})
    assert open_store(local).root == tmp_path / "elsewhere"
    assert load_settings({"home": tmp_path}, environ={}).data_location == tmp_path / "data"


@pytest.mark.parametrize("bad", ["s3:///nobucket", "gs://bucket/data", "s3://b/../x", "s3://b/x?y=1"])
def test_a_malformed_data_url_is_refused_quoting_it(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"home": tmp_path}, environ={"XYLEN_DATA_URL": bad})
    assert "XYLEN_DATA_URL" in info.value.message and bad in info.value.message


def test_polars_reads_the_store_on_s3_directly_with_hive_partitioning(s3_env: str, tmp_path: Path) -> None:
    """As the README shows: polars' own S3 reader, with the endpoint and keys as storage_options."""
    url = f"s3://{make_bucket(s3_env)}/data"
    store = Store(url, cache=tmp_path)
    store.append("BTCUSDT", "1h", hours(JAN, 24 * 31 + 20))  # January's month file and a February tail
    store.append("BTCUSDT", "1h", hours(JAN + (24 * 31 + 20) * HOUR, 1))
    options = {"aws_endpoint_url": s3_env, "aws_access_key_id": "testing-key-id",
               "aws_secret_access_key": "testing-secret", "aws_region": "us-east-1", "aws_allow_http": "true"}
    df = pl.scan_parquet(f"{url}/klines/", hive_partitioning=True, storage_options=options).collect()
    assert df.height == 24 * 31 + 21 and df["open_time"].n_unique() == df.height
    assert df["exchange"].unique().to_list() == ["binance"] and df["symbol"].unique().to_list() == ["BTCUSDT"]
    assert sorted(df["month"].unique().to_list()) == [1, 2]


def _writer_process(url: str, endpoint: str, cache: str, k: int, n: int, start: object) -> None:
    """A collector in its own process: closed candles interleaved with the other's, then a page."""
    store = Store(url, endpoint_url=endpoint, cache=Path(cache), serialize_writers=False)
    start.wait(120)  # type: ignore[attr-defined]
    for i in range(k, n, 2):
        store.append("BTCUSDT", "1h", hours(JAN + i * HOUR, 1, marker=k))
    store.append("BTCUSDT", "1h", hours(JAN + (n + k * 100) * HOUR, 80, marker=k))


def test_two_writer_processes_on_s3_lose_nothing(s3_env: str, tmp_path: Path) -> None:
    import multiprocessing as mp

    url = f"s3://{make_bucket(s3_env)}/data"
    Store(url, cache=tmp_path).append("BTCUSDT", "1h", hours(JAN - 30 * HOUR, 30))  # December's month file
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(2)
    n = 40
    procs = [ctx.Process(target=_writer_process, args=(url, s3_env, str(tmp_path / f"p{k}"), k, n, start))
             for k in range(2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(300)  # only catches a hang
        assert [p.exitcode for p in procs] == [0, 0]
    finally:
        for p in procs:  # a writer still running (a hang, or a failure above) is not left behind
            if p.is_alive():
                p.kill()
            if p.pid is not None:
                p.join(60)
            p.close()
    got = Store(url, cache=tmp_path / "r").read("BTCUSDT", "1h")
    want = {JAN + h * HOUR for h in range(-30, n)}
    want |= {JAN + (n + k * 100 + h) * HOUR for k in range(2) for h in range(80)}
    assert got.height == len(want) and set(got["open_time"].to_list()) == want
    assert got.filter(pl.col("open_time") == JAN + HOUR)["open"].to_list() == [1.0]  # writer 1's candle


def test_a_reader_on_s3_fetches_only_what_changed(s3_env: str, tmp_path: Path) -> None:
    """A reader polling a series (serve's push feed): one listing, and GETs only for new tails and month files."""
    url = f"s3://{make_bucket(s3_env)}/data"
    writer = Store(url, cache=tmp_path / "w")
    writer.append("BTCUSDT", "1h", hours(JAN, 200))
    for i in range(200, 203):
        writer.append("BTCUSDT", "1h", hours(JAN + i * HOUR, 1))
    reader = Store(url, cache=tmp_path / "r")
    first = reader.read("BTCUSDT", "1h")
    seen = Requests(reader)
    again = reader.read("BTCUSDT", "1h")
    # nothing changed: nothing fetched, two listings (the second, after the tails, names the current month files)
    assert again.equals(first) and seen.ops == ["ListObjectsV2"] * 2
    writer.append("BTCUSDT", "1h", hours(JAN + 203 * HOUR, 1))
    seen.ops.clear()
    assert reader.read("BTCUSDT", "1h").height == 204
    assert seen.ops == ["ListObjectsV2", "GetObject", "ListObjectsV2"]  # the new tail, then the month files
    writer.compact("BTCUSDT", "1h")  # another process folds the tails: a new month file, no tails
    seen.ops.clear()
    df = reader.read("BTCUSDT", "1h")
    assert df.equals(hours(JAN, 204)) and seen.ops == ["ListObjectsV2", "ListObjectsV2", "GetObject"]  # new month file
    df.insert_column(0, pl.Series("x", range(204)))  # a caller changing its frame does not change the kept copy
    assert reader.read("BTCUSDT", "1h").equals(hours(JAN, 204))
    # a month of tails only (no month file yet): no GET for the month file the listing does not show
    writer.append("BTCUSDT", "1h", hours(FEB, 2))
    reader.read("BTCUSDT", "1h")
    seen.ops.clear()
    assert reader.read("BTCUSDT", "1h", start=FEB).height == 2 and seen.ops == ["ListObjectsV2"] * 2


def tear_next_listing(
    store: Store, compaction: Callable[[], object], monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """The store's next listing is torn by ``compaction``, as a real LIST can be (keys in order, a page at a time):
    it passed each month's data.parquet before the compaction swapped it, and reached the tails after it deleted
    them. Later listings are whole. Returns the prefixes it tore (one, once it did)."""
    real = store.storage.list_tokens  # type: ignore[attr-defined]
    torn: list[str] = []

    def listing(prefix: str) -> dict[str, str]:
        before = real(prefix)
        if torn:
            return before
        torn.append(prefix)
        compaction()
        after = real(prefix)
        out = {k: v for k, v in before.items() if k.endswith(f"/{sf.FILE_NAME}")}
        out.update({k: v for k, v in after.items() if not k.endswith(f"/{sf.FILE_NAME}")})
        return out

    monkeypatch.setattr(store.storage, "list_tokens", listing)
    return torn


def test_a_listing_torn_by_a_compaction_loses_no_candle(
    s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's rule, "never silently fewer rows", when a compaction runs while the reader lists the series:
    the listing shows January's old month file (one the reader keeps) and February without a month file, and
    neither month's tails, which the compaction folded and deleted."""
    url = f"s3://{make_bucket(s3_env)}/data"
    writer = Store(url, cache=tmp_path / "w")
    writer.append("BTCUSDT", "1h", hours(JAN, 200))  # January's month file
    for i in range(200, 203):
        writer.append("BTCUSDT", "1h", hours(JAN + i * HOUR, 1))  # and three tails
    for i in range(2):
        writer.append("BTCUSDT", "1h", hours(FEB + i * HOUR, 1))  # February: two tails, no month file yet
    reader = Store(url, cache=tmp_path / "r")
    want = [*hours(JAN, 203)["open_time"], *hours(FEB, 2)["open_time"]]
    assert reader.read("BTCUSDT", "1h")["open_time"].to_list() == want  # the reader keeps January's month file
    torn = tear_next_listing(reader, lambda: writer.compact("BTCUSDT", "1h"), monkeypatch)
    got = reader.read("BTCUSDT", "1h")
    assert torn, "the listing was not torn"
    assert got["open_time"].to_list() == want
    assert not any("/tail-" in k for k in writer.keys("BTCUSDT", "1h"))  # the compaction did fold them all
