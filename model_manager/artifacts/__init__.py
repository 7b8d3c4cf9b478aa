"""THE artifact package: scan a model directory into groups, parse every file tolerantly, validate,
and build the structures the CLI and the server show and serve.

A group is the set of files `{group_key}_{kind}` (SPEC §1). Parsing never raises for a bad file: each
problem becomes an `Issue` on the group, and errors block the model payload. Nothing here writes into
the model directory; untrusted model and info bytes are decoded only in the check process
(`isolation.py`).

Model files and their precedence: a group's model is `_model.json` (XGBoost JSON), `_model.ubj`
(XGBoost UBJSON) or `_model.pkl` (a pickled Booster or sklearn-API model). When several are present
the first in that order is served (`model_source` "json", "ubj" or "pkl"; the payload always carries
XGBoost JSON text), and all of them must hold the same model, or the group has a
`model_files_disagree` error naming both files (see `models.py`).

Files that belong to no group are listed in `DirectorySnapshot.ignored` with a did-you-mean hint
for near-misses (`scan.py`); directory-level problems (a symbol in two groups) are
`DirectorySnapshot.problems`.

Modules: `snapshot` (Issue, GroupSnapshot, DirectorySnapshot), `packed` (how a snapshot keeps its
rarely read fields small), `scan` (listing, ignored files), `parse` (factors.txt, ic.csv, symbol
names), `models` (model files), `load` (load_group, load_directory), `payload` (the SPEC §2 payload).
"""
from model_manager.artifacts.load import DEFAULT_MAX_BYTES, load_directory, load_group
from model_manager.artifacts.models import served_json_again
from model_manager.artifacts.parse import FACTOR_COLUMN_NAMES, MISSING_TOKENS, parse_factors, parse_ic, split_symbol
from model_manager.artifacts.payload import build_payload_bytes, dim_factors, payload_head
from model_manager.artifacts.scan import (
    KINDS,
    MODEL_KINDS,
    check_directory,
    file_signature,
    ignored_entries,
    ignored_hint,
    scan_directory,
    scan_groups,
    split_artifact_name,
)
from model_manager.artifacts.snapshot import DirectorySnapshot, GroupSnapshot, Issue

__all__ = [
    "DEFAULT_MAX_BYTES", "FACTOR_COLUMN_NAMES", "KINDS", "MISSING_TOKENS", "MODEL_KINDS", "DirectorySnapshot", "GroupSnapshot",
    "Issue", "build_payload_bytes", "check_directory", "dim_factors", "file_signature", "ignored_entries", "ignored_hint",
    "load_directory", "load_group", "parse_factors", "parse_ic", "payload_head", "scan_directory",
    "scan_groups", "served_json_again", "split_artifact_name", "split_symbol",
]
