"""Retention and pins: which versions of a model the registry keeps, and removing the others safely.

A prune keeps the newest ``keep`` versions (by number), the live version, the rollback target (CURRENT's
``history[0]``) and every pinned one (``models/<name>/PINS.json``), and removes the rest. Versions are
immutable, so removing one is the only change a prune makes.

Pins change only by a compare-and-swap of PINS.json through the storage seam, like CURRENT.json: two pinners at
once both keep their pin. The ordering that keeps CURRENT and PINS from ever naming a removed version:

* a prune takes each version out of sight with ``storage.retire``, which re-reads CURRENT and PINS under their
  locks and moves the folder away (one rename) before releasing them;
* every swap of CURRENT or PINS ``require``s the folders it names (the new live version and rollback target, a
  new pin), checked under the same lock.

So a promotion, rollback or pin of a version being pruned either happens first (the prune sees it and keeps the
version) or finds the folder gone and changes nothing. A damaged CURRENT.json or PINS.json stops the prune of that
model with the reason: "no pins" read from a damaged file would delete pinned versions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from xylen.core.bundle import now_iso
from xylen.core.errors import BundleError, ConfigError, XylenError
from xylen.core.storage import Conflict, Missing

if TYPE_CHECKING:
    from xylen.core.registry import Registry

PINS = "PINS.json"
log = logging.getLogger("xylen.registry")
_CAS_RETRIES = 200


def check_keep(keep: int) -> int:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(
            f"--keep {keep!r} would keep no version of a model.",
            hint="keep at least 1 (XYLEN_KEEP_VERSIONS, default 10); the live version, the rollback target and "
            "pinned versions are kept on top of it.",
        )
    return keep


def _pins_key(name: str) -> str:
    return f"{name}/{PINS}"


def read_pins(reg: Registry, name: str) -> tuple[frozenset[str], str | None]:
    """The pinned versions and the token a compare-and-swap must expect (empty, None when no file exists).

    A damaged file raises BundleError: treating it as "no pins" would let a prune delete pinned versions."""
    from xylen.core.registry import check_name, check_version

    got = reg.storage.read_versioned(_pins_key(check_name(name)))
    if got is None:
        return frozenset(), None
    try:
        raw = orjson.loads(got.data)
        listed = raw["pinned"]
        if not isinstance(listed, list):
            raise TypeError(f"'pinned' is {type(listed).__name__}, not a list")
        pinned = frozenset(check_version(name, v) for v in listed)
    except (orjson.JSONDecodeError, KeyError, TypeError, BundleError) as exc:
        reason = exc.message if isinstance(exc, BundleError) else str(exc)
        raise BundleError(
            f"{reg.location + '/' + name + '/' + PINS!r} is unreadable ({reason[:200]}); its pins are unknown, so "
            f"nothing of model {name!r} is pruned.",
            hint=f'repair it (JSON like {{"pinned": ["v0003"]}}) or restore it from a backup; or delete it and pin '
            f"again what must stay: `xylen models pin {name} vNNNN`.",
        ) from None
    return pinned, got.token


def _encode(name: str, pinned: frozenset[str]) -> bytes:
    ordered = sorted(pinned, key=lambda v: int(v[1:]))
    return orjson.dumps({"name": name, "pinned": ordered, "updated_at": now_iso()}, option=orjson.OPT_INDENT_2)


def _no_version(reg: Registry, name: str, version: str) -> BundleError:
    known = ", ".join(reg.versions(name)) or "none"
    return BundleError(
        f"Model {name!r} has no version {version!r} (known: {known}).", hint=f"see `xylen models list {name}`."
    )


def _change_pins(reg: Registry, name: str, version: str, add: bool) -> bool:
    from xylen.core.registry import check_version

    check_version(name, version)
    for _ in range(_CAS_RETRIES):
        pinned, token = read_pins(reg, name)
        present = reg.has_version(name, version)
        if add and not present:
            raise _no_version(reg, name, version)
        if (version in pinned) == add:
            if not add and not present:  # neither pinned nor a version: a typo, not a no-op
                raise _no_version(reg, name, version)
            return False
        new = pinned | {version} if add else pinned - {version}
        try:
            # a pin requires its folder, checked under PINS's lock: a concurrent prune keeps it or we fail
            reg.storage.swap(_pins_key(name), _encode(name, new), token, require=[f"{name}/{version}"] if add else [])
        except Conflict:
            continue  # another pinner wrote meanwhile: apply ours on top of theirs
        except Missing:
            continue  # pruned between our look and the swap: the next look says so
        return True
    raise BundleError(
        f"Could not update {name!r}'s {PINS} after {_CAS_RETRIES} tries.", hint="many writers at once; retry."
    )


def pin(reg: Registry, name: str, version: str) -> bool:
    """Pin ``version``: no prune removes it. False if it was pinned already."""
    return _change_pins(reg, name, version, add=True)


def unpin(reg: Registry, name: str, version: str) -> bool:
    """Unpin ``version``; False if it was not pinned (a version that does not exist and is not pinned: error)."""
    return _change_pins(reg, name, version, add=False)


@dataclass(frozen=True)
class Plan:
    """What a prune of one model keeps and removes, and why."""

    name: str
    keep: int
    versions: tuple[str, ...]
    live: str | None
    rollback_target: str | None
    pinned: frozenset[str]
    remove: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "keep": self.keep,
            "versions": list(self.versions),
            "live": self.live,
            "rollback_target": self.rollback_target,
            "pinned": sorted(self.pinned, key=lambda v: int(v[1:])),
            "remove": list(self.remove),
        }


def _protected(reg: Registry, name: str) -> tuple[str | None, str | None, frozenset[str]]:
    try:
        ptr = reg.current(name)
    except BundleError as exc:
        raise BundleError(f"Nothing of model {name!r} is pruned: {exc.message}", hint=exc.hint) from None
    pinned, _ = read_pins(reg, name)
    if ptr is None:
        return None, None, pinned
    return ptr.version, (ptr.history[0] if ptr.history else None), pinned


def plan(reg: Registry, name: str, keep: int) -> Plan:
    """Decide, without changing anything, which versions a prune keeping ``keep`` would remove."""
    check_keep(keep)
    live, target, pinned = _protected(reg, name)
    versions = tuple(reg.versions(name))
    kept = {*versions[-keep:], live, target, *pinned}
    remove = tuple(v for v in versions if v not in kept)
    return Plan(name, keep, versions, live, target, pinned, remove)


def prune(reg: Registry, name: str, keep: int, *, dry_run: bool = False) -> list[str]:
    """Remove the versions of ``name`` beyond the newest ``keep``, never the live one, the rollback target or a
    pinned one; returns what was removed (with ``dry_run``: what would be, and nothing changes)."""
    p = plan(reg, name, keep)
    if dry_run:
        return list(p.remove)
    removed = execute(reg, p)
    # S3: what killed publishers left (Registry.clean_abandoned); after the prune and on its own, so that a failing
    # cleanup never stops old versions from being removed
    try:
        abandoned = reg.clean_abandoned(name)
    except XylenError as exc:
        log.warning("%s: abandoned uploads were not cleaned: %s", name, exc.message)
    else:
        if abandoned:
            log.info("%s: removed abandoned uploads %s", name, ", ".join(abandoned))
    return removed


def execute(reg: Registry, p: Plan, removed: list[str] | None = None) -> list[str]:
    """Remove the versions ``p`` lists, each only if it is still unprotected; appends each one to ``removed``
    as it goes (so that a caller reporting a failure halfway knows what is gone) and returns that list."""
    from xylen.core.registry import POINTER

    removed = [] if removed is None else removed
    if not p.remove:
        return removed
    reg.storage.clean_temp()  # what a killed prune (or publisher) left in the temp area
    guards = [f"{p.name}/{POINTER}", _pins_key(p.name)]
    for version in p.remove:

        def allowed(version: str = version) -> bool:
            # read again under the locks of CURRENT and PINS: a promotion, rollback or pin since the plan wins
            live, target, pinned = _protected(reg, p.name)
            return version not in {live, target, *pinned}

        retired = reg.storage.retire(f"{p.name}/{version}", guards=guards, allowed=allowed)
        if retired is not None:
            removed.append(version)
            reg.storage.purge(retired)
    return removed


# the retrain contract's order of severity when several models fail: internal > bundle > training > data > config
_SEVERITY = (1, 4, 5, 3, 2)


def prune_models(reg: Registry, names: list[str], keep: int, *, dry_run: bool = False) -> dict[str, Any]:
    """Prune each model in turn (a failing one stops only itself); the report `xylen models prune --json` prints.

    ``exit_code`` is 0, or the most severe error's code."""
    check_keep(keep)
    results: list[dict[str, Any]] = []
    for name in names:
        removed: list[str] = []
        row: dict[str, Any] = {
            "name": name,
            "removed": removed,
            "kept": [],
            "live": None,
            "rollback_target": None,
            "pinned": [],
            "abandoned": [],
            "error": None,
            "abandoned_error": None,
        }
        try:
            p = plan(reg, name, keep)
            row.update(live=p.live, rollback_target=p.rollback_target, pinned=p.to_dict()["pinned"])
            if dry_run:
                removed.extend(p.remove)
            else:
                execute(reg, p, removed)
            row["kept"] = [v for v in p.versions if v not in removed]
        except XylenError as exc:
            row["error"] = _error(exc)
        # S3: uploads killed publishers left, never committed (Registry.clean_abandoned): after the prune and on its
        # own, so that a failing cleanup never stops old versions from being removed; its failure is reported apart.
        # A model whose prune failed (a damaged CURRENT.json or PINS.json) is left whole.
        try:
            if row["error"] is None:
                row["abandoned"] = reg.clean_abandoned(name, dry_run=dry_run)
        except XylenError as exc:
            row["abandoned_error"] = _error(exc)
        results.append(row)
    codes = {r[k]["exit_code"] for r in results for k in ("error", "abandoned_error") if r[k]}
    worst = next((c for c in _SEVERITY if c in codes), max(codes, default=0))
    return {"keep": keep, "dry_run": dry_run, "exit_code": worst, "results": results}


def _error(exc: XylenError) -> dict[str, Any]:
    return {"exit_code": exc.exit_code, "message": exc.message, "hint": exc.hint}
