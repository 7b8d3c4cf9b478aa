"""The cache directory under the data dir: every on-disk layout the server keeps, and its sweep.

    models/<sha of a model file>.meta.json   ModelInfo of a model file (pkl or json) already checked
    json/<sha of json>.json                  a model's JSON text, as earlier releases kept it (read, swept;
                                             the JSON of a converted model is now found in the versions
                                             that serve it: see `ModelJsonSource`)
    payloads/raw-<etag>.json                 a served payload's plain body, written at its first request
                                             without gzip (the gzip bytes are versions' blobs)
    snapshots/<sha of root+group>.json       a served group's parse, so a restart can skip re-parsing

Every entry is written atomically and checked against a recorded hash when read, so a crash or a
stray edit can only cause a miss, never a wrong answer. Entries are rebuilt from the model
directories whenever they are missing; `sweep` deletes what the loaded models no longer use.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgspec

from model_manager import __version__
from model_manager.conversion import ModelInfo, sha256
from model_manager.files import atomic_write, private_dir

log = logging.getLogger(__name__)

RECORD_VERSION = f"{__version__}/3"  # parse records of another release (or layout) are not trusted
SUBDIRS = ("models", "json", "payloads", "snapshots")


@dataclass
class LiveEntries:
    """What the loaded models still use; everything else in the cache may go."""

    json: set[str] = field(default_factory=set)      # sha256 of model JSON
    etags: set[str] = field(default_factory=set)     # ETags (unquoted) of served payloads


class ModelJsonSource(Protocol):
    """Where the JSON of a model converted from a pickle is found once a version serves it (the
    version's payload holds it: `VersionStore`), so it is written to disk once, in the payload."""

    def has_model_json(self, json_sha: str) -> bool: ...

    def find_model_json(self, json_sha: str) -> bytes | None: ...


class CacheDir:
    """One data dir's cache. Safe to share between threads and processes (atomic writes only).
    `models_elsewhere`: see `ModelJsonSource` (without one, a converted model's JSON is never known
    here, and each load of a pickle checks it again)."""

    def __init__(self, directory: str | os.PathLike, models_elsewhere: ModelJsonSource | None = None):
        self.root = private_dir(directory)  # 0700, and so each part (files in them are 0600)
        for sub in SUBDIRS:
            private_dir(self.root / sub)
        self.models_elsewhere = models_elsewhere
        self._real_paths: dict[str, tuple[float, str]] = {}  # see _real_path

    # -- model conversions --------------------------------------------------------------------
    def model_info(self, source_sha: str) -> ModelInfo | None:
        meta = self._read_json(self.root / "models" / f"{source_sha}.meta.json")
        if meta is None:
            return None
        try:
            return ModelInfo(**meta)
        except TypeError:
            return None

    def put_model(self, source_sha: str, info: ModelInfo) -> None:
        """Record a checked model (its JSON is not kept here: see `ModelJsonSource`)."""
        atomic_write(self.root / "models" / f"{source_sha}.meta.json", json.dumps(info.as_dict()).encode(), durable=False)

    def has_json(self, json_sha: str) -> bool:
        """Whether the model JSON with this sha256 can be had (`model_json`) without a check."""
        path = self.root / "json" / f"{json_sha}.json"
        if path.is_file():
            _touch(path)  # about to be used: keep it out of the next sweep's reach
            return True
        return self.models_elsewhere is not None and self.models_elsewhere.has_model_json(json_sha)

    def model_json(self, json_sha: str) -> bytes | None:
        """The model JSON with this sha256 (checked against it), or None."""
        path = self.root / "json" / f"{json_sha}.json"
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        if data is not None:
            if sha256(data) == json_sha:
                _touch(path)
                return data
            path.unlink(missing_ok=True)
        return self.models_elsewhere.find_model_json(json_sha) if self.models_elsewhere is not None else None

    # -- plain bodies of served payloads (the gzip bytes are versions' blobs, see versions.py) ------
    def plain_body_path(self, etag: str) -> Path:
        """Where the plain (uncompressed) body of the payload with this quoted ETag is kept."""
        return self.root / "payloads" / f"raw-{etag.strip(chr(34))}.json"

    # -- parse records ------------------------------------------------------------------------
    # A record is one line of JSON, {"version", "sha256"}, then the fields' JSON: the sha256 is of those
    # bytes, and they are parsed once (an earlier layout wrapped them in a JSON string: two parses)
    def write_record(self, root: str, group_key: str, fields: dict) -> None:
        """Keep a served group's parse (a JSON-able dict) for the next start. Its keys keep their order:
        a payload rebuilt from a restored parse (a lost blob written back, `VersionStore._heal`) must be
        the same bytes, info.pkl's keys in their order included."""
        body = json.dumps(fields, separators=(",", ":"), allow_nan=False).encode()  # ASCII: no newline
        head = json.dumps({"version": RECORD_VERSION, "sha256": sha256(body)}).encode()
        atomic_write(self._record_path(root, group_key), head + b"\n" + body, durable=False)

    def read_record(self, root: str, group_key: str) -> dict | None:
        """The fields `write_record` kept, when they are intact and of this release; else None."""
        try:
            data = self._record_path(root, group_key).read_bytes()
            end = data.index(b"\n")
            head, body = json.loads(data[:end]), memoryview(data)[end + 1:]
            if head.get("version") != RECORD_VERSION or sha256(body) != head["sha256"]:
                return None
            fields = _decode_json(body)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return fields if isinstance(fields, dict) else None

    def _record_path(self, root: str, group_key: str) -> Path:
        name = sha256(f"{self._real_path(root)}\0{group_key}".encode())
        return self.root / "snapshots" / f"{name}.json"

    def _real_path(self, root: str) -> str:
        """The directory's real path, resolved at most once a second: a pass over thousands of its
        groups resolves it once, not once per group (an lstat of every part of the path each time)."""
        now = time.monotonic()
        known = self._real_paths.get(root)
        if known is None or known[0] < now:
            known = self._real_paths[root] = (now + 1.0, os.path.realpath(os.path.expanduser(root.strip())))
        return known[1]

    # -- housekeeping -------------------------------------------------------------------------
    def sweep(self, live: LiveEntries, *, grace_seconds: float = 600, max_age_days: float = 30) -> int:
        """Delete what `live` does not name; returns how many files went.

        Model JSON and plain bodies (the large entries) go as soon as nothing loaded uses them and they
        are older than `grace_seconds` (an entry just written by a load still in progress, or by a
        CLI `register`, is young). Model infos and parse records are small and go after
        `max_age_days` unused. Unknown files are left alone.
        """
        now, removed = time.time(), 0

        def drop(path: Path, cutoff: float) -> None:
            nonlocal removed
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                pass

        for path in self._entries("json"):
            if path.suffix == ".json" and path.stem not in live.json:
                drop(path, now - grace_seconds)
        for path in self._entries("payloads"):
            # plain bodies, and the gzip payloads (`.gz`, `.meta.json`) earlier releases kept here
            name = path.name
            if name.startswith("raw-") and name.endswith(".json"):
                if name[4:-5] not in live.etags:
                    drop(path, now - grace_seconds)
            elif name.endswith((".gz", ".meta.json")):
                drop(path, now - grace_seconds)
        for sub in ("models", "snapshots"):
            for path in self._entries(sub):
                drop(path, now - max_age_days * 86400)
        return removed

    def _entries(self, sub: str) -> list[Path]:
        try:
            return [p for p in (self.root / sub).iterdir() if not p.name.startswith(".")]
        except OSError:
            return []

    @staticmethod
    def _read_json(path: Path) -> dict | None:
        try:
            data = _decode_json(path.read_bytes())
        except (OSError, ValueError):
            return None
        if isinstance(data, dict):
            _touch(path)
            return data
        return None


def _decode_json(data: bytes | memoryview):
    """json.loads, at twice its speed: msgspec's parser gives the same values for what json.dumps
    writes (key order, floats to the bit, big integers); the few texts it refuses (a lone surrogate
    escape) go to json.loads."""
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError:
        return json.loads(bytes(data))


_DECODER = msgspec.json.Decoder()


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


class PlainBodies:
    """The plain (uncompressed) bodies of served payloads, for clients without gzip.

    Decompressing a 2 MB payload costs 5-10 ms per request; reading it back from the page cache a
    fraction of a millisecond, and the page cache is not the server's memory. So a body is kept as a
    file named by its ETag (the sha256 of the body), written at its first request and checked against
    the ETag at its first read by this process: a damaged file is only a miss."""

    def __init__(self, cache: CacheDir):
        self.cache = cache
        self._checked: set[str] = set()  # ETags whose file was checked by this process

    def cached(self, etag: str, size: int) -> bytes | None:
        """The body when its file exists and was checked, else None; never decompresses. Cheap
        enough for the event loop."""
        if etag not in self._checked:
            return None
        try:
            body = self.cache.plain_body_path(etag).read_bytes()
        except OSError:
            return None
        if len(body) != size:
            self._checked.discard(etag)
            return None
        return body

    def get(self, etag: str, gz: bytes, size: int) -> bytes:
        """The body, from its file or decompressed (and then kept). Blocking."""
        path = self.cache.plain_body_path(etag)
        try:
            body = path.read_bytes()
        except OSError:
            body = None
        if body is not None and len(body) == size and (etag in self._checked or f'"{sha256(body)[:32]}"' == etag):
            self._checked.add(etag)
            return body
        body = gzip.decompress(gz)
        try:
            atomic_write(path, body, durable=False)
            self._checked.add(etag)
        except OSError as exc:
            log.warning("plain payload not cached: %s", exc)
        return body
