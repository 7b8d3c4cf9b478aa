"""What a loaded model is made of, in memory: the prebuilt payload of each group, the state of each
group (latest parse, what is served, how the last refresh went) and an immutable view of a model's
groups that a refresh replaces with one assignment. Also the parse record of a group: what the
cache keeps of a served group's parse so a restart can skip re-parsing it."""
from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field

from model_manager.artifacts import GroupSnapshot, Issue
from model_manager.clock import now_iso
from model_manager.heap import cyclic_gc_paused, release_free_memory
from model_manager.research import ResearchIndex, build_index, updated_index

RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(GroupSnapshot) if f.name != "model_json")


def snapshot_record(group: GroupSnapshot) -> dict:
    """A served group's parse as a JSON-able dict (everything but the model JSON)."""
    fields = {name: getattr(group, name) for name in RECORD_FIELDS}
    fields["issues"] = [i.to_dict() for i in group.issues]
    return fields


def snapshot_from_record(fields: dict) -> GroupSnapshot | None:
    """The snapshot `snapshot_record` described, or None when the record does not fit this release."""
    if set(fields) != set(RECORD_FIELDS):
        return None
    try:
        fields = {**fields, "signature": tuple(tuple(item) for item in fields["signature"]),
                  "issues": [Issue(**issue) for issue in fields["issues"]]}
        return GroupSnapshot(**fields)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class PayloadBytes:
    etag: str      # quoted strong ETag: sha256 of the uncompressed body
    gzip: bytes | memoryview  # served as they are; mapped from the version's blob file (see BlobStore.get)
    size: int      # uncompressed length
    version: int   # the group's version these bytes are (see versions.py)
    group_key: str
    file: str | None = None  # the blob file `gzip` is mapped from: the poll protocol sends it with sendfile


@dataclass(frozen=True)
class GroupState:
    """What is known and served for one group. `snapshot` is the latest parse; `served` the snapshot
    behind `payload` (the same object unless the latest parse failed: then `stale`)."""

    snapshot: GroupSnapshot
    served: GroupSnapshot | None
    payload: PayloadBytes | None
    refreshed_at: str
    outcome: str          # "loaded" | "updated" | "failed" | "kept_previous"
    message: str = ""
    generation: int = 1   # how many times this group has been parsed since the server started

    @property
    def stale(self) -> bool:
        return self.served is not None and self.served is not self.snapshot

    def refresh_info(self) -> dict:
        return group_object(self.snapshot.group_key, self.snapshot.symbol, self.snapshot.status,
                            self.payload.version if self.payload else None, stale=self.stale, refreshed_at=self.refreshed_at,
                            outcome=self.outcome, message=self.message, generation=self.generation)


def group_object(group_key: str, symbol: str, status: str, version: int | None, *, stale: bool | None = None,
                 refreshed_at: str | None = None, outcome: str | None = None, message: str | None = None,
                 generation: int | None = None) -> dict:
    """One group of the SPEC `model` object. What the caller cannot know stays null (the store alone,
    with no server serving, knows no read of the files)."""
    return {"group_key": group_key, "symbol": symbol, "status": status, "stale": stale, "refreshed_at": refreshed_at,
            "outcome": outcome, "message": message, "generation": generation, "version": version}


def model_object(name: str, path: str, registered_at: str, *, refreshed_at: str | None, group_count: int,
                 symbol_count: int, status: str | None, error: str | None, hold: dict | None,
                 groups: list[dict] | None = None) -> dict:
    """The SPEC `model` object (`groups`, when given, made by `group_object`)."""
    out = {"name": name, "path": path, "registered_at": registered_at, "refreshed_at": refreshed_at,
           "group_count": group_count, "symbol_count": symbol_count, "status": status, "error": error,
           "held": hold is not None, "hold": hold}
    if groups is not None:
        out["groups"] = groups
    return out


