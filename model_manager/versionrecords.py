"""The value types of versions (see `versions.py`): a version record, a version's stored bytes, a
group's content waiting for a number (`Candidate`, made by `candidate`), a body built ahead of its row
(`Prebuilt`) and what recording did."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from model_manager.artifacts import GroupSnapshot, build_payload_bytes, payload_head
from model_manager.conversion import sha256
from model_manager.errors import UnprocessableError
from model_manager.modelsummary import model_summary
from model_manager.versiondiff import version_detail


@dataclass(frozen=True)
class VersionInfo:
    """One version record (without its diff detail)."""

    model: str
    group_key: str
    version: int
    symbol: str
    etag: str
    payload_sha256: str
    blob_sha256: str
    size: int
    content_sha256: str
    model_sha256: str | None
    created_at: str
    live_from: str | None
    live_until: str | None
    dim: int | None
    factor_count: int
    model_source: str | None
    status: str
    pruned: bool

    def to_dict(self, *, live: int | None, pinned: int | None, periods: list[list] | None = None) -> dict:
        """The SPEC §6 `version` object (plus `pruned` and every `live_periods` [from, until])."""
        return {"version": self.version, "etag": self.etag, "model_sha256": self.model_sha256,
                "created_at": self.created_at, "live": self.version == live, "pinned": self.version == pinned,
                "live_from": self.live_from, "live_until": self.live_until, "dim": self.dim,
                "factor_count": self.factor_count, "model_source": self.model_source, "status": self.status,
                "pruned": self.pruned, "live_periods": periods or []}


@dataclass(frozen=True)
class StoredPayload:
    """A version's servable bytes, checked against their hash."""

    version: int
    etag: str
    gzip: bytes
    size: int
    file: str | None = None  # the blob file `gzip` is mapped from (a server sends it from there)


@dataclass(frozen=True)
class Candidate:
    """A group's servable content, before it has a version number."""

    model_name: str
    group_key: str
    symbol: str
    content_sha256: str
    model_sha256: str | None
    dim: int | None
    factor_count: int
    model_source: str | None
    status: str
    build: Callable[[int], bytes]   # the final body with metadata.version = N
    detail: Callable[[], dict]      # what a diff needs (only called for a new version)


@dataclass(frozen=True)
class Prebuilt:
    """A candidate's body for version `version`, built, gzipped and stored (`VersionStore.prebuild`)
    ahead of its row: a registration builds each group's first version where the group is parsed,
    while its model JSON is in memory, and writes the rows once the registration is written."""

    version: int
    blob_sha256: str
    payload_sha256: str
    size: int
    content_sha256: str  # the candidate's (`content_sha256`): the group's parse needs no second digest


@dataclass(frozen=True)
class Recorded:
    """What `record` did: `version` is the candidate's version (new when `created`); `live` what the
    group serves now; `payload` the new version's bytes when `created` (saves reading them back)."""

    version: VersionInfo
    created: bool
    live: VersionInfo | None
    live_changed: bool
    payload: StoredPayload | None = None


def content_sha256(model_name: str, group: GroupSnapshot) -> str:
    """Digest of a group's payload content without `metadata.version` and `updated_at` (file mtimes):
    equal digests mean equal payloads up to those two fields. Cheap: the model JSON enters by its hash."""
    head = payload_head(model_name, group)
    head["payload"]["metadata"].pop("updated_at", None)
    text = json.dumps(head, sort_keys=True, separators=(",", ":"))
    return sha256(f"content-v1|{group.model_sha256}|{text}".encode())


def candidate(model_name: str, group: GroupSnapshot, model_json: bytes | Callable[[], bytes],
              content: str | None = None) -> Candidate:
    """A candidate from a parsed, servable group; `model_json` may be a loader, called only when a new
    version is built; `content`: its `content_sha256`, when a candidate of the same parse had it made.
    UnprocessableError when the group has errors (a broken group makes no version)."""
    if group.errors or not group.model_sha256:
        raise UnprocessableError(f"{group.group_key} has errors: it makes no version")
    memo: list[bytes] = []

    def load() -> bytes:
        if not memo:
            memo.append(model_json() if callable(model_json) else model_json)
        return memo[0]

    return Candidate(
        model_name=model_name, group_key=group.group_key, symbol=group.symbol,
        content_sha256=content or content_sha256(model_name, group), model_sha256=group.model_sha256, dim=group.dim,
        factor_count=len(group.factors), model_source=group.model_source, status=group.status,
        build=lambda n: build_payload_bytes(model_name, group, load(), version=n),
        detail=lambda: version_detail(group.factors, group.ic, group.info, group.dim, _summary(group, load)))


def _summary(group: GroupSnapshot, load: Callable[[], bytes]) -> dict:
    """The model's summary: made by the check process (`ModelInfo.summary`), or, for a parse that
    predates it, from the JSON."""
    return group.model_summary if group.model_summary is not None else model_summary(load())
