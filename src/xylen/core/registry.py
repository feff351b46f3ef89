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
import hashlib
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
from xylen.core.storage import Conflict, LocalStorage, Missing, Storage, storage_error

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


def open_registry(settings: Any, *, verify: Verifier | None = None) -> Registry:
    """The registry the settings name: XYLEN_MODELS_URL (s3:// or a folder), else XYLEN_HOME/models."""
    return Registry(settings.models_location, verify=verify, endpoint_url=settings.s3_endpoint_url,
                    cache=settings.home / "cache")


class Registry:
    """The registry at ``root``: a local folder, or ``s3://bucket/prefix`` (same keys, through S3Storage).

    On S3, a version that must be read as files (verification in a child, loading for serving, a report) is
    downloaded once into a local cache (``<cache>/registry-<hash of the URL>/<name>/<version>``), keyed by the
    sha256 of its manifest.json and checked (size, sha256 of every artifact) before it is used; ``root`` is then
    that local mirror and ``location`` the URL."""

    def __init__(self, root: str | Path, *, verify: Verifier | None = None, endpoint_url: str | None = None,
                 cache: Path | None = None) -> None:
        self.storage: Storage
        self._verify = verify or _verify_default
        self.remote = isinstance(root, str) and root.startswith("s3://")
        if self.remote:
            from xylen.core.storage_s3 import S3Storage

            url = str(root).rstrip("/")
            tag = hashlib.sha256(url.encode()).hexdigest()[:12]
            cache = cache or Path(os.environ.get("XYLEN_HOME") or "~/.xylen").expanduser() / "cache"
            base = cache / f"registry-{tag}"
            self.location = url
            self.root = base / "bundles"
            endpoint = endpoint_url or os.environ.get("XYLEN_S3_ENDPOINT_URL") or None
            self.storage = S3Storage(url, scratch=base / "scratch", endpoint_url=endpoint)
        else:
            self.root = Path(root)
            self.location = str(self.root)
            self.storage = LocalStorage(self.root)

    # -- reading -------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if self.remote:
            return [n for n in self.storage.folders() if _NAME_RE.fullmatch(n)
                    and (self.versions(n) or self.storage.token(self._pointer_key(n)) is not None)]
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME_RE.fullmatch(p.name) and (self.versions(p.name) or (p / POINTER).exists())
        )

    def live_names(self) -> list[str]:
        """Models that have a live version (a CURRENT pointer): one listing of the root and one stat per model (a
        server asks every poll interval; names() would also list each model's versions). On S3: one listing and
        one HEAD per model."""
        if self.remote:
            return sorted(self.pointer_tokens())
        try:
            entries = list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            e.name for e in entries
            if _NAME_RE.fullmatch(e.name) and e.is_dir() and os.path.exists(os.path.join(e.path, POINTER))
        )

    def pointer_tokens(self) -> dict[str, str]:
        """name -> the version token (S3: ETag) of its CURRENT.json, for every model with one: what a replica
        compares every poll to notice a promotion (one listing, then one HEAD per model)."""
        out = {}
        for n in self.storage.folders():
            if _NAME_RE.fullmatch(n):
                tok = self.storage.token(self._pointer_key(n))
                if tok is not None:
                    out[n] = tok
        return out

    def versions(self, name: str) -> list[str]:
        check_name(name)
        if self.remote:
            found = self.storage.trees(name)  # published (committed) trees only
        else:
            folder = self.root / name
            if not folder.is_dir():
                return []
            found = [p.name for p in folder.iterdir() if p.is_dir()]
        return sorted((v for v in found if _VERSION_RE.fullmatch(v)), key=lambda v: int(v[1:]))

    def has_version(self, name: str, version: str) -> bool:
        """Whether ``version`` is a published version of ``name`` (S3: one HEAD, nothing downloaded)."""
        return self.storage.has_tree(f"{check_name(name)}/{check_version(name, version)}")

    def path(self, name: str, version: str) -> Path:
        """The local folder of a version (S3: downloaded into the cache first; absent if there is no such version)."""
        folder = self.root / check_name(name) / check_version(name, version)
        if self.remote:
            self._fetch_with_members(name, version, set())
        return folder

    def _fetch_with_members(self, name: str, version: str, seen: set[tuple[str, str]]) -> None:
        """``_fetch`` the version, and when it is an ensemble every member version its manifest names (and theirs):
        an ensemble is verified and loaded from the local mirror (core/ensemble.py looks its members up beside it),
        so they must be there, each downloaded and checked like any version."""
        if (name, version) in seen:
            return
        seen.add((name, version))
        folder = self.root / name / version
        self._fetch(name, version, folder)
        try:
            manifest = read_manifest(folder)
        except BundleError:
            return  # absent or unreadable: the caller reports it as for a local registry
        if manifest.backend != "ensemble":
            return
        from xylen.core.ensemble import resolved_members

        try:
            members = [(check_name(str(m["name"])), check_version(str(m["name"]), str(m["version"])))
                       for m in resolved_members(manifest)]
        except (BundleError, ConfigError):
            return  # a damaged manifest: loading the ensemble refuses it with the reason
        for member, member_version in members:
            self._fetch_with_members(member, member_version, seen)

    def _fetch(self, name: str, version: str, folder: Path) -> None:
        """Make ``folder`` a verified local copy of the S3 version, keyed by the sha256 of its manifest.json: an
        up-to-date copy is reused; another one (a version number reused after a prune) is replaced."""
        from xylen.core.storage_s3 import S3Storage

        assert isinstance(self.storage, S3Storage)
        got = self.storage.read_versioned(f"{name}/{version}/manifest.json")
        if got is None or not self.storage.has_tree(f"{name}/{version}"):
            return  # callers report "no such version" as for a local registry
        digest = hashlib.sha256(got.data).hexdigest()
        stamp = folder / ".manifest-sha256"
        with contextlib.suppress(OSError):
            if stamp.read_text() == digest and (folder / "manifest.json").read_bytes() == got.data:
                return
        staging = self.storage.temp_dir()
        try:
            self.storage.download_tree(f"{name}/{version}", staging)
            if hashlib.sha256((staging / "manifest.json").read_bytes()).hexdigest() != digest:
                raise BundleError(f"{self.location}/{name}/{version} changed while it was downloaded.",
                                  hint="versions are immutable; check what else writes to this bucket.")
            verify_artifact(staging, read_manifest(staging))  # size + sha256 of every artifact
            (staging / ".manifest-sha256").write_text(digest)
            folder.parent.mkdir(parents=True, exist_ok=True)
            if folder.exists():
                old = self.storage.temp_dir()
                os.rename(folder, old / "old")
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.rename(staging, folder)
            except OSError:
                if not folder.is_dir():  # another process of this host fetched it at the same moment: fine
                    raise
        except OSError as exc:
            raise storage_error(exc, folder) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

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
                f"{self.location + '/' + name + '/' + POINTER!r} is unreadable ({str(exc)[:200]}).",
                hint=f"promote a version again: `xylen models promote {name} vNNNN` (the damaged file is kept).",
            ) from None
        return ptr, got.token

    def current(self, name: str) -> Pointer | None:
        return self._read_pointer(name)[0]

    def current_path(self, name: str) -> Path:
        ptr = self.current(name)
        if ptr is None:
            raise BundleError(
                f"Model {name!r} has no live version in {self.location!r}.",
                hint="train one with `xylen train`, or promote one with `xylen models promote`.",
            )
        return self.path(name, ptr.version)

    def manifest(self, name: str, version: str) -> Manifest:
        if self.remote:  # the manifest alone, never the whole bundle (`xylen models list` reads every version's)
            got = self.storage.read_versioned(f"{check_name(name)}/{check_version(name, version)}/manifest.json")
            if got is not None and self.has_version(name, version):
                return _parse_manifest(got.data, f"{self.location}/{name}/{version}/manifest.json")
        folder = self.root / check_name(name) / check_version(name, version)
        if self.remote or not folder.is_dir():
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
                    f"No model named {name[:80]!r} in {self.location!r} (known: {', '.join(names) or 'none'}).",
                    hint="see `xylen models list`, or train one with `xylen train`.",
                )
            return name
        if len(names) == 1:
            return names[0]
        if not names:
            raise BundleError(f"The registry {self.location!r} holds no models.", hint="train one with `xylen train`.")
        raise ConfigError(f"Several models exist ({', '.join(names)}); say which one.", hint="pass the model name.")

    # -- writing -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Path]:
        """A private folder to build a bundle in (invisible to every reader); removed if the block fails."""
        check_name(name)
        if not self.remote and self.root.exists() and not self.root.is_dir():
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
        tried = 0
        for _ in range(_CAS_RETRIES):
            existing = self.versions(name)
            # past a number another writer claimed without publishing yet (S3: its claim comes before its files)
            number = max(int(existing[-1][1:]) + 1 if existing else 1, tried + 1)
            tried = number
            version = f"v{number:04d}"
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
        existed = self.has_version(name, version)
        try:
            manifest = self.verify(name, version)
        except BundleError:
            if existed and not self.has_version(name, version):  # a prune removed it while it was checked
                raise self._pruned(name, version) from None
            raise

        def change(old: Pointer | None) -> Pointer:
            if not self.has_version(name, version):
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
        present = set(self.versions(name))
        return tuple(v for v in history if v in present)[:HISTORY_LIMIT]

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

    def clean_abandoned(self, name: str, *, dry_run: bool = False, grace_s: float | None = None) -> list[str]:
        """The versions of ``name`` that killed publishers left half-uploaded on S3 (claimed, never committed, no
        write for the grace period, core/storage_s3.py CLAIM_GRACE_S): removed, objects then claim, so the number is
        free again (``dry_run``: listed, nothing changes). A local registry has none: a publisher stages its bundle
        in the temp area, where a killed one's folder is removed by the next writer's ``clean_temp``."""
        if not self.remote:
            return []
        from xylen.core.storage_s3 import S3Storage

        assert isinstance(self.storage, S3Storage)
        trees = self.storage.clean_abandoned(check_name(name), dry_run=dry_run, grace_s=grace_s)
        return sorted((t.rsplit("/", 1)[-1] for t in trees), key=lambda v: (len(v), v))

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


def _parse_manifest(raw: bytes, where: str) -> Manifest:
    try:
        return Manifest.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"{where!r} is not valid JSON ({exc}).", hint="the bundle is corrupt; roll back.") from None
    except ValueError as exc:
        raise BundleError(f"{where!r} is not a valid manifest ({str(exc)[:300]}).",
                          hint="the bundle is corrupt; roll back.") from None


def _primary_edge(metrics: dict[str, Any]) -> dict[str, Any] | None:
    honesty = metrics.get("honesty")
    heads = honesty.get("heads") if isinstance(honesty, dict) else None
    if not (isinstance(heads, list) and heads and isinstance(heads[0], dict)):
        return None
    edge, verdict = heads[0].get("edge"), heads[0].get("verdict")
    if not isinstance(edge, dict):
        return None
    return {k: edge.get(k) for k in ("value", "low", "high")} | {"verdict": verdict}
