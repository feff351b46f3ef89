"""`xylen collect migrate`: a store written before exchanges (tests/data/store_v0, made by that code) moves in place to
exchange=binance, reads exactly as the old code read it, survives kill -9 at any point, merges instead of
overwriting, leaves foreign files alone, runs one at a time, and until it is done every Store refuses the root."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from typer.testing import CliRunner

from tests.conftest import wait_for
from tests.unit.test_store_concurrency import frame
from xylen.cli import app
from xylen.core import store_files as sf
from xylen.core import store_migrate as sm
from xylen.core.errors import DataError
from xylen.core.storage import LocalStorage
from xylen.core.store import Store, needs_migration
from xylen.core.store_migrate import migrate

pytestmark = pytest.mark.unit

V0 = Path(__file__).resolve().parents[1] / "data" / "store_v0"
EXPECTED: list[dict[str, Any]] = orjson.loads((V0 / "expected.json").read_bytes())
NOW = 1680652800000  # the time expected.json's lags were measured from (make_store_v0.py)
CHILD = Path(__file__).resolve().parents[1] / "fakes" / "migrate_child.py"
HOUR = 3_600_000
BTC_MAR = "klines/exchange=binance/symbol=BTCUSDT/interval=1h/year=2023/month=03"


def old_files() -> list[str]:
    return sorted(p.relative_to(V0 / "data").as_posix() for p in (V0 / "data").rglob("*") if p.is_file())


FILES = old_files()  # 21 month files and tails, 3 known-gaps files, 1 quarantined file


def new_key(old: str) -> str:
    new = sm.target(old)
    assert new is not None, old
    return new


def old_store(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(V0 / "data", root)
    return root


def digest(df: pl.DataFrame) -> str:
    """make_store_v0.py's fingerprint of a frame."""
    return hashlib.sha256(orjson.dumps(df.sort("open_time").to_dicts())).hexdigest()


def state(root: Path) -> list[dict[str, Any]]:
    """What the new code reads, in expected.json's shape (quarantined files relative to the root)."""
    store = Store(root)
    out = []
    for sym, iv in store.series():
        summary = store.summary(sym, iv, NOW).to_dict()
        for q in summary["quarantined"]:  # type: ignore[attr-defined]
            q["file"] = Path(q["file"]).relative_to(root).as_posix()
        out.append({"symbol": sym, "interval": iv, "digest": digest(store.read(sym, iv)),
                    "files": [f.relative_to(root).as_posix() for f in store.files(sym, iv)], "summary": summary})
    return out


def expected_state() -> list[dict[str, Any]]:
    """expected.json (what the old code read) with every path moved to exchange=binance."""
    want = orjson.loads(orjson.dumps(EXPECTED))
    for s in want:
        s["files"] = [new_key(f) for f in s["files"]]
        s["summary"] = {"exchange": "binance", **s["summary"]}
        for q in s["summary"]["quarantined"]:
            q["file"] = new_key(q["file"])
    return want


def hashes(root: Path, keys: list[str]) -> dict[str, str]:
    return {k: hashlib.sha256((root / k).read_bytes()).hexdigest() for k in keys}


def refused(root: Path) -> DataError:
    with pytest.raises(DataError) as info:
        Store(root).read("BTCUSDT", "1h")
    return info.value


