"""The version operations of the service (SPEC §6), mixed into `service.ModelManager`: history, pin,
unpin, rollback, hold, release, diff and the bytes of any kept version. Each resolves a symbol to its
group, calls `versions.VersionStore` and, when the service is serving, serves the new live version
at once (the other workers of the server before the change is answered, other server processes
within a second: see `Registry.follow_live`)."""
from __future__ import annotations

from typing import Any

from model_manager.errors import NotFoundError
from model_manager.state import PayloadBytes, group_object, model_object


class VersionCommands:
    """Needs `self.store`, `self.versions`, `self.registry`, `self.serving` and `self._changed` (see ModelManager)."""

    def group_key(self, name: str, symbol: str) -> str:
        """The group a symbol of a registered model is in (from memory when serving, else its versions)."""
        if self.registry is not None:
            return self.registry.group(name, symbol).snapshot.group_key
        if self.store.get_model(name) is None:
            raise NotFoundError(f"no model named {name!r} is registered (see model-manager register --list)")
        keys = [k for (k,) in self.store.query("SELECT DISTINCT group_key FROM versions WHERE model = ? AND symbol = ?",
                                               (name, symbol))]
        if not keys:
            raise NotFoundError(f"model {name!r} has no versions of a symbol {symbol!r}: check the symbol "
                                f"(model-manager inspect shows them), or start the server once so it records them")
        if len(keys) > 1:
            raise NotFoundError(f"symbol {symbol!r} has versions in several groups of {name!r} ({', '.join(sorted(keys))})")
        return keys[0]

    def version_history(self, name: str, symbol: str) -> dict[str, Any]:
        """The versions object: every version of a symbol's group, newest first."""
        return self.versions.versions(name, self.group_key(name, symbol))

    def pin(self, name: str, symbol: str, version: int, *, reason: str = "", client: str | None = None) -> dict[str, Any]:
        """Serve `version` of a symbol until unpinned."""
        done = self.versions.pin(name, self.group_key(name, symbol), version, reason=reason, client=client)
        return self._followed(name, done)

    def unpin(self, name: str, symbol: str, *, reason: str = "", client: str | None = None) -> dict[str, Any]:
        done = self.versions.unpin(name, self.group_key(name, symbol), reason=reason, client=client)
        return self._followed(name, done)

    def rollback(self, name: str, symbol: str, *, reason: str = "", client: str | None = None) -> dict[str, Any]:
        """Pin the version that was live before the current one."""
        done = self.versions.rollback(name, self.group_key(name, symbol), reason=reason, client=client)
        return self._followed(name, done)

    def hold(self, name: str, *, reason: str = "", client: str | None = None) -> dict[str, Any]:
        """Keep every group of a model on its live version; new versions are recorded, not served."""
        self._require_model(name)
        self.versions.hold(name, reason=reason, client=client)
        return self._model_after_change(name)

    def release(self, name: str, *, reason: str = "", client: str | None = None) -> dict[str, Any]:
        """End a hold: each group serves its latest version again (pins still win)."""
        self._require_model(name)
        self.versions.release(name, reason=reason, client=client)
        return self._model_after_change(name)

    def diff(self, name: str, symbol: str, from_version: int | None = None, to_version: int | None = None) -> dict[str, Any]:
        """What changed between two versions of a symbol's group (defaults: the latest and the one before)."""
        return self.versions.diff(name, self.group_key(name, symbol), from_version, to_version)

    def version_payload(self, name: str, symbol: str, version: int) -> PayloadBytes:
        """The payload bytes of any kept version (serving only; blocking)."""
        return self.serving.version_payload(name, symbol, version)

    def _require_model(self, name: str) -> None:
        if (self.registry is not None and name not in self.registry.models) or self.store.get_model(name) is None:
            raise NotFoundError(f"no model named {name!r} is registered")

    def _model_after_change(self, name: str) -> dict[str, Any]:
        """The model object once a hold or release is served (offline: from the store)."""
        if self.registry is not None:
            self.registry.follow_live(name)
            self._changed()
            return self.registry.get(name).to_dict()
        return self._stored_model(name)

    def _stored_model(self, name: str) -> dict[str, Any]:
        """The model object as the store alone has it (no server serving here): its groups are those
        with a live version (each with the status it had when that version was made), and what only a
        serving process knows (when it last read each group, how that went, the model's status now, a
        directory it cannot read) is null."""
        row, hold = self.store.get_model(name), self.versions.hold_info(name)
        groups = [group_object(key, v.symbol, v.status, v.version) for key, v in self.versions.live_infos(name).items()]
        return model_object(row.name, row.path, row.registered_at, refreshed_at=None, group_count=len(groups),
                            symbol_count=len({g["symbol"] for g in groups}), status=None, error=None, hold=hold,
                            groups=groups)

    def _followed(self, name: str, answer: dict[str, Any]) -> dict[str, Any]:
        """After a change of what is live: a serving service serves it now (other servers follow
        `versions.state_seq` within a second)."""
        if self.registry is not None:
            self.registry.follow_live(name)
            self._changed()
        return answer
