"""The in-memory registry: parse records let a restart skip re-parsing groups whose files did not
change, and a changed or damaged record only costs a re-parse."""
from __future__ import annotations

import csv
import json

from model_manager.service import ModelManager


def _loaded(settings) -> dict:
    """A fresh registry's first load of every registered model (what a restart does), as
    {group_key: (summary, detail, etag)}."""
    with ModelManager(settings) as manager:
        registry = manager.serve()
        registry.sync_registrations()
        model = registry.get("demo")
        return {k: (s.snapshot.summary(), s.snapshot.detail("demo"), s.payload.etag if s.payload else None)
                for k, s in model.groups.items()}


def test_restart_restores_unchanged_groups_and_reparses_changed_ones(settings, demo_dir):
    with ModelManager(settings) as manager:
        manager.serve()
        done = manager.register("demo", str(demo_dir))
        assert done.created
        first = {k: (s.snapshot.summary(), s.snapshot.detail("demo"), s.payload.etag if s.payload else None)
                 for k, s in done.model.groups.items()}
    served = [k for k, v in first.items() if v[2] is not None]
    records = list((settings.cache_dir / "snapshots").glob("*.json"))
    assert served and len(records) == len(served)  # one parse record per served group

    assert _loaded(settings) == first  # a restart shows exactly what the first load showed

    # a changed file is parsed again; the other groups are as they were
    changed = served[0]
    ic = demo_dir / f"{changed}_ic.csv"
    rows = list(csv.reader(ic.read_text().splitlines()))
    column = [c.lower() for c in rows[0]].index("kendall_tau")
    ic.write_text("\n".join(",".join(r[:column] + ["0.5"] + r[column + 1:]) if i else ",".join(r)
                            for i, r in enumerate(rows)) + "\n")
    again = _loaded(settings)
    assert again[changed][1]["ic"] != first[changed][1]["ic"]
    assert again[changed][2] != first[changed][2]  # the payload carries the new kendall_tau
    assert {k: v for k, v in again.items() if k != changed} == {k: v for k, v in first.items() if k != changed}

    # damaged records are only a miss: the groups are parsed again and come out the same
    for i, record in enumerate((settings.cache_dir / "snapshots").glob("*.json")):
        if i % 2:
            record.write_text("{not json")
        else:
            data = json.loads(record.read_text())
            data["fields"] = data["fields"].replace('"factors":[', '"factors":["injected",', 1)
            record.write_text(json.dumps(data))
    assert _loaded(settings) == again