# ------------------------------------------------------------------------------------------ the whole migration
def test_the_old_codes_store_migrates_to_exactly_what_the_old_code_read(tmp_path: Path) -> None:
    root = old_store(tmp_path)
    before = hashes(root, FILES)
    assert needs_migration(root) == str(root / FILES[0])
    result = migrate(root)
    assert sorted(result.moved) == sorted(new_key(k) for k in FILES) and len(FILES) == 25
    assert result.series == [("BTCUSDT", "1h"), ("BTCUSDT", "5m"), ("ETHUSDT", "1h"), ("ETHUSDT", "5m")]
    assert (result.merged, result.quarantined, result.left) == ([], [], [])
    assert state(root) == expected_state()  # rows (every value), known gaps, gaps, quarantine listing and its fix
    # moved, not rewritten: every file keeps its bytes; the old folders are gone
    assert hashes(root, [new_key(k) for k in FILES]) == {new_key(k): h for k, h in before.items()}
    assert needs_migration(root) is None
    assert sorted(os.listdir(root / "klines")) == ["exchange=binance"]
    assert sorted(os.listdir(root / "meta")) == ["exchange=binance"]
    assert sorted(os.listdir(root / "quarantine" / "klines")) == ["exchange=binance"]
    # a hive reader of the whole tree gets the exchange column
    lf = pl.scan_parquet(root / "klines" / "**" / "*.parquet", hive_partitioning=True)
    per = lf.group_by("exchange").agg(pl.len()).collect().rows()
    assert per == [("binance", sum(s["summary"]["rows"] for s in EXPECTED))]  # no candle is in two files here
    again = migrate(root)
    assert (again.moved, again.left) == ([], []) and "Nothing to migrate" in again.line()


def test_a_store_refuses_the_old_layout_until_it_is_migrated(tmp_path: Path) -> None:
    root = old_store(tmp_path)
    store = Store(root)
    calls = [
        lambda: store.read("BTCUSDT", "1h"),
        lambda: store.last_open_time("BTCUSDT", "1h"),
        lambda: store.append("BTCUSDT", "1h", frame([1680652800000], 1.0, HOUR)),
        lambda: store.series(),
        lambda: store.known_gaps("BTCUSDT", "1h"),
        lambda: store.add_known_gaps("BTCUSDT", "1h", [(0, HOUR)]),
        lambda: store.compact("BTCUSDT", "1h"),
        lambda: store.summary("BTCUSDT", "1h"),
        lambda: store.quarantined_series(),
        lambda: store.set_market("BTCUSDT", {"id": "BTCUSDT"}),
        lambda: store.market("BTCUSDT"),
        lambda: Store.exchanges(root),
        lambda: Store(root, "okx").series(),  # the root is one store: every exchange waits for the migration
    ]
    for call in calls:
        with pytest.raises(DataError) as info:
            call()
        msg, hint = info.value.message, info.value.hint or ""
        assert repr(str(root / FILES[0])) in msg and "before exchanges" in msg
        assert "`xylen collect migrate`" in hint and "run again" in hint
    assert old_files() == sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())  # no write
    migrate(root)
    assert store.read("BTCUSDT", "1h").height == EXPECTED[0]["summary"]["rows"]  # the same instance: asked again
    assert Store.exchanges(root) == ["binance"]


@pytest.mark.parametrize(
    "old",
    [
        "meta/BTCUSDT-1h.known_gaps.json",
        "quarantine/klines/symbol=BTCUSDT/interval=1h/year=2024/month=01/data.parquet.20240101T000000000000Z",
        "klines/symbol=BTCUSDT/interval=1h/year=2024/month=01/tail-1-1-" + "a" * 32 + ".parquet",
    ],
    ids=["known-gaps", "quarantined", "tail"],
)
def test_any_file_of_the_old_layout_is_found(tmp_path: Path, old: str) -> None:
    (tmp_path / old).parent.mkdir(parents=True)
    (tmp_path / old).write_bytes(b"[]")
    assert needs_migration(tmp_path) == str(tmp_path / old)
    assert str(tmp_path / old) in refused(tmp_path).message
    migrate(tmp_path)
    assert needs_migration(tmp_path) is None and (tmp_path / new_key(old)).read_bytes() == b"[]"


