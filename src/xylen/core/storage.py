"""The storage seam: every write of the candle store and of the model registry goes through one of these calls.

The interface is the one an object store offers, so that S3-compatible storage can stand behind it later
(the scale issue) with no change to the store or the registry:

* ``put_new(key, data)`` creates an immutable object, and fails if the key exists (S3: ``If-None-Match: *``);
* ``swap(key, data, expect)`` replaces an object only if it still is the version the writer read: a
  compare-and-swap on an opaque version token (S3: ``If-Match: <ETag>``; ``expect=None``: must not exist yet);
* ``read`` / ``read_versioned`` / ``list`` / ``delete``;
* ``publish_tree(folder, prefix)`` makes a whole folder of files visible under ``prefix`` at once, or not at
  all if ``prefix`` is taken (S3: upload the files, then ``put_new`` the folder's commit marker last);
* ``retire(prefix, guards, allowed)`` takes a tree out of sight, ordered against every ``swap`` of a guard key
  that ``require``s the tree (retention: CURRENT and PINS never name a deleted version), and ``purge`` deletes
  it (S3: a lease object per guard key around the check and the removal of the commit marker).

No caller relies on rename, append or a file lock. ``LocalStorage`` implements the calls on a POSIX disk:
temp file + fsync + rename (+ fsync of the folder), ``link`` for create-only, and a short ``flock`` around
the compare step of ``swap`` only. Temp files live in ``<root>/.tmp`` and locks in ``<root>/.locks``, outside
every listed prefix, so a directory scan of the data (polars, DuckDB, dask) never meets a stray file.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from xylen.core.errors import ConfigError, XylenError

TMP_DIR = ".tmp"
LOCK_DIR = ".locks"
_HIDDEN = (TMP_DIR, LOCK_DIR)


class Conflict(XylenError):
    """A compare-and-swap lost: the object changed since the writer read it. Re-read and decide again."""

    exit_code = 4

    def __init__(self, key: str, expected: str | None, found: str | None) -> None:
        self.key = key
        self.expected = expected
        self.found = found
        super().__init__(
            f"{key!r} changed while it was being updated (another writer got there first).",
            hint="re-read it and retry; nothing was overwritten.",
        )


class Missing(XylenError):
    """The object does not exist."""

    exit_code = 4

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"{key!r} does not exist.")


@dataclass(frozen=True)
class Versioned:
    data: bytes
    token: str  # opaque version: the local file's identity, or an object store's ETag


class Storage(Protocol):
    """What the store and the registry may ask of the place they keep their bytes."""

    def read(self, key: str) -> bytes: ...
    def read_versioned(self, key: str) -> Versioned | None: ...
    def token(self, key: str) -> str | None: ...
    def put_new(self, key: str, data: bytes, *, sync_folder: bool = True) -> bool: ...
    def swap(self, key: str, data: bytes, expect: str | None, *, require: Sequence[str] = ()) -> str: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def publish_tree(self, folder: Path, prefix: str) -> bool: ...
    def retire(self, prefix: str, *, guards: Sequence[str], allowed: Callable[[], bool]) -> Path | None: ...
    def purge(self, retired: Path) -> None: ...
    def local_path(self, key: str) -> Path | None: ...
    def folders(self, prefix: str = "") -> builtins.list[str]: ...
    def trees(self, prefix: str) -> builtins.list[str]: ...
    def has_tree(self, prefix: str) -> bool: ...
    def temp_dir(self) -> Path: ...
    def clean_temp(self) -> int: ...


def check_key(key: str) -> str:
    """Keys are relative POSIX paths without '.', '..' or empty parts: nothing can name a file outside."""
    parts = PurePosixPath(key).parts
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(p in ("", ".", "..") for p in key.split("/"))
        or (parts and parts[0] in _HIDDEN)
    ):
        raise ConfigError(f"Storage key {key[:120]!r} is not allowed.", hint="this is a bug in the caller; report it.")
    return key


def storage_error(exc: OSError, where: Path | str) -> XylenError:
    """An OSError as what it is: a permission problem, a full disk, or another I/O failure, naming the path."""
    what = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exhausted",
    }.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    fix = (
        "free some space (old model versions: `xylen models prune --all --dry-run`) and run it again."
        if exc.errno in (errno.ENOSPC, errno.EDQUOT)
        else "set XYLEN_HOME to a writable folder or fix its permissions."
    )
    return ConfigError(f"Cannot write to {str(where)!r}: {what}.", hint=fix)


class LocalStorage:
    """``Storage`` on a local POSIX file system rooted at ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------------------------
    def local_path(self, key: str) -> Path:
        return self.root / check_key(key)

    def read(self, key: str) -> bytes:
        try:
            return self.local_path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise Missing(key) from None

    def read_versioned(self, key: str) -> Versioned | None:
        try:
            with open(self.local_path(key), "rb") as fh:
                data = fh.read()
            return Versioned(data, _token(data))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def token(self, key: str) -> str | None:
        got = self.read_versioned(key)
        return None if got is None else got.token

    def stamp(self, prefix: str) -> tuple[int, ...] | None:
        """An identity of a folder that changes when an entry is added to or removed from it (None: no folder).
        Local disks only: an object store has no folders, and callers then list."""
        try:
            st = os.stat(self.local_path(prefix))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def list(self, prefix: str = "") -> list[str]:
        """Keys (files) under ``prefix``, sorted; temp files and locks are never listed."""
        base = self.root / check_key(prefix) if prefix else self.root
        if not base.is_dir():
            return [prefix] if prefix and base.is_file() else []
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d not in _HIDDEN]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for f in filenames:
                out.append(f if rel == "." else f"{rel}/{f}")
        return sorted(out)

    def folders(self, prefix: str = "") -> builtins.list[str]:
        """Names of the folders directly under ``prefix`` (temp and lock areas excluded), sorted."""
        base = self.root / check_key(prefix) if prefix else self.root
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e.name for e in entries if e.is_dir() and not (not prefix and e.name in _HIDDEN))

    def trees(self, prefix: str) -> builtins.list[str]:
        """Names of the published trees directly under ``prefix`` (here: its folders; a tree appears by one rename)."""
        return self.folders(prefix)

    def has_tree(self, prefix: str) -> bool:
        return self.local_path(prefix).is_dir()

    # -- writing -------------------------------------------------------------------------------------------
    def put_new(self, key: str, data: bytes, *, sync_folder: bool = True) -> bool:
        """Create ``key`` with ``data`` unless it exists (then False). Readers see nothing or all of it.

        The data is always on disk before the object is visible (never a torn object, even after a power cut).
        ``sync_folder=False`` skips the fsync that makes the new folder entry itself survive a power cut (not a
        killed process): for objects whose loss the caller repairs, like a closed candle the collector fetches
        again by REST on its next start."""
        path = self.local_path(key)
        tmp = self._write_temp(data, path)
        try:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise storage_error(exc, path) from None
                with self.lock(key):  # a file system without hard links
                    if path.exists():
                        return False
                    os.replace(tmp, path)
            if sync_folder:
                fsync_dir(path.parent)
            return True
        finally:
            _discard(tmp)

    def swap(self, key: str, data: bytes, expect: str | None, *, require: Sequence[str] = ()) -> str:
        """Replace ``key`` only if its token is still ``expect`` (None: only if absent). Raises Conflict.

        ``require``: prefixes (trees) that must still exist when the swap happens, else Missing and no change:
        a pointer must never name a tree that ``retire`` moved away. Checked under the same lock that ``retire``
        holds for ``key``, so a swap and a retire of a required tree are ordered one way or the other."""
        path = self.local_path(key)
        tmp = self._write_temp(data, path)
        try:
            with self.lock(key):
                found = self.token(key)
                if found != expect:
                    raise Conflict(key, expect, found)
                for prefix in require:
                    if not self.local_path(prefix).exists():
                        raise Missing(prefix)
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    raise storage_error(exc, path) from None
            fsync_dir(path.parent)
            return _token(data)
        finally:
            _discard(tmp)

    def delete(self, key: str) -> None:
        path = self.local_path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            raise ConfigError(f"{str(path)!r} is a folder, not an object.", hint="remove it by hand.") from None
        except OSError as exc:
            raise storage_error(exc, path) from None
        fsync_dir(path.parent)

    def publish_tree(self, folder: Path, prefix: str) -> bool:
        """Make every file of ``folder`` visible under ``prefix`` at once; False (folder kept) if ``prefix`` exists.

        Local: one directory rename after fsyncing every file, under the prefix's lock so that an empty folder
        at ``prefix`` can never be silently replaced.
        """
        target = self.local_path(prefix)
        try:
            for f in folder.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
                fsync_dir(d)
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.lock(prefix):
                if target.exists():
                    return False
                os.rename(folder, target)
        except OSError as exc:
            raise storage_error(exc, target) from None
        fsync_dir(target.parent)
        return True

    def retire(self, prefix: str, *, guards: Sequence[str], allowed: Callable[[], bool]) -> Path | None:
        """Take the tree at ``prefix`` out of sight, if ``allowed()`` still says so; returns it (for ``purge``).

        The caller's decision is taken again under the locks of the ``guards`` keys (the pointers that could come
        to name the tree), and the tree is moved into the temp area by one rename before they are released: a
        ``swap`` of a guard that ``require``s this tree runs wholly before (then ``allowed()`` sees it) or after
        (then it finds the tree gone and changes nothing). None: the tree is absent, or no longer allowed.
        A retired tree is named like a temp folder, so a retirer killed before ``purge`` leaves nothing visible and
        the next writer's ``clean_temp`` removes it."""
        target = self.local_path(prefix)
        with contextlib.ExitStack() as stack:
            for key in sorted(set(guards)):  # one order for every retirer: no deadlock between two of them
                stack.enter_context(self.lock(key))
            if not target.is_dir() or not allowed():
                return None
            trash = self.root / TMP_DIR / f"{_temp_stem()}.d"
            try:
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.rename(target, trash)
            except OSError as exc:
                raise storage_error(exc, target) from None
        fsync_dir(target.parent)
        return trash

    def purge(self, retired: Path) -> None:
        """Delete a tree that ``retire`` returned (what a kill leaves of it, ``clean_temp`` removes later)."""
        import shutil

        shutil.rmtree(retired, ignore_errors=True)
        if retired.exists():
            raise ConfigError(
                f"Cannot delete {str(retired)!r} (a removed tree, already out of sight).",
                hint="fix the permissions of XYLEN_HOME; a later writer deletes it once this process has ended.",
            )

    def temp_dir(self) -> Path:
        """A private folder on the same file system, for building a tree to ``publish_tree``."""
        d = self.root / TMP_DIR / f"{_temp_stem()}.d"
        try:
            d.mkdir(parents=True)
        except OSError as exc:
            raise storage_error(exc, self.root) from None
        return d

    def clean_temp(self) -> int:
        """Remove temp files and folders left by writers that died (their renames never happened).

        A temp name carries its writer's pid and a tag of its host: XYLEN_HOME may be shared by containers, whose
        pids mean nothing here, so another host's leftovers are removed only once they are a day old."""
        import shutil
        import time

        n = 0
        tmp = self.root / TMP_DIR
        if not tmp.is_dir():
            return 0
        now = time.time()
        for f in tmp.iterdir():
            pid, _, _rest = f.name.partition("-")
            if not pid.isdigit():
                continue
            m = _TEMP_NAME.fullmatch(f.name)
            tag = m.group(1) if m else HOST_TAG  # names without a tag come from older versions on this host
            if tag == HOST_TAG:
                stale = int(pid) != os.getpid() and not _alive(int(pid))
            else:
                try:
                    stale = now - f.stat().st_mtime > FOREIGN_TEMP_AGE_S
                except FileNotFoundError:
                    continue
            if stale:
                if f.is_dir():
                    shutil.rmtree(f, ignore_errors=True)
                else:
                    f.unlink(missing_ok=True)
                n += 1
        return n

    # -- internals -----------------------------------------------------------------------------------------
    def _write_temp(self, data: bytes, target: Path) -> Path:
        tmp = self.root / TMP_DIR / f"{_temp_stem()}.tmp"
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException as exc:  # failed or interrupted: no temp file outlives the write
            _discard(tmp)
            if isinstance(exc, OSError):
                raise storage_error(exc, target) from None
            raise
        return tmp

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """A cross-process lock named by ``key`` (a file in ``.locks``): around a compare step, or a caller's
        optional serialisation of its own writers. Readers never take it, and correctness never depends on it
        beyond this machine (an object store's conditional writes take its place)."""
        d = self.root / LOCK_DIR
        name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock"
        try:
            d.mkdir(parents=True, exist_ok=True)
            fh = open(d / name, "a+b")  # noqa: SIM115
        except OSError as exc:
            raise storage_error(exc, d) from None
        with fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _token(data: bytes) -> str:
    # the content's hash (an object store's ETag is one too): file identities (inode, mtime) can repeat after a
    # delete within one timestamp tick, and equal contents make a compare-and-swap's decision equally valid
    return hashlib.sha256(data).hexdigest()[:32]


def _discard(tmp: Path) -> None:
    """Remove a temp file; never let a failing cleanup hide the error that is being raised."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    """fsync a folder so that a rename or unlink in it survives a power cut (best effort where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host_tag() -> str:
    """Who may judge a pid by asking this kernel: the host name, the boot, and the pid namespace (containers that
    share a host name, e.g. with host networking, still have their own pids)."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


HOST_TAG = _host_tag()
_TEMP_NAME = re.compile(r"\d+-[0-9a-f]{32}-([0-9a-f]{8})\.(?:tmp|d)")
FOREIGN_TEMP_AGE_S = 86_400.0


def _temp_stem() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex}-{HOST_TAG}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