@dataclass(frozen=True)
class ModelView:
    """An immutable set of group states; a refresh swaps in a new view with one assignment. The
    research views (`research.ResearchIndex`) are built with it, so they cost a lookup per request."""

    groups: dict[str, GroupState]
    symbols: dict[str, list[str]]
    factor_union: list[str]
    refreshed_at: str | None
    research: ResearchIndex = field(default_factory=ResearchIndex)

    research_pending: bool = False  # `research` is not this view's yet: see `LoadedModel.researched`
    symbols_body: bytes | None = None  # GET …/symbols as JSON, built with the research index
    # the last view with its research index, while this one's is pending: its index is updated, not rebuilt
    research_base: ModelView | None = field(default=None, repr=False, compare=False)

    def symbols_list(self) -> list[dict]:
        """The `symbols` of GET /api/models/{name}/symbols (SPEC §2), sorted by symbol and group."""
        states = sorted(self.groups.values(), key=lambda s: (s.snapshot.symbol, s.snapshot.group_key))
        return [{**s.snapshot.summary(), "stale": s.stale} for s in states]

    @classmethod
    def build(cls, groups: dict[str, GroupState], refreshed_at: str | None,
              previous: ModelView | None = None, *, defer_research: bool = False) -> ModelView:
        """`previous`: the view being replaced; its research index is reused when no group's parse
        changed (a pin or a rollback changes only which payload is served), and stays pending when
        it was. With `defer_research`, the index is left pending for `LoadedModel.finish_research`
        (or the first research read): building it is O(groups × factors) (2.5 s at 5,000 groups),
        and new payloads should not wait for it."""
        symbols: dict[str, list[str]] = {}
        for key, state in groups.items():
            symbols.setdefault(state.snapshot.symbol, []).append(key)
        union = sorted({f for state in groups.values() for f in state.snapshot.factors})
        if previous is not None and _same_parses(previous.groups, groups):
            return cls(groups, symbols, union, refreshed_at, previous.research,
                       research_pending=previous.research_pending, symbols_body=previous.symbols_body,
                       research_base=previous.research_base)
        base = previous if previous is None or not previous.research_pending else previous.research_base
        view = cls(groups, symbols, union, refreshed_at, research_pending=True, research_base=base)
        return view if defer_research else view.with_research()

    def with_research(self) -> ModelView:
        """This view with its own research index and prebuilt symbol list (itself when it has them)."""
        if not self.research_pending:
            return self
        base = self.research_base
        research = updated_index(base.research, _pairs(base.groups), _pairs(self.groups)) if base is not None else None
        whole = research is None
        with cyclic_gc_paused():
            body = json.dumps(self.symbols_list(), separators=(",", ":"), allow_nan=False).encode()
            if whole:
                research = _research(self.groups)
            view = dataclasses.replace(self, research=research, research_pending=False, symbols_body=body,
                                       research_base=None)
        if whole:  # (an update allocates little)
            release_free_memory()  # what the load and the index build allocated on the way, now free
        return view


def _research(groups: dict[str, GroupState]) -> ResearchIndex:
    ordered = sorted(groups.values(), key=lambda s: (s.snapshot.symbol, s.snapshot.group_key))
    return build_index((s.snapshot, s.served) for s in ordered)


def _pairs(groups: dict[str, GroupState]) -> dict[str, tuple[GroupSnapshot, GroupSnapshot | None]]:
    return {key: (state.snapshot, state.served) for key, state in groups.items()}


def _same_parses(a: dict[str, GroupState], b: dict[str, GroupState]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].snapshot is b[k].snapshot and a[k].served is b[k].served for k in a)


@dataclass
class LoadedModel:
    name: str
    path: str
    registered_at: str
    view: ModelView = field(default_factory=lambda: ModelView({}, {}, [], None))
    error: str | None = None
    hold: dict | None = None  # {"held_at", "reason"} while held (see versions.py)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)          # held by a (long) re-read
    install_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # held only to swap states
    research_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one index build at a time

    def install(self, groups: dict[str, GroupState], *, defer_research: bool = False) -> None:
        """Swap in a new set of group states (readers see the old or the new, never a mix). With
        `defer_research`, the research index is built by `finish_research()` or the first reader."""
        self.view = ModelView.build(groups, now_iso(), self.view, defer_research=defer_research)

    def finish_research(self) -> ModelView:
        """Build the research index a deferred install left pending — outside the install lock (it can
        take a while), swapped in only if no other install (a pin, say) came meanwhile; else again.
        Returns the view with its index."""
        with self.research_lock:  # a reader arriving meanwhile waits for this build, not a second one
            while True:
                view = self.view
                if not view.research_pending:
                    return view
                done = view.with_research()
                with self.install_lock:
                    if self.view is view:
                        self.view = done
                        return done

    def researched(self) -> ModelView:
        """The view with its research index (and prebuilt symbol list), building it first when an
        install left it pending. Blocking: for worker threads, not the event loop."""
        view = self.view
        return view if not view.research_pending else self.finish_research()

    @property
    def groups(self) -> dict[str, GroupState]:
        return self.view.groups

    @property
    def symbols(self) -> dict[str, list[str]]:
        return self.view.symbols

    @property
    def factor_union(self) -> list[str]:
        return self.view.factor_union

    @property
    def refreshed_at(self) -> str | None:
        return self.view.refreshed_at

    @property
    def held(self) -> bool:
        return self.hold is not None

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        statuses = {s.snapshot.status for s in self.groups.values()}
        return "error" if "error" in statuses else "warning" if "warning" in statuses else "ok"

    def to_dict(self, *, with_groups: bool = True) -> dict:
        view = self.view
        return model_object(self.name, self.path, self.registered_at, refreshed_at=view.refreshed_at,
                            group_count=len(view.groups), symbol_count=len(view.symbols), status=self.status,
                            error=self.error, hold=self.hold,
                            groups=[s.refresh_info() for s in view.groups.values()] if with_groups else None)
