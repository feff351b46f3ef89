"""The model registry: immutable bundle folders per model name, and a CURRENT pointer per model.

Layout (under XYLEN_HOME/models)::

    btcusdt-5m/v0001/{model.txt, manifest.json, report.html, report/*.png}
    btcusdt-5m/CURRENT.json     {"version": "v0002", "sha256": "...", "promoted_at": "...", "history": ["v0001"]}
    .tmp/<pid>-<id>.d/          a bundle being written; never listed, removed on failure or by the next writer

Every write goes through the storage seam (core/storage.py): a bundle becomes visible as a whole
(``publish_tree``: one directory rename here) under the next free version number, and CURRENT changes only by a
compare-and-swap on the pointer that the writer read, so concurrent writers (two `xylen models promote`, a trainer and
an HTTP rollback) never lose each other's history: the loser re-reads and tries again. ``promote`` and ``rollback``
verify the target version in a child process first (size, sha256, trial load, golden predictions): the CLI, the
HTTP rollback and the trainers share that one rule. An interrupted write at any point leaves CURRENT naming a
complete, verified bundle.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from xylen.core.bundle import Manifest, now_iso, read_manifest, verify_artifact, write_durably
from xylen.core.errors import BundleError, ConfigError
from xylen.core.labels import kind_of
from xylen.core.markets import model_name  # noqa: F401  (the registry's names: one rule in markets.py)
from xylen.core.storage import Conflict, LocalStorage, Missing

POINTER = "CURRENT.json"
_VERSION_RE = re.compile(r"^v([0-9]{4,})$")  # ASCII digits only: \d also matches other scripts' digits
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HISTORY_LIMIT = 50
_CAS_RETRIES = 200

Verifier = Callable[[Path], "str | None"]  # None: the bundle is good; else the reason it is not


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"Model name {str(name)[:80]!r} is not allowed.",
            hint="use lowercase letters, digits, '.', '_' and '-', like btcusdt-5m.",
        )
    return name


def check_version(name: str, version: str) -> str:
    """``version`` if it names a version folder of a model (v0001, v0002, ...); nothing else can reach the disk."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise BundleError(
            f"{str(version)[:80]!r} is not a version of model {name!r}.",
            hint=f"versions look like v0003; see `xylen models list {name}`.",
        )
    return version


@dataclass(frozen=True)
class Pointer:
    name: str
    version: str
    sha256: str
    promoted_at: str
    history: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "name": self.name,
                "version": self.version,
                "sha256": self.sha256,
                "promoted_at": self.promoted_at,
                "history": list(self.history),
            },
            option=orjson.OPT_INDENT_2,
        )


class PromotionConflict(BundleError):
    """A conditional promotion lost: another writer changed the live version after the caller compared against it."""


def _verify_default(folder: Path) -> str | None:
    from xylen.core.verify import verify_in_child

    return verify_in_child(folder)