def test_the_layout_is_checked_once_per_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-candle append path pays for the check once; a refusal is not remembered (see the test above)."""
    from xylen.core import store as store_mod

    calls = []
    real = store_mod.old_layout_key
    monkeypatch.setattr(store_mod, "old_layout_key", lambda s: calls.append(1) or real(s))
    store = Store(tmp_path)
    t0 = 1704067200000
    for i in range(20):
        store.append("BTCUSDT", "1h", frame([t0 + i * HOUR], 1.0, HOUR))
    store.read("BTCUSDT", "1h")
    store.known_gaps("BTCUSDT", "1h")
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------ kill -9 and resume
@pytest.mark.parametrize("n", [1, 12, 22, 24, 25])  # first file, a month in the middle, meta, quarantine, all moved
def test_kill_9_in_the_middle_then_run_again_ends_identical(tmp_path: Path, n: int) -> None:
    root = old_store(tmp_path)
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, str(CHILD), str(root), str(n), str(ready)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: ready.exists() or child.poll() is not None, timeout=120, what="the child's Nth move")
        assert ready.exists(), child.communicate()[0].decode()
        child.send_signal(signal.SIGKILL)
        assert child.wait(60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(60)
    moved_last = Path(ready.read_text())
    assert moved_last.exists() and str(moved_last).startswith(str(root))
    # every candle's file is whole at its old place or its new one
    for key in FILES:
        new = root / new_key(key)
        assert (root / key).exists() or new.exists(), key
        for path in (root / key, new):
            if path.exists() and path.suffix == ".parquet":
                pl.read_parquet(path)
    if n < len(FILES):
        err = refused(root)  # a reader between the kill and the resume: the clear message, never fewer rows
        assert "xylen collect migrate" in (err.hint or "")
    resumed = migrate(root)
    assert len(resumed.moved) == len(FILES) - n
    assert state(root) == expected_state()
    assert needs_migration(root) is None and sorted(os.listdir(root / "klines")) == ["exchange=binance"]


@pytest.mark.parametrize("step", ["unlink", "fsync"])
def test_a_crash_inside_a_move_leaves_the_file_whole_and_the_next_run_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """Between the link at the new place and the unlink of the old one (the same file under two names)."""
    root = old_store(tmp_path)

    def killed(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sm.os if step == "unlink" else sm, "unlink" if step == "unlink" else "fsync_dir", killed)
    with pytest.raises(KeyboardInterrupt):
        migrate(root)
    monkeypatch.undo()
    first = FILES[0]
    if step == "unlink":  # linked, not yet unlinked: one file, two names
        assert os.path.samefile(root / first, root / new_key(first))
    else:  # killed before even the new folder was made durable
        assert (root / first).exists()
    assert repr(str(root / first)) in refused(root).message
    result = migrate(root)
    assert result.merged == [] and len(result.moved) == len(FILES)
    assert state(root) == expected_state()


# ------------------------------------------------------------------------------------------ merge, never overwrite
def test_a_file_already_at_the_new_place_is_merged_not_overwritten(tmp_path: Path) -> None:
    root = old_store(tmp_path)
    want = {s["interval"] + s["symbol"]: s for s in expected_state()}
    store = LocalStorage(root)
    # the new place already holds March's month file: a candle the old one lacks (in the known gap's hour, marker 7)
    # and a copy of the first March candle with another volume (the copy at the new place wins a candle both hold)
    old_march = pl.read_parquet(root / "klines/symbol=BTCUSDT/interval=1h/year=2023/month=03/data.parquet")
    first = old_march.head(1).with_columns(pl.lit(123.0).alias("volume"))
    extra = frame([1679662800000], 7.0, HOUR)  # 2023-03-24 13:00
    store.put_new(f"{BTC_MAR}/data.parquet", sf.encode(pl.concat([first, extra])))
    # a known-gaps file with another range, a tail of the same name with other bytes, a quarantined file likewise
    store.put_new("meta/exchange=binance/BTCUSDT-1h.known_gaps.json", orjson.dumps([[0, HOUR]]))
    tail = next(k for k in FILES if "BTCUSDT/interval=1h/year=2023/month=04/tail-1680393600000" in k)
    store.put_new(new_key(tail), sf.encode(frame([1680393600000], 9.0, HOUR)))
    quarantined = next(k for k in FILES if k.startswith("quarantine/"))
    store.put_new(new_key(quarantined), b"another torn file")

    result = migrate(root)
    gaps = "meta/exchange=binance/BTCUSDT-1h.known_gaps.json"
    assert sorted(result.merged) == sorted([f"{BTC_MAR}/data.parquet", gaps, new_key(tail), new_key(quarantined)])
    assert len(result.moved) == len(FILES) and "merged" in result.line()
    s = Store(root)
    df = s.read("BTCUSDT", "1h")
    assert df.height == want["1hBTCUSDT"]["summary"]["rows"] + 1  # the old rows and the extra candle
    assert df.filter(pl.col("open_time") == 1679662800000)["open"].to_list() == [7.0]
    assert df.filter(pl.col("open_time") == first["open_time"][0])["volume"].to_list() == [123.0]
    untouched = df.filter(~pl.col("open_time").is_in([1679662800000, first["open_time"][0], 1680393600000]))
    old_view = pl.concat([pl.read_parquet(V0 / "data" / f) for f in EXPECTED[0]["files"]])
    assert untouched.equals(old_view.filter(pl.col("open_time").is_in(untouched["open_time"])).sort("open_time"))
    assert s.known_gaps("BTCUSDT", "1h") == [(0, HOUR), tuple(want["1hBTCUSDT"]["summary"]["known_gaps"][0])]
    # the tail of the same name kept its bytes; the old one's are beside it under a name of their own (both read)
    tails = [f.name for f in s.files("BTCUSDT", "1h") if f.name.startswith("tail-1680393600000-")]
    assert len(tails) == 2 and new_key(tail).rsplit("/", 1)[1] in tails
    assert (root / new_key(quarantined)).read_bytes() == b"another torn file"
    beside = [Path(q.file) for q in s.quarantined("ETHUSDT", "1h")]
    assert beside[0] == root / new_key(quarantined) and beside[1].name.startswith(beside[0].name + "-")
    assert beside[1].read_bytes() == (V0 / "data" / quarantined).read_bytes()
    # the other series are exactly what the old code read (ETHUSDT 1h has the second quarantined file)
    got = {x["interval"] + x["symbol"]: x for x in state(root)}
    got["1hETHUSDT"]["summary"]["quarantined"].pop()
    for k in ("5mBTCUSDT", "1hETHUSDT", "5mETHUSDT"):
        assert got[k]["digest"] == want[k]["digest"] and got[k]["summary"] == want[k]["summary"]


def test_a_crash_between_a_merge_and_the_unlink_changes_nothing_on_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = old_store(tmp_path)
    LocalStorage(root).put_new(f"{BTC_MAR}/data.parquet", sf.encode(frame([1679662800000], 7.0, HOUR)))
    reference = old_store(tmp_path / "ref")
    LocalStorage(reference).put_new(f"{BTC_MAR}/data.parquet", sf.encode(frame([1679662800000], 7.0, HOUR)))
    migrate(reference)
    unlink = os.unlink

    def killed(path: Any, *a: Any, **k: Any) -> None:
        if str(path).endswith("month=03/data.parquet") and "symbol=BTCUSDT/interval=1h" in str(path):
            raise KeyboardInterrupt  # the merge is swapped in, the old file not yet removed
        unlink(path, *a, **k)

    monkeypatch.setattr(sm.os, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        migrate(root)
    monkeypatch.undo()
    assert (root / "klines/symbol=BTCUSDT/interval=1h/year=2023/month=03/data.parquet").exists()
    result = migrate(root)
    assert f"{BTC_MAR}/data.parquet" in result.merged
    assert (root / f"{BTC_MAR}/data.parquet").read_bytes() == (reference / f"{BTC_MAR}/data.parquet").read_bytes()
    assert state(root) == state(reference)


def test_a_month_file_an_old_collector_replaces_during_the_move_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xylen from before exchanges, still running since the upgrade, stores a page into March (its swap replaces
    the old month file) after the migration linked that file to its new place and before it removed the old name."""
    root = old_store(tmp_path)
    old_mar = root / "klines/symbol=BTCUSDT/interval=1h/year=2023/month=03/data.parquet"
    page = frame([1679662800000], 7.0, HOUR)  # 2023-03-24 13:00, a candle the store lacks
    fsync_dir = sm.fsync_dir
    fired = []

    def old_writer_between(folder: Path) -> None:
        fsync_dir(folder)
        if folder == root / BTC_MAR and not fired:  # linked, not yet unlinked
            fired.append(1)
            merged = sf.newer_wins(pl.read_parquet(old_mar), page)
            with LocalStorage(root).lock(old_mar.relative_to(root).as_posix()):  # the old swap's lock
                tmp = root / "replacement"
                tmp.write_bytes(sf.encode(merged))
                os.replace(tmp, old_mar)

    monkeypatch.setattr(sm, "fsync_dir", old_writer_between)
    result = migrate(root)
    assert fired and f"{BTC_MAR}/data.parquet" in result.merged and needs_migration(root) is None
    df = Store(root).read("BTCUSDT", "1h")
    assert df.height == EXPECTED[0]["summary"]["rows"] + 1
    assert df.filter(pl.col("open_time") == 1679662800000)["open"].to_list() == [7.0]


