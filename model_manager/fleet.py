"""The fleet (SPEC §7): which client — an API key's name, or `session` — last received (200) or
confirmed (304) which version of each group, when, and from where.

`record` is on the payload path, so it is a dict assignment and nothing else: no lock, no I/O.
`flush` writes what changed to the store in one transaction (the service calls it every second or
two), so the view survives restarts and every server process sharing the data dir contributes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

from model_manager.clock import iso_from_timestamp
from model_manager.store import Store

Key = tuple[str, str, str]  # (model, client, group_key)


@dataclass(frozen=True)
class LiveGroup:
    """A group as the fleet view compares it: its symbol, the version it serves (None: nothing), and
    when each of its live periods began (unix seconds, oldest first; may be empty)."""

    symbol: str
    version: int | None
    live_starts: tuple[float, ...] = ()

    def changed_after(self, moment: float) -> float | None:
        """When the live version first changed after `moment` (a client's last sighting): the start
        of the first live period after it, else of the current one."""
        later = [t for t in self.live_starts if t > moment]
        return later[0] if later else (self.live_starts[-1] if self.live_starts else None)


class Sighting(NamedTuple):  # a tuple: made on the payload path, it must be cheap
    version: int
    address: str | None
    fetched_at: float | None
    confirmed_at: float | None


# Several processes flush sightings of the same client (the workers of one server): the newest
# sighting wins, and two of the same version keep the latest fetch and the latest confirmation.
_LAST = "max(coalesce({0}.fetched_at, 0), coalesce({0}.confirmed_at, 0))"
_KEEP = "CASE WHEN excluded.version = fleet.version THEN nullif(max(coalesce(excluded.{0}, 0), coalesce(fleet.{0}, 0)), 0) " \
        "ELSE excluded.{0} END"
_UPSERT = ("INSERT INTO fleet (model, client, group_key, version, address, fetched_at, confirmed_at) "
           "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, client, group_key) DO UPDATE SET "
           f"version = excluded.version, address = excluded.address, fetched_at = {_KEEP.format('fetched_at')}, "
           f"confirmed_at = {_KEEP.format('confirmed_at')} WHERE {_LAST.format('excluded')} >= {_LAST.format('fleet')}")


class Fleet:
    def __init__(self, store: Store):
        self.store = store
        self._seen: dict[Key, Sighting] = {}
        self._dirty: dict[Key, Sighting] = {}

    def record(self, model: str, client: str, group_key: str, version: int, address: str | None, confirmed: bool) -> None:
        """A payload answer: 200 (`confirmed=False`) or 304 (`confirmed=True`) of `version`. On the
        payload path: a tuple and two dict assignments."""
        key = (model, client, group_key)
        now = time.time()
        old = self._seen.get(key)
        same = old is not None and old.version == version
        sighting = Sighting(version, address, old.fetched_at if same else None, now) if confirmed else \
            Sighting(version, address, now, old.confirmed_at if same else None)
        self._seen[key] = self._dirty[key] = sighting

    def flush(self) -> int:
        """Write what changed since the last flush (blocking); returns how many rows."""
        dirty, self._dirty = self._dirty, {}
        if not dirty:
            return 0
        with self.store.transaction() as db:
            db.executemany(
                _UPSERT,
                [(*key, s.version, s.address, s.fetched_at, s.confirmed_at) for key, s in dirty.items()])
        return len(dirty)

    def load(self, model: str | None = None) -> None:
        """Read what the store knows (at start; sightings already in memory win), of one model or all."""
        where, args = (" WHERE model = ?", (model,)) if model is not None else ("", ())
        rows = self.store.query("SELECT model, client, group_key, version, address, fetched_at, confirmed_at FROM fleet" + where, args)
        for name, client, group_key, version, address, fetched, confirmed in rows:
            self._seen.setdefault((name, client, group_key), Sighting(version, address, fetched, confirmed))

    def merged(self, model: str) -> Fleet:
        """A model's sightings as every process sharing the store has them — the workers of one
        server — after flushing this process's own (blocking)."""
        self.flush()
        return Fleet.stored(self.store, model)

    @classmethod
    def stored(cls, store: Store, model: str | None = None) -> Fleet:
        """The fleet as the store has it: what every server sharing the data dir flushed (offline)."""
        fleet = cls(store)
        fleet.load(model)
        return fleet

    def forget_model(self, model: str) -> None:
        """An unregistered model: its sightings go, from memory and the store."""
        self.forget_memory(model)
        with self.store.transaction() as db:
            db.execute("DELETE FROM fleet WHERE model = ?", (model,))

    def forget_memory(self, model: str) -> None:
        """A model unregistered through another process: what this one saw of it is not flushed."""
        for seen in (self._seen, self._dirty):
            for key in [k for k in seen if k[0] == model]:
                seen.pop(key, None)

    def view(self, model: str, groups: dict[str, LiveGroup]) -> dict:
        """The SPEC fleet object of a model (`groups`: its groups and what each serves). Added to the
        SPEC fields: per client `behind` (how many groups), per group `behind_since` (when the live
        version moved past the client's), and `groups`, every group with its live version, so a
        reader can tell "never fetched" from "current"."""
        clients: dict[str, dict] = {}
        for (name, client, group_key), seen in sorted(self._seen.items()):
            if name != model or group_key not in groups:
                continue
            live = groups[group_key]
            last = max(t for t in (seen.fetched_at, seen.confirmed_at) if t is not None)
            entry = clients.setdefault(client, {"client": client, "address": seen.address, "last_seen": last, "groups": []})
            if last >= entry["last_seen"]:
                entry["last_seen"], entry["address"] = last, seen.address
            behind = live.version is not None and seen.version != live.version
            entry["groups"].append({"symbol": live.symbol, "group_key": group_key, "version": seen.version,
                                    "live_version": live.version, "behind": behind,
                                    "behind_since": iso_from_timestamp(live.changed_after(last)) if behind else None,
                                    "fetched_at": iso_from_timestamp(seen.fetched_at),
                                    "confirmed_at": iso_from_timestamp(seen.confirmed_at)})
        out = sorted(clients.values(), key=lambda c: c["client"])
        for entry in out:
            entry["last_seen"] = iso_from_timestamp(entry["last_seen"])
            entry["behind"] = sum(g["behind"] for g in entry["groups"])
        listed = [{"symbol": g.symbol, "group_key": key, "live_version": g.version,
                   "live_since": iso_from_timestamp(g.live_starts[-1]) if g.live_starts else None}
                  for key, g in sorted(groups.items(), key=lambda item: (item[1].symbol, item[0]))]
        return {"model_name": model, "clients": out, "groups": listed}

    def behind(self, live: dict[tuple[str, str], int]) -> int:
        """How many clients are behind the live version on some group ({(model, group_key): live})."""
        late = {(m, c) for (m, c, g), s in list(self._seen.items()) if (m, g) in live and s.version != live[(m, g)]}
        return len({c for _, c in late})


def fleet_cells(report: dict) -> list[dict]:
    """Every client × group of a fleet object, in order: the client's sighting with `state` "current",
    "behind" or "never" (a group the client has not fetched; version and times None)."""
    cells = []
    for client in report["clients"]:
        seen = {g["group_key"]: g for g in client["groups"]}
        for group in report["groups"]:
            got = seen.get(group["group_key"])
            base = {"client": client["client"], "address": client["address"], "symbol": group["symbol"],
                    "group_key": group["group_key"], "live_version": group["live_version"]}
            if got is None:
                cells.append({**base, "state": "never", "version": None, "behind_since": None,
                              "fetched_at": None, "confirmed_at": None})
            else:
                cells.append({**base, "state": "behind" if got["behind"] else "current", "version": got["version"],
                              "behind_since": got["behind_since"], "fetched_at": got["fetched_at"],
                              "confirmed_at": got["confirmed_at"]})
    return cells
