"""Ensembles in the server: a ``Live`` whose ``predict_row`` combines its members' ``predict_row``s, and the holder's
hook that keeps every ensemble built on the member versions it publishes.

An ensemble version is loaded like any bundle (verified in a child with every member at the versions its manifest
names, core/ensemble.py): that gives its *template*, a working ``Live`` over those versions. What a server publishes
is the template re-built over the members it serves: a member given without @version is the member's own live
``Live`` (loaded and verified by the holder like any model, even when --model does not name it), a member given
with @version is the template's. When the holder publishes any model, ``Ensembles.rebind`` re-builds every ensemble
that follows it (nested ones after their members) and returns the new ``live`` dict holding the model AND those
ensembles: the holder assigns it once, so no request sees a new member beside an old ensemble, or an ensemble
half over old and half over new members.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from xylen.core.ensemble import EnsembleBundle, incompatible, row_aggregator
from xylen.serve.fastrow import RowPredictor
from xylen.serve.holder import Live, _warm

log = logging.getLogger("xylen.serve")


def is_ensemble(live: Live) -> bool:
    return isinstance(live.bundle, EnsembleBundle)


def warm_ensemble(name: str, bundle: EnsembleBundle) -> Live:
    """The template: every member warmed at the version ``bundle`` loaded it with (on its fast row path)."""
    members = tuple(warm_ensemble(b.name, b) if isinstance(b, EnsembleBundle) else _warm(b.name, b)
                    for b in bundle.members)
    return compose(name, bundle, members)


def compose(name: str, template: EnsembleBundle, members: Sequence[Live]) -> Live:
    """The ensemble ``template`` over these member ``Live``s (one per spec member, in order)."""
    bundle = template.with_members([m.bundle for m in members])
    weights, how = bundle.weights, bundle.spec.aggregation
    extra: list[tuple[str, RowPredictor | None]] = []
    for field in list(bundle.outputs())[1:]:  # the order _warm gives a single model's extra
        fns = [dict(m.extra).get(field) for m in members]
        if all(fn is None for fn in fns):
            extra.append((field, None))  # the primary's own field (up_probability of a direction label)
        else:
            extra.append((field, row_aggregator([fn or m.predict_row for fn, m in zip(fns, members)], weights, how)))
    used = ", ".join(f"{m.name} {m.version}" for m in members)
    return Live(
        name=name,
        version=bundle.version,
        bundle=bundle,
        predict_row=row_aggregator([m.predict_row for m in members], weights, how),
        predict_path=f"ensemble {how} of {used}",
        loaded_at=time.time(),
        interval=bundle.manifest.interval,
        exchange=bundle.manifest.exchange,
        extra=tuple(extra),
        who=f"ensemble {name!r} (feature set {bundle.manifest.feature_set.version})",
        members=tuple(members),
    )


class Ensembles:
    """The holder's ensembles: each one's template, and ``rebind`` (see the module docstring). Called under the
    holder's writer lock only."""

    def __init__(self, *, follow: bool = True) -> None:
        # follow=False (MODEL_PATH: no registry is watched): an ensemble serves its manifest's member versions
        self.follow = follow
        self.templates: dict[str, Live] = {}
        self._said: dict[str, str] = {}  # the last reason logged per ensemble: a start-up of many models says it once

    def needed(self) -> list[str]:
        """The members the served ensembles follow: the holder loads and watches them like named models."""
        out: dict[str, None] = {}
        for t in list(self.templates.values()):
            out.update(dict.fromkeys(sorted(self._followers(t))))
        return list(out)

    def _followers(self, template: Live) -> set[str]:
        assert isinstance(template.bundle, EnsembleBundle)
        out: set[str] = set()
        for ref, m in zip(template.bundle.spec.members, template.members):
            if ref.version is None:
                out.add(ref.name)
            elif is_ensemble(m):
                out |= self._followers(m)  # a pinned ensemble's own followers are the live ones too
        return out

    def rebind(self, live_map: dict[str, Live], live: Live, problems: dict[str, str]) -> dict[str, Live]:
        """A new ``live`` dict: ``live_map`` with ``live`` and every ensemble re-built on it. ``problems`` gets why an
        ensemble waits (a member not loaded yet) or keeps its members (a member version it cannot feed)."""
        new = dict(live_map)
        if is_ensemble(live) and self.follow:
            self.templates[live.name] = live  # published once its members are there (below)
        else:
            new[live.name] = live
            self.templates.pop(live.name, None)  # a name that now serves a single model
        if not self.templates:
            return new
        deps = {n: self._followers(t) for n, t in self.templates.items()}
        todo = {n for n, t in self.templates.items() if n == live.name or new.get(n) is None
                or new[n].version != t.version}
        grown = True
        while grown:  # and every ensemble that follows one being re-built, however deep
            more = {n for n, d in deps.items() if n not in todo and (live.name in d or d & todo)}
            todo |= more
            grown = bool(more)
        while todo:
            ready = sorted(n for n in todo if not deps[n] & todo)  # members first
            if not ready:
                for n in todo:
                    problems[n] = f"its members form a cycle ({', '.join(sorted(todo))}); roll one of them back"
                break
            for n in ready:
                todo.discard(n)
                got = self.bind(self.templates[n], new, problems)
                if isinstance(got, str):
                    problems[n] = got
                    if self._said.get(n) != got:
                        # waiting for a member that loads is routine (start-up); keeping old members is not
                        level = logging.INFO if got.startswith("waiting") else logging.WARNING
                        log.log(level, "ensemble %s %s: %s", n, self.templates[n].version, got)
                        self._said[n] = got
                else:
                    new[n] = got
                    problems.pop(n, None)
                    self._said.pop(n, None)
        return new

    def bind(self, template: Live, live_map: dict[str, Live], problems: dict[str, str]) -> Live | str:
        """``template`` over the members ``live_map`` serves (a follower) or it holds (a pinned one); else why not."""
        assert isinstance(template.bundle, EnsembleBundle)
        members: list[Live] = []
        for ref, held in zip(template.bundle.spec.members, template.members):
            if ref.version is not None:
                got: Live | str = self.bind(held, live_map, problems) if is_ensemble(held) else held
            else:
                got = live_map.get(ref.name) or (
                    f"waiting for its member {ref.name!r} ({problems.get(ref.name, 'loading')})")
            if isinstance(got, str):
                return got
            if got is not held:
                why = incompatible(template.bundle.manifest, [got.bundle.manifest])
                if why:
                    return f"keeps its members: {why}"
            members.append(got)
        return compose(template.name, template.bundle, members)