def test_unreadable_copies_are_set_aside_never_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = old_store(tmp_path)
    store = LocalStorage(root)
    old_feb = "klines/symbol=BTCUSDT/interval=1h/year=2023/month=02/data.parquet"
    old_mar = "klines/symbol=BTCUSDT/interval=1h/year=2023/month=03/data.parquet"
    feb_bytes, mar_bytes = (root / old_feb).read_bytes(), (root / old_mar).read_bytes()
    (root / old_feb).write_bytes(feb_bytes[:-40])  # the old February is torn; the new place has a good one
    store.put_new(new_key(old_feb), sf.encode(frame([1676851200000], 5.0, HOUR)))
    store.put_new(new_key(old_mar), b"torn at the new place")  # the new March is torn; the old one is good
    store.put_new("meta/exchange=binance/BTCUSDT-5m.known_gaps.json", b"{not json")
    (root / "meta/ETHUSDT-1h.known_gaps.json").write_bytes(b"garbage")
    store.put_new("meta/exchange=binance/ETHUSDT-1h.known_gaps.json", orjson.dumps([[0, HOUR]]))

    def killed(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    # killed right after the first copy was set aside: the next run must not set it aside twice
    put_new = LocalStorage.put_new
    monkeypatch.setattr(LocalStorage, "put_new", lambda self, key, data, **k: put_new(self, key, data, **k) and (
        killed() if key.startswith("quarantine/") else True))
    with pytest.raises(KeyboardInterrupt):
        migrate(root)
    monkeypatch.undo()
    result = migrate(root)
    aside = sorted(p.relative_to(root).as_posix() for p in (root / "quarantine").rglob("*") if p.is_file())
    moved_there = new_key(next(k for k in FILES if k.startswith("quarantine/")))
    assert sorted(result.quarantined) == [k for k in aside if k != moved_there]  # each copy once, despite the kill
    assert sorted((root / k).read_bytes() for k in result.quarantined) == sorted(
        [feb_bytes[:-40], b"torn at the new place", b"{not json", b"garbage"])
    assert "4 unreadable copies set aside in quarantine/" in result.line()
    s = Store(root)
    fixes = [q.fix for q in s.quarantined("BTCUSDT", "1h")]  # status lists the month copies with their fix
    assert len(fixes) == 2 and "--symbols BTCUSDT --intervals 1h --since 2023-02-01 --until 2023-03-01" in fixes[0]
    assert s.read("BTCUSDT", "1h", end=1677628800000)["open"].to_list() == [5.0]  # February: the readable copy
    march = s.read("BTCUSDT", "1h", start=1677628800000, end=1680307200000)
    assert march.height > 700  # the old March, readable, is the month file now
    assert (root / new_key(old_mar)).read_bytes() == mar_bytes
    assert s.known_gaps("BTCUSDT", "5m") == [tuple(g) for g in EXPECTED[1]["summary"]["known_gaps"]]
    assert s.known_gaps("ETHUSDT", "1h") == [(0, HOUR)]
    assert needs_migration(root) is None


# ------------------------------------------------------------------------------------------ foreign files, locking
def test_files_that_are_not_the_stores_are_left_where_they_are_and_reported(tmp_path: Path) -> None:
    root = old_store(tmp_path)
    foreign = {
        "klines/README.txt": b"my notes",
        "klines/symbol=BTCUSDT/notes.txt": b"why this symbol",
        "klines/symbol=BTCUSDT/interval=1h/year=2023/month=02/data.parquet.bak": b"a backup",
        "klines/symbol=btc-usd/interval=1h/year=2023/month=02/data.parquet": b"not a symbol of ours",
        "klines/symbol=BTCUSDT/interval=7m/year=2023/month=02/data.parquet": b"not an interval",
        "klines/symbol=BTCUSDT/interval=1h/year=2023/month=13/data.parquet": b"not a month",
        "meta/README": b"hello",
        "meta/btc.known_gaps.json": b"[]",
        "quarantine/klines/symbol=../x": b"odd",
    }
    for key, data in foreign.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    (root / ".locks").mkdir()
    (root / ".locks" / "x.lock").write_bytes(b"")
    result = migrate(root)
    assert sorted(result.left) == sorted(foreign)
    assert all((root / k).read_bytes() == v for k, v in foreign.items())
    assert (root / ".locks" / "x.lock").exists()
    assert len(result.moved) == len(FILES)
    assert "not the store's" in result.line() and "klines/README.txt" in result.line()
    assert needs_migration(root) is None
    assert state(root) == expected_state()  # the foreign files change nothing a Store reads
    again = migrate(root)
    assert again.moved == [] and sorted(again.left) == sorted(foreign)


def _migrate_in_child(root: str, out: str, marker: str) -> None:
    """One of two concurrent migrations. The first holds the lock (it waits in on_moved) until the second says it
    waits for it; the second never gets on_moved called, since the first moved everything."""

    def on_moved(path: Path) -> None:
        wait_for(lambda: Path(marker).exists(), timeout=120, what="the second migration to wait for the lock")

    def on_wait() -> None:
        Path(marker).write_text(Path(out).stem)

    result = migrate(root, on_moved=on_moved, on_wait=on_wait)
    Path(out).write_bytes(orjson.dumps(result.to_dict()))


def test_two_migrations_at_once_move_each_file_once(tmp_path: Path) -> None:
    root = old_store(tmp_path)
    marker = tmp_path / "waits"
    ctx = mp.get_context("spawn")
    outs = [tmp_path / "first.json", tmp_path / "second.json"]
    first = ctx.Process(target=_migrate_in_child, args=(str(root), str(outs[0]), str(marker)))
    second = ctx.Process(target=_migrate_in_child, args=(str(root), str(outs[1]), str(marker)))
    first.start()  # the second starts once the first holds the lock (it made the new folders)
    wait_for(lambda: (root / "klines" / "exchange=binance").exists(), timeout=120, what="the first migration")
    second.start()
    for p in (first, second):
        p.join(180)
    assert [first.exitcode, second.exitcode] == [0, 0]
    assert marker.read_text() == "second"
    a, b = (orjson.loads(o.read_bytes()) for o in outs)
    assert sorted(a["moved"]) == sorted(new_key(k) for k in FILES) and b["moved"] == []
    assert state(root) == expected_state()


# ------------------------------------------------------------------------------------------ the CLI
def test_xylen_collect_migrate(tmp_path: Path) -> None:
    home = tmp_path / "home"
    old_store(home)
    (home / "data" / "klines" / "README.txt").write_text("mine")
    runner = CliRunner()
    r = runner.invoke(app, ["--home", str(home), "collect", "export", "--symbol", "BTCUSDT", "--interval", "1h"])
    assert r.exit_code == 3 and "Traceback" not in r.output
    assert "xylen collect migrate" in r.stderr.replace("\n", " ") and "before exchanges" in r.stderr
    for args in (["collect", "status"], ["train", "--symbol", "BTCUSDT", "--interval", "1h"], ["train"]):
        r = runner.invoke(app, ["--home", str(home), *args])  # `train`: never the bundled sample instead
        assert r.exit_code == 3 and "xylen collect migrate" in r.stderr.replace("\n", " "), (args, r.output)
        assert "Traceback" not in r.output and not (home / "models").exists()
    r = runner.invoke(app, ["--home", str(home), "collect", "migrate"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert "Moved 25 files of 4 series (BTCUSDT 1h, BTCUSDT 5m, ETHUSDT 1h, ETHUSDT 5m) to exchange=binance" in text
    assert "Left 1 file that is not the store's where it is: klines/README.txt" in text
    r = runner.invoke(app, ["--home", str(home), "collect", "export", "--symbol", "BTCUSDT", "--interval", "1h"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == EXPECTED[0]["summary"]["rows"]
    r = runner.invoke(app, ["--home", str(home), "collect", "migrate", "--json"])
    assert r.exit_code == 0
    got = orjson.loads(r.stdout)
    assert (got["moved"], got["left"], got["exchange"]) == ([], ["klines/README.txt"], "binance")
    r = runner.invoke(app, ["--home", str(tmp_path / "empty"), "collect", "migrate"])
    assert r.exit_code == 0 and "Nothing to migrate" in r.stdout
    assert not (tmp_path / "empty").exists()  # nothing to do: nothing written, not even a lock
    r = runner.invoke(app, ["collect", "migrate", "--help"])
    assert r.exit_code == 0 and "Example: xylen collect migrate" in r.stdout


def test_an_unwritable_store_is_a_clear_error_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    old_store(home)

    def denied(*a: object, **k: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")  # tests run as root here: chmod would not stop us

    monkeypatch.setattr(sm.os, "link", denied)
    r = CliRunner().invoke(app, ["--home", str(home), "collect", "migrate"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "permission denied" in r.stderr and "hint:" in r.stderr
    assert old_files() == sorted(
        p.relative_to(home / "data").as_posix() for p in (home / "data").rglob("*") if p.is_file() and
        not p.relative_to(home / "data").as_posix().startswith(".locks/"))


def test_a_file_system_without_hard_links_migrates_by_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = old_store(tmp_path)
    LocalStorage(root).put_new(f"{BTC_MAR}/data.parquet", sf.encode(frame([1679662800000], 7.0, HOUR)))

    def no_links(*a: object, **k: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")  # e.g. some FUSE and SMB mounts

    monkeypatch.setattr(sm.os, "link", no_links)
    result = migrate(root)
    assert len(result.moved) == len(FILES) and result.merged == [f"{BTC_MAR}/data.parquet"]
    assert needs_migration(root) is None
    got = {(x["symbol"], x["interval"]): x for x in state(root)}
    assert got[("BTCUSDT", "1h")]["summary"]["rows"] == EXPECTED[0]["summary"]["rows"] + 1
    want = {(x["symbol"], x["interval"]): x for x in expected_state()}
    assert all(got[k] == want[k] for k in want if k != ("BTCUSDT", "1h"))
