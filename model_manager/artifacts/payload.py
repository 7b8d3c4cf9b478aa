"""The model payload of SPEC §2, built from a parsed group and its model JSON text."""
from __future__ import annotations

import json

from model_manager.artifacts.snapshot import GroupSnapshot


def dim_factors(group: GroupSnapshot) -> list[dict]:
    """[{dim, factor_name, kendall_tau}] in dimension order; kendall_tau null when unknown."""
    tau = group.kendall_by_factor()
    return [{"dim": i, "factor_name": f, "kendall_tau": tau.get(f)} for i, f in enumerate(group.factors)]


def payload_head(model_name: str, group: GroupSnapshot) -> dict:
    """The payload of SPEC §2 without the model JSON text (the `model_json` slot is left out)."""
    metadata = dict(group.info or {})
    metadata.update({
        "symbol": group.symbol, "return_name": group.return_name, "group_key": group.group_key,
        "dim": group.dim, "model_source": group.model_source, "model_sha256": group.model_sha256,
        "updated_at": group.updated_at,
    })
    return {
        "model_name": model_name, "symbol": group.symbol, "group_key": group.group_key,
        "return_name": group.return_name,
        "payload": {"metadata": metadata, "dim_factors": dim_factors(group)},
    }


def build_payload_bytes(model_name: str, group: GroupSnapshot, model_json: bytes, *, version: int | None = None) -> bytes:
    """The exact response body of `GET /api/models/{name}/model/{symbol}`; with `version`, its
    `metadata.version` (SPEC §6; like the other metadata keys we set, it wins over an info.pkl key)."""
    head = payload_head(model_name, group)
    inner = head["payload"]
    if version is not None:
        inner["metadata"]["version"] = version
    head["payload"] = {"model_json": model_json.decode("utf-8"), "metadata": inner["metadata"], "dim_factors": inner["dim_factors"]}
    return json.dumps(head, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
