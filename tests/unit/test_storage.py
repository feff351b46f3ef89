"""The storage seam's contract on a local disk: create-only, compare-and-swap, listing, keys that cannot escape."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import threading
from pathlib import Path

import pytest

from xylen.core.errors import ConfigError
from xylen.core.storage import Conflict, LocalStorage, Missing


def test_put_new_creates_once_and_never_overwrites(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    assert st.put_new("a/b/obj.bin", b"one")
    assert not st.put_new("a/b/obj.bin", b"two")
    assert st.read("a/b/obj.bin") == b"one"
    assert st.list() == ["a/b/obj.bin"]  # no temp file or lock is ever listed


def test_swap_is_a_compare_and_swap(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    t1 = st.swap("p.json", b"1", None)
    with pytest.raises(Conflict):
        st.swap("p.json", b"x", None)  # expected absent, but it exists
    got = st.read_versioned("p.json")
    assert got is not None and got.token == t1 and got.data == b"1"
    t2 = st.swap("p.json", b"2", t1)
    with pytest.raises(Conflict):
        st.swap("p.json", b"stale", t1)  # a writer that read version 1 must not overwrite version 2
    assert st.read("p.json") == b"2" and st.token("p.json") == t2


def test_read_missing(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    with pytest.raises(Missing):
        st.read("nope")
    assert st.read_versioned("nope") is None and st.token("nope") is None


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "a//b", "", ".tmp/x", ".locks/y", "a\\b", "./a"])
def test_keys_cannot_escape(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError):
        LocalStorage(tmp_path).put_new(key, b"x")


def _increment(root: str, n: int) -> None:
    st = LocalStorage(root)
    done = 0
    while done < n:
        got = st.read_versioned("counter")
        value = int(got.data) if got else 0
        try:
            st.swap("counter", str(value + 1).encode(), got.token if got else None)
            done += 1
        except Conflict:
            continue


def test_concurrent_swaps_lose_no_update_across_threads_and_processes(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_increment, args=(str(tmp_path), 25)) for _ in range(2)]
    threads = [threading.Thread(target=_increment, args=(str(tmp_path), 25)) for _ in range(2)]
    for w in (*procs, *threads):
        w.start()
    for w in (*procs, *threads):
        w.join(120)
    assert all(p.exitcode == 0 for p in procs)
    assert LocalStorage(tmp_path).read("counter") == b"100"


def test_publish_tree_is_all_or_nothing(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path / "root")
    src = st.temp_dir()
    (src / "sub").mkdir()
    (src / "a.txt").write_bytes(b"a")
    (src / "sub" / "b.txt").write_bytes(b"b")
    assert st.publish_tree(src, "m/v0001")
    assert st.list("m") == ["m/v0001/a.txt", "m/v0001/sub/b.txt"]
    other = st.temp_dir()
    (other / "a.txt").write_bytes(b"other")
    assert not st.publish_tree(other, "m/v0001")  # taken: nothing replaced
    assert st.read("m/v0001/a.txt") == b"a" and other.is_dir()
    (tmp_path / "root" / "m" / "v0002").mkdir()  # even an empty folder is never silently replaced
    assert not st.publish_tree(other, "m/v0002")


def test_clean_temp_removes_only_dead_writers_leftovers(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    tmp = tmp_path / ".tmp"
    tmp.mkdir()
    dead = tmp / "999999999-x.tmp"
    mine = tmp / f"{os.getpid()}-y.tmp"
    dead.write_bytes(b"")
    mine.write_bytes(b"")
    assert st.clean_temp() == 1
    assert not dead.exists() and mine.exists()


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied")])
def test_write_errors_say_what_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, words: str) -> None:
    """Disk full and permission problems are reported as such (root ignores modes, so the error is injected)."""
    st = LocalStorage(tmp_path)

    def fail(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(ConfigError, match=words) as info:
        st.put_new("m/x.bin", b"1")
    assert "m/x.bin" in info.value.message
    monkeypatch.undo()
    assert st.list() == []  # nothing half-written is visible


@pytest.mark.parametrize("sync_folder", [True, False])
def test_put_new_syncs_the_bytes_before_the_object_becomes_visible(tmp_path, monkeypatch, sync_folder):
    """A power cut can never leave a torn object: the data is fsynced before the link makes it visible; only the
    folder's own fsync (the entry's durability) is optional, for objects the caller can fetch again."""
    import xylen.core.storage as storage_mod

    events: list[str] = []
    real_fsync, real_link = os.fsync, os.link
    monkeypatch.setattr(storage_mod.os, "fsync", lambda fd: (events.append("fsync data"), real_fsync(fd))[1])
    monkeypatch.setattr(storage_mod.os, "link", lambda a, b: (events.append("link"), real_link(a, b))[1])
    monkeypatch.setattr(storage_mod, "fsync_dir", lambda p: events.append("fsync folder"))
    assert LocalStorage(tmp_path).put_new("a/tail.parquet", b"x", sync_folder=sync_folder)
    assert events == ["fsync data", "link", *(["fsync folder"] if sync_folder else [])]


def test_clean_temp_leaves_another_hosts_fresh_temp_files(tmp_path):
    """XYLEN_HOME shared by containers: their pids mean nothing here, so their temp files go only when a day old."""
    import time

    from xylen.core.storage import FOREIGN_TEMP_AGE_S, HOST_TAG

    st = LocalStorage(tmp_path)
    tmp = tmp_path / ".tmp"
    tmp.mkdir()
    u = "0123456789abcdef" * 2
    ours_dead = tmp / f"999999999-{u}-{HOST_TAG}.tmp"
    foreign_fresh = tmp / f"999999999-{u}-0badc0de.tmp"
    foreign_old = tmp / f"999999998-{u}-0badc0de.d"
    older_format = tmp / "999999997-year=2024-month=01.parquet.tmp"  # an older xylen on this host: ours
    older_format.write_bytes(b"")
    for f in (ours_dead, foreign_fresh):
        f.write_bytes(b"")
    foreign_old.mkdir()
    old = time.time() - FOREIGN_TEMP_AGE_S - 60
    os.utime(foreign_old, (old, old))
    assert st.clean_temp() == 3
    assert foreign_fresh.exists() and not ours_dead.exists() and not foreign_old.exists()
    assert not older_format.exists()
    made = st.temp_dir()
    assert made.name.endswith(f"-{HOST_TAG}.d") and st.clean_temp() == 0  # a live writer's folder stays