class Registry:
    def __init__(self, root: str | Path, *, verify: Verifier | None = None) -> None:
        self.root = Path(root)
        self.storage = LocalStorage(self.root)
        self._verify = verify or _verify_default

    # -- reading -------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME_RE.fullmatch(p.name) and (self.versions(p.name) or (p / POINTER).exists())
        )

    def live_names(self) -> list[str]:
        """Models that have a live version (a CURRENT pointer): one listing of the root and one stat per model (a
        server asks every poll interval; names() would also list each model's versions)."""
        try:
            entries = list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            e.name for e in entries
            if _NAME_RE.fullmatch(e.name) and e.is_dir() and os.path.exists(os.path.join(e.path, POINTER))
        )

    def versions(self, name: str) -> list[str]:
        folder = self.root / check_name(name)
        if not folder.is_dir():
            return []
        return sorted(
            (p.name for p in folder.iterdir() if p.is_dir() and _VERSION_RE.fullmatch(p.name)), key=lambda v: int(v[1:])
        )

    def path(self, name: str, version: str) -> Path:
        return self.root / check_name(name) / check_version(name, version)

    def _pointer_key(self, name: str) -> str:
        return f"{check_name(name)}/{POINTER}"

    def _read_pointer(self, name: str, *, replace_damaged: bool = False) -> tuple[Pointer | None, str | None]:
        """The pointer and the token a compare-and-swap must expect (None, None when there is none).

        A damaged pointer raises BundleError; with ``replace_damaged`` (a promotion, which needs no history) its
        bytes are kept beside it as ``CURRENT.json.damaged-<time>`` and it counts as "nothing live", so the
        promotion the error message recommends can repair it."""
        got = self.storage.read_versioned(self._pointer_key(name))
        if got is None:
            return None, None
        try:
            raw = orjson.loads(got.data)
            ptr = Pointer(
                name=name,
                version=check_version(name, str(raw["version"])),
                sha256=str(raw["sha256"]),
                promoted_at=str(raw.get("promoted_at", "")),
                history=tuple(str(v) for v in raw.get("history", ())),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, BundleError) as exc:
            if replace_damaged:
                stamp = now_iso().replace(":", "")
                self.storage.put_new(f"{self._pointer_key(name)}.damaged-{stamp}-{got.token[:8]}", got.data)
                return None, got.token
            raise BundleError(
                f"{str(self.root / name / POINTER)!r} is unreadable ({str(exc)[:200]}).",
                hint=f"promote a version again: `xylen models promote {name} vNNNN` (the damaged file is kept).",
            ) from None
        return ptr, got.token

    def current(self, name: str) -> Pointer | None:
        return self._read_pointer(name)[0]

    def current_path(self, name: str) -> Path:
        ptr = self.current(name)
        if ptr is None:
            raise BundleError(
                f"Model {name!r} has no live version in {str(self.root)!r}.",
                hint="train one with `xylen train`, or promote one with `xylen models promote`.",
            )
        return self.path(name, ptr.version)

    def manifest(self, name: str, version: str) -> Manifest:
        folder = self.path(name, version)
        if not folder.is_dir():
            known = ", ".join(self.versions(name)) or "none"
            raise BundleError(
                f"Model {name!r} has no version {version!r} (known: {known}).", hint="see `xylen models list`."
            )
        return read_manifest(folder)

    def resolve_name(self, name: str | None) -> str:
        """The model a command means: the given name, or the only one there is."""
        names = self.names()
        if name:
            if name not in names:
                raise BundleError(
                    f"No model named {name[:80]!r} in {str(self.root)!r} (known: {', '.join(names) or 'none'}).",
                    hint="see `xylen models list`, or train one with `xylen train`.",
                )
            return name
        if len(names) == 1:
            return names[0]
        if not names:
            raise BundleError(f"The registry {str(self.root)!r} holds no models.", hint="train one with `xylen train`.")
        raise ConfigError(f"Several models exist ({', '.join(names)}); say which one.", hint="pass the model name.")

    # -- writing -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Path]:
        """A private folder to build a bundle in (invisible to every reader); removed if the block fails."""
        check_name(name)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(
                f"Cannot write to the model registry {str(self.root)!r}: it is not a folder.",
                hint="set XYLEN_HOME to a writable folder or fix its permissions.",
            )
        self.storage.clean_temp()  # leftovers of writers that were killed
        staging = self.storage.temp_dir()
        try:
            yield staging
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def publish(self, name: str, staging: Path, finalize: Callable[[Path, str], None] | None = None) -> str:
        """Make a staged bundle visible as the next free version, all files at once. Returns the version.

        ``finalize(staging, version)`` runs once the version number is chosen, before the files become visible
        (again, with the next number, if another writer took that one first): files that name the version,
        like the report, are written there."""
        check_name(name)
        manifest_path = staging / "manifest.json"
        data = orjson.loads(manifest_path.read_bytes())
        for _ in range(_CAS_RETRIES):
            existing = self.versions(name)
            version = f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"
            if data.get("version") != version:
                data["version"] = version
                write_durably(manifest_path, orjson.dumps(data, option=orjson.OPT_INDENT_2))
            if finalize is not None:
                finalize(staging, version)
            # False only when another writer took this number first: then take the next one
            if self.storage.publish_tree(staging, f"{name}/{version}"):
                return version
        raise BundleError(
            f"Could not allocate a version for {name!r} after {_CAS_RETRIES} tries.",
            hint="many writers are publishing at once; retry.",
        )

    def verify(self, name: str, version: str) -> Manifest:
        """Check ``version`` as a server would before it may go live: manifest, size, sha256, and (in a child
        process, which a corrupt model file may crash) a trial load with the golden predictions."""
        folder = self.path(name, version)
        manifest = self.manifest(name, version)
        verify_artifact(folder, manifest)
        reason = self._verify(folder)
        if reason is not None:
            raise BundleError(
                f"Model {name!r} {version} failed verification: {reason}",
                hint="it cannot go live; keep the current version, or retrain.",
            )
        return manifest

    def promote(
        self, name: str, version: str, *, now: str | None = None, expect_live: str | None | bool = True
    ) -> Pointer:
        """Verify ``version``, then make it live by a compare-and-swap of CURRENT (retried on a concurrent write).

        ``expect_live``: True promotes whatever is live now; a version string (or None for "nothing live")
        promotes only if that is still the live version, else raises PromotionConflict -- a trainer that gated its
        candidate against v0007 must not replace a v0008 that someone promoted meanwhile.
        """
        existed = self.path(name, version).is_dir()
        try:
            manifest = self.verify(name, version)
        except BundleError:
            if existed and not self.path(name, version).is_dir():  # a prune removed it while it was checked
                raise self._pruned(name, version) from None
            raise

        def change(old: Pointer | None) -> Pointer:
            if not self.path(name, version).is_dir():
                raise self._pruned(name, version)
            live = old.version if old else None
            if expect_live is not True and live != expect_live:
                raise PromotionConflict(
                    f"Model {name!r}: {live or 'nothing'} is live now, not {expect_live or 'nothing'}; "
                    f"{version} was not promoted.",
                    hint="another writer promoted a version meanwhile; compare against it and try again.",
                )
            history: tuple[str, ...] = old.history if old else ()
            if old is not None and old.version != version:
                history = (old.version, *old.history)
            return Pointer(name, version, manifest.artifact.sha256, now or now_iso(), self._present(name, history))

        return self._swap_pointer(name, change, replace_damaged=True)

    def rollback(self, name: str, *, now: str | None = None) -> Pointer:
        """Make the previous live version live again, in one step (verified first, like a promotion)."""
        checked: dict[str, Manifest] = {}

        def change(old: Pointer | None) -> Pointer:
            history = self._present(name, old.history) if old else ()  # pruned versions are no target
            if old is None or not history:
                raise BundleError(
                    f"Model {name!r} has no previous live version to roll back to.",
                    hint=f"promote a specific version: `xylen models promote {name} vNNNN`.",
                )
            target, rest = history[0], history[1:]
            if target not in checked:
                checked[target] = self.verify(name, target)
            return Pointer(name, target, checked[target].artifact.sha256, now or now_iso(), rest)

        return self._swap_pointer(name, change)

    def _swap_pointer(
        self, name: str, change: Callable[[Pointer | None], Pointer], *, replace_damaged: bool = False
    ) -> Pointer:
        for _ in range(_CAS_RETRIES):
            old, token = self._read_pointer(name, replace_damaged=replace_damaged)
            new = change(old)
            # CURRENT never names a removed folder: the swap requires the live version and the rollback target,
            # checked under the lock a prune holds while it takes a version away (core/retention.py)
            require = [f"{name}/{v}" for v in (new.version, *new.history[:1])]
            try:
                self.storage.swap(self._pointer_key(name), new.to_json(), token, require=require)
            except Conflict:
                continue  # someone else wrote CURRENT between our read and our write: decide again on theirs
            except Missing:
                continue  # a prune took a version away meanwhile: decide again without it
            return new
        raise BundleError(
            f"Could not update {name!r}'s CURRENT.json after {_CAS_RETRIES} tries.",
            hint="many writers are changing it at once; retry.",
        )

    def _present(self, name: str, history: tuple[str, ...]) -> tuple[str, ...]:
        """The versions of ``history`` that still exist (retention removes old ones), at most HISTORY_LIMIT."""
        return tuple(v for v in history if _VERSION_RE.fullmatch(v) and (self.root / name / v).is_dir())[:HISTORY_LIMIT]

    def _pruned(self, name: str, version: str) -> BundleError:
        return BundleError(
            f"Model {name!r} {version} was removed by a prune while it was being promoted; nothing changed.",
            hint=f"promote another version (`xylen models list {name}`); pin versions you may need again "
            f"(`xylen models pin {name} vNNNN`).",
        )

    # -- retention (core/retention.py) -----------------------------------------------------------------------
    def pins(self, name: str) -> set[str]:
        """The pinned versions of ``name`` (a damaged PINS.json raises BundleError, never "no pins")."""
        from xylen.core import retention

        return set(retention.read_pins(self, name)[0])

    def pin(self, name: str, version: str) -> bool:
        """Pin an existing version so that no prune removes it; False if it was pinned already."""
        from xylen.core import retention

        return retention.pin(self, name, version)

    def unpin(self, name: str, version: str) -> bool:
        """Unpin a version; False if it was not pinned."""
        from xylen.core import retention

        return retention.unpin(self, name, version)

    def prune(self, name: str, keep: int, *, dry_run: bool = False) -> list[str]:
        """Remove versions beyond the newest ``keep``, never the live one, the rollback target or a pinned one.
        Returns the removed versions (``dry_run``: those a prune would remove; nothing changes)."""
        from xylen.core import retention

        return retention.prune(self, name, keep, dry_run=dry_run)

    def summary(self, name: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        try:
            live = self.current(name)
        except BundleError as exc:  # listed, not fatal: `xylen models list` is how the user finds the damage
            live = None
            rows.append({"name": name, "version": POINTER, "live": False, "ok": False, "error": exc.message})
        pinned: set[str] | None
        try:
            pinned = self.pins(name)
        except BundleError as exc:  # listed like a damaged CURRENT; "pinned" is then unknown (None)
            pinned = None
            rows.append({"name": name, "version": "PINS.json", "live": False, "ok": False, "error": exc.message})
        for v in self.versions(name):
            try:
                m = self.manifest(name, v)
                auc = m.metrics.get("auc_mean")
                rows.append(
                    {
                        "name": name,
                        "version": v,
                        "live": bool(live and live.version == v),
                        "pinned": None if pinned is None else v in pinned,
                        "backend": m.backend,
                        "created_at": m.created_at,
                        "auc": auc,
                        "edge_vs_volatility": m.metrics.get("auc_edge_vs_volatility"),
                        "label": kind_of(m.label),
                        # the primary head's edge with its interval and verdict (None: no walk-forward with intervals)
                        "edge": _primary_edge(m.metrics),
                        "rows": m.training_window.rows if m.training_window else None,
                        "ok": True,
                    }
                )
            except BundleError as exc:
                rows.append(
                    {
                        "name": name,
                        "version": v,
                        "live": bool(live and live.version == v),
                        "pinned": None if pinned is None else v in pinned,
                        "ok": False,
                        "error": exc.message,
                    }
                )
        return rows


def _primary_edge(metrics: dict[str, Any]) -> dict[str, Any] | None:
    honesty = metrics.get("honesty")
    heads = honesty.get("heads") if isinstance(honesty, dict) else None
    if not (isinstance(heads, list) and heads and isinstance(heads[0], dict)):
        return None
    edge, verdict = heads[0].get("edge"), heads[0].get("verdict")
    if not isinstance(edge, dict):
        return None
    return {k: edge.get(k) for k in ("value", "low", "high")} | {"verdict": verdict}
