"""Change notifications inside one server process (SPEC §8): the event stream's buffer and the long
poll's wake-ups.

`EventBus` keeps the last `keep` events of every model in one ring buffer and hands new ones to the
subscribers of their model (each an asyncio queue). `ChangeWaiters` wakes the requests waiting for a
group's live payload to change. Both are fed from the registry's worker threads and consumed on the
event loop: publishing is thread-safe and costs nothing when nobody listens, and a waiting request
is a parked future — no thread, no polling.

Event ids are the time of the event in milliseconds (one more than the last id when two fall in the
same millisecond), so they grow across restarts — a client reconnecting with the `Last-Event-ID` of an
earlier process gets every event of this one — and mean the same in every worker of a server: a
client that reconnects to another worker gets what that worker published from `replay_margin`
milliseconds before its last event on (set for several workers: a change it already had may come
again; one that another worker published a moment earlier is not missed).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

KINDS = ("version", "status", "model")


@dataclass(frozen=True)
class Event:
    id: int
    model: str
    kind: str    # "version" | "status" | "model"
    data: dict


class EventBus:
    """The last `keep` events, and the live subscribers of each model."""

    def __init__(self, keep: int = 1000, idle: float = 15.0):
        self.idle = idle  # seconds without an event before `subscribe` yields None (a keep-alive)
        self._events: deque[Event] = deque(maxlen=keep)
        self._last_id = 0
        self.replay_margin = 0  # ms: replay from this much before a Last-Event-ID (several workers)
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}
        self._closed = False

    def publish(self, model: str, kind: str, data: dict) -> Event:
        """Record an event and hand it to the model's subscribers (from any thread)."""
        with self._lock:
            self._last_id = max(self._last_id + 1, int(time.time() * 1000))
            event = Event(self._last_id, model, kind, data)
            self._events.append(event)
            listeners = list(self._subscribers.get(model, ()))
        for loop, queue in listeners:
            _deliver(loop, queue, event)
        return event

    def since(self, model: str, last_id: int | None) -> list[Event]:
        """The buffered events of a model newer than `last_id` (all of them for None)."""
        with self._lock:
            return [e for e in self._events if e.model == model and (last_id is None or e.id > last_id - self.replay_margin)]

    async def subscribe(self, model: str, last_id: int | None = None) -> AsyncIterator[Event | None]:
        """The model's events after `last_id` (replayed from the buffer), then new ones as they come;
        None when nothing happened for a while (`idle`), so the caller can send a keep-alive. Ends when
        the bus closes (the server stops)."""
        queue: asyncio.Queue = asyncio.Queue()
        entry = (asyncio.get_running_loop(), queue)
        with self._lock:
            backlog = [e for e in self._events
                       if e.model == model and last_id is not None and e.id > last_id - self.replay_margin]
            self._subscribers.setdefault(model, set()).add(entry)
            closed = self._closed
        try:
            for event in backlog:
                yield event
            seen = backlog[-1].id if backlog else (last_id or 0)
            while not closed:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=self.idle)
                except TimeoutError:
                    yield None
                    continue
                if event is _CLOSED:
                    return
                if event.id > seen:  # an event both replayed and delivered is sent once
                    seen = event.id
                    yield event
        finally:
            with self._lock:
                self._subscribers.get(model, set()).discard(entry)

    def subscribers(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subscribers.values())

    def close(self) -> None:
        """End every subscription (a server stop must not wait for open streams)."""
        with self._lock:
            self._closed = True
            listeners = [entry for entries in self._subscribers.values() for entry in entries]
        for loop, queue in listeners:
            _deliver(loop, queue, _CLOSED)


class ChangeWaiters:
    """Requests waiting for a group's served payload to change (the long poll)."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], set[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._lock = threading.Lock()
        self._stopping = False  # after `wake_all`: a new wait ends at once

    async def wait(self, model: str, group_key: str, timeout: float, still_current: Callable[[], bool]) -> bool:
        """Park until `changed(model, group_key)` or `timeout` seconds; True when it changed.
        `still_current()` is asked once the wait is registered, so a change between the caller's
        look and the registration is not missed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        entry = (loop, future)
        key = (model, group_key)
        with self._lock:
            self._waiting.setdefault(key, set()).add(entry)
        try:
            if self._stopping:
                return False
            if not still_current():
                return True
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                waiting = self._waiting.get(key)
                if waiting is not None:
                    waiting.discard(entry)
                    if not waiting:
                        self._waiting.pop(key, None)

    def changed(self, model: str, group_key: str) -> int:
        """Wake every request waiting on this group (from any thread); returns how many."""
        with self._lock:
            waiting = self._waiting.pop((model, group_key), set())
        for loop, future in waiting:
            _resolve(loop, future)
        return len(waiting)

    def wake_all(self) -> None:
        """Wake everyone, and answer later waits at once (the server stops)."""
        with self._lock:
            self._stopping = True
            waiting = [entry for entries in self._waiting.values() for entry in entries]
            self._waiting.clear()
        for loop, future in waiting:
            _resolve(loop, future)

    def count(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiting.values())


def announce(bus: EventBus, waiters: ChangeWaiters, model: str, previous: dict, groups: dict,
             unserved: list[tuple[str, int, str]]) -> None:
    """What an install of a model's groups changed (group states before and after, by group key):
    wake the long polls of every group whose served payload changed, and publish a `version` event
    for each new live version and each version recorded but not served (`unserved`: group key,
    version, ETag — during a hold or a pin), and a `status` event for each changed status."""
    for key, number, etag in unserved:
        state = groups.get(key)
        if state is not None:
            bus.publish(model, "version", {"symbol": state.snapshot.symbol, "group_key": key,
                                           "version": number, "etag": etag, "live": False})
    for key, state in groups.items():
        old = previous.get(key)
        new_payload, old_payload = state.payload, old.payload if old else None
        if new_payload is not None and (old_payload is None or old_payload.etag != new_payload.etag):
            waiters.changed(model, key)
            bus.publish(model, "version", {"symbol": state.snapshot.symbol, "group_key": key,
                                           "version": new_payload.version, "etag": new_payload.etag, "live": True})
        snapshot = state.snapshot
        if old is None or old.snapshot.status != snapshot.status or old.snapshot.issues != snapshot.issues:
            bus.publish(model, "status", {"symbol": snapshot.symbol, "group_key": key, "status": snapshot.status,
                                          "issues": [i.to_dict() for i in snapshot.issues]})


_CLOSED = Event(-1, "", "closed", {})


def _deliver(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, event: Event) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, event)
    except RuntimeError:  # that loop is closed: its subscriber is gone
        pass


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:
    def settle() -> None:
        if not future.done():
            future.set_result(True)
    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:
        pass
