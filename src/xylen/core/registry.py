"""The model registry: immutable bundle folders per model name, and an atomically replaced CURRENT pointer.

Layout (under XYLEN_HOME/models)::

    btcusdt-5m/v0001/{model.txt, manifest.json, report.html, report/*.png}
    btcusdt-5m/CURRENT.json     {"version": "v0002", "sha256": "...", "promoted_at": "...", "history": ["v0001"]}
    btcusdt-5m/.staging-*/      a bundle being written; never listed, removed on failure

A bundle becomes visible only by one directory rename, and goes live only by one file rename (temp +
fsync + rename), so an interrupted write at any point leaves CURRENT naming a complete, verified bundle.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from xylen.core.bundle import Manifest, fsync_dir, now_iso, read_manifest, verify_artifact, write_durably
from xylen.core.errors import BundleError, ConfigError

POINTER = "CURRENT.json"
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HISTORY_LIMIT = 50


def model_name(symbol: str, interval: str) -> str:
    return f"{symbol.lower()}-{interval}"


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"Model name {name!r} is not allowed.",
            hint="use lowercase letters, digits, '.', '_' and '-', like btcusdt-5m.",
        )
    return name


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


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME_RE.match(p.name) and (self.versions(p.name) or (p / POINTER).exists())
        )

    def versions(self, name: str) -> list[str]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            (p.name for p in folder.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)), key=lambda v: int(v[1:])
        )

    def path(self, name: str, version: str) -> Path:
        return self.root / name / version

    def current(self, name: str) -> Pointer | None:
        path = self.root / name / POINTER
        try:
            raw = orjson.loads(path.read_bytes())
            return Pointer(
                name=name,
                version=str(raw["version"]),
                sha256=str(raw["sha256"]),
                promoted_at=str(raw.get("promoted_at", "")),
                history=tuple(raw.get("history", ())),
            )
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise BundleError(
                f"{str(path)!r} is unreadable ({exc}).",
                hint=f"promote a version again: `xylen models promote {name} vNNNN`.",
            ) from None

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
                    f"No model named {name!r} in {str(self.root)!r} (known: {', '.join(names) or 'none'}).",
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
        """A hidden folder to build a bundle in; removed if the block fails."""
        check_name(name)
        parent = self.root / name
        try:
            parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
        except OSError as exc:
            raise ConfigError(
                f"Cannot write to the model registry {str(self.root)!r}: {exc.strerror}.",
                hint="set XYLEN_HOME to a writable folder or fix its permissions.",
            ) from None
        try:
            yield staging
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def publish(self, name: str, staging: Path) -> str:
        """Make a staged bundle visible as the next version (one directory rename). Returns the version."""
        for f in staging.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(staging)
        for _ in range(100):
            existing = self.versions(name)
            version = f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"
            manifest_path = staging / "manifest.json"
            data = orjson.loads(manifest_path.read_bytes())
            if data.get("version") != version:
                data["version"] = version
                write_durably(manifest_path, orjson.dumps(data, option=orjson.OPT_INDENT_2))
            target = self.path(name, version)
            try:
                os.rename(staging, target)  # fails if another writer took this number first
            except OSError:
                continue
            fsync_dir(target.parent)
            return version
        raise BundleError(f"Could not allocate a version for {name!r}.", hint="another writer is racing; retry.")

    def promote(self, name: str, version: str, *, now: str | None = None) -> Pointer:
        """Point CURRENT at ``version`` after verifying its manifest and artifact hash."""
        folder = self.path(name, version)
        manifest = self.manifest(name, version)
        verify_artifact(folder, manifest)
        old = self.current(name)
        history: tuple[str, ...] = ()
        if old is not None and old.version != version:
            history = (old.version, *old.history)[:HISTORY_LIMIT]
        elif old is not None:
            history = old.history
        ptr = Pointer(
            name=name, version=version, sha256=manifest.artifact.sha256, promoted_at=now or now_iso(), history=history
        )
        write_durably(self.root / name / POINTER, ptr.to_json())
        return ptr

    def rollback(self, name: str, *, now: str | None = None) -> Pointer:
        """Make the previous live version live again, in one step."""
        old = self.current(name)
        if old is None or not old.history:
            raise BundleError(
                f"Model {name!r} has no previous live version to roll back to.",
                hint=f"promote a specific version: `xylen models promote {name} vNNNN`.",
            )
        target, rest = old.history[0], old.history[1:]
        folder = self.path(name, target)
        verify_artifact(folder, self.manifest(name, target))
        ptr = Pointer(
            name=name,
            version=target,
            sha256=self.manifest(name, target).artifact.sha256,
            promoted_at=now or now_iso(),
            history=rest,
        )
        write_durably(self.root / name / POINTER, ptr.to_json())
        return ptr

    def summary(self, name: str) -> list[dict[str, Any]]:
        live = self.current(name)
        rows = []
        for v in self.versions(name):
            try:
                m = self.manifest(name, v)
                auc = m.metrics.get("auc_mean")
                rows.append(
                    {
                        "name": name,
                        "version": v,
                        "live": bool(live and live.version == v),
                        "backend": m.backend,
                        "created_at": m.created_at,
                        "auc": auc,
                        "edge_vs_volatility": m.metrics.get("auc_edge_vs_volatility"),
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
                        "ok": False,
                        "error": exc.message,
                    }
                )
        return rows
