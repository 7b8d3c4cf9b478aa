"""`model-manager convert`'s file handling: which pickles a run covers, where each JSON goes, and
the conversion of one file — decoded, converted and verified in a check process (`isolation.py`),
so a corrupt or hostile pickle cannot crash or take over the run — written atomically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from model_manager.errors import ArtifactError, PathError
from model_manager.files import atomic_write, read_artifact
from model_manager.isolation import check_model


@dataclass
class ConvertResult:
    source: Path
    target: Path
    status: str  # converted | skipped | failed
    num_features: int | None = None
    size: int | None = None
    message: str = ""
    warnings: list[str] = field(default_factory=list)


def pickles_in(path: Path) -> list[Path]:
    """The `*_model.pkl` files a convert run covers: the file itself, or those in a directory."""
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.name.endswith("_model.pkl") and not p.name.startswith("."))
        if not found:
            raise PathError(f"no *_model.pkl files in {path}")
        return found
    if path.is_file():
        if not path.name.endswith(".pkl"):
            raise PathError(f"{path} is not a pickle (expected a *_model.pkl file or a directory)")
        return [path]
    if path.exists():
        raise PathError(f"{path} is not a regular file (a FIFO, device or socket): give a *_model.pkl file or a directory")
    raise PathError(f"{path} does not exist")


def json_target(source: Path, out_dir: Path | None) -> Path:
    name = source.name[: -len(".pkl")] + ".json" if source.name.endswith(".pkl") else source.name + ".json"
    return (out_dir or source.parent) / name


def convert_file(source: Path, out_dir: Path | None = None, *, force: bool = False, verify: bool = True,
                 max_bytes: int) -> ConvertResult:
    """Convert one pickled model to XGBoost JSON next to it (or in `out_dir`), atomically.

    With `verify`, the JSON is written only after it predicts bit-identically to the pickle. The
    pickle is loaded in a check process (`check_model`): a corrupt one cannot crash the run.
    """
    target = json_target(source, out_dir)
    if target.exists() and not force:
        return ConvertResult(source, target, "skipped", message=f"{target.name} exists (use --force to overwrite)")
    try:
        info, data, how = check_model(read_artifact(source, max_bytes=max_bytes), "pkl", source.name, verify=verify)
        atomic_write(target, data)
    except ArtifactError as exc:
        return ConvertResult(source, target, "failed", message=str(exc))
    except OSError as exc:
        return ConvertResult(source, target, "failed", message=f"cannot write {target}: {exc.strerror or exc}")
    return ConvertResult(source, target, "converted", info.num_features, len(data),
                         message=f"verified {how}" if verify else "not verified", warnings=info.warnings)
