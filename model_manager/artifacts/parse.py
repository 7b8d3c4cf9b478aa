"""Parsing the text artifacts (factors.txt, ic.csv) tolerantly, and naming a group's symbol.

Each parser takes the bytes already read and raises `ArtifactError` with a specific code for a file
it cannot use; the caller turns that into an issue on the group.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any

from model_manager.artifacts.snapshot import Issue
from model_manager.errors import ArtifactError
from model_manager.warned import recorded_warnings

FACTOR_COLUMN_NAMES = ("factor", "factor_name", "name")
MISSING_TOKENS = {"", "nan", "NaN", "NAN", "none", "None", "null", "NULL", "NA", "N/A", "n/a", "-", "inf", "-inf", "Inf", "-Inf"}


def _decode_text(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{name} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8", code="encoding") from None
    if "\x00" in text:
        raise ArtifactError(f"{name} contains NUL bytes: it is binary or corrupt, not a text file", code="corrupt")
    return text


def parse_factors(data: bytes, name: str = "factors.txt") -> list[str]:
    """One factor per line; BOM, CRLF, surrounding whitespace and blank lines are tolerated."""
    text = _decode_text(data, name)
    factors = [line.strip() for line in text.splitlines()]
    factors = [f for f in factors if f]
    if not factors:
        raise ArtifactError(f"{name} lists no factors (one factor name per line expected)", code="empty_factors")
    return factors


def _cell_number(value: str) -> float | None:
    v = value.strip()
    if v in MISSING_TOKENS:
        return None
    number = float(v)  # ValueError for text
    return number if math.isfinite(number) else None


def parse_ic(data: bytes, name: str = "ic.csv") -> tuple[dict, list[str]]:
    """IC table → ({"columns": ["factor", metrics...], "rows": [[factor, numbers|None...]]}, notes).

    The factor column may be named factor / factor_name / name (any case) or be an unnamed first
    (pandas index) column; metric names are lower-cased so `Kendall_Tau` is `kendall_tau`.
    """
    text = _decode_text(data, name)
    if not text.strip():
        raise ArtifactError(f"{name} is empty", code="empty_ic")
    table = plain_table(text)
    names, values, notes = (*table, []) if table is not None else _pandas_table(text, name)
    columns = [str(c).strip() for c in names]
    lowered = [c.lower() for c in columns]
    factor_idx = next((lowered.index(n) for n in FACTOR_COLUMN_NAMES if n in lowered), None)
    if factor_idx is None and columns and (columns[0] == "" or columns[0].startswith("Unnamed:")):
        factor_idx = 0
    if factor_idx is None:
        raise ArtifactError(
            f"{name} has no factor column: name it factor, factor_name or name, or make it the unnamed first column",
            code="ic_no_factor_column")
    metric_idx = [i for i in range(len(columns)) if i != factor_idx and not (columns[i] == "" or columns[i].startswith("Unnamed:"))]
    out_columns = ["factor"] + [lowered[i] for i in metric_idx]
    rows: list[list] = []
    non_numeric: set[str] = set()
    for raw in values:
        factor = str(raw[factor_idx]).strip()
        if not factor:
            continue
        row: list[Any] = [factor]
        for i in metric_idx:
            cell = "" if raw[i] is None else str(raw[i])
            try:
                row.append(_cell_number(cell))
            except ValueError:
                non_numeric.add(lowered[i])
                row.append(None)
        rows.append(row)
    if non_numeric:
        notes.append(f"{name}: non-numeric values in {', '.join(sorted(non_numeric))} were read as null")
    return {"columns": out_columns, "rows": rows}, notes


_PLAIN_MAX_LINE = 100_000  # under the csv module's field size limit (131,072 characters)


def plain_table(text: str) -> tuple[list[str], list[list[str]]] | None:
    """(column names, rows) as `_pandas_table` reads them, for a CSV text with nothing that needs
    pandas: no quotes, no carriage return but in CRLF, no byte order mark, no line of only
    whitespace, every row as wide as the header, and distinct column names. None for anything
    else (then pandas reads it). About 10 × faster than pandas (0.65 against 6.2 ms for 150 rows)."""
    if '"' in text or "\ufeff" in text:
        return None
    text = text.replace("\r\n", "\n")
    if "\r" in text:
        return None
    lines = [line for line in text.split("\n") if line]
    if not lines or any(len(line) > _PLAIN_MAX_LINE or not line.strip() for line in lines):
        return None
    # csv with skipinitialspace drops the spaces that open a field; pandas names an empty header "Unnamed: i"
    names = [field.lstrip(" ") or f"Unnamed: {i}" for i, field in enumerate(lines[0].split(","))]
    if len(set(names)) != len(names):
        return None  # pandas renames repeated columns
    rows = [line.split(",") for line in lines[1:]]
    if any(len(row) != len(names) for row in rows):
        return None  # pandas pads short rows and truncates long ones (with a note)
    return names, [[field.lstrip(" ") for field in row] for row in rows]


def _pandas_table(text: str, name: str) -> tuple[list, Any, list[str]]:
    """(column names, rows, notes) of any CSV text, read by pandas (every cell as text)."""
    import pandas as pd

    try:
        long_rows: list[int] = []

        def truncate(fields: list[str]) -> list[str]:  # a row with more fields than the header
            long_rows.append(len(fields))
            return fields[:header_width]

        header_width = len(next(csv.reader(io.StringIO(text.lstrip("\r\n")))))
        with recorded_warnings() as caught:
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True,
                             skip_blank_lines=True, index_col=False, engine="python", on_bad_lines=truncate)
        if long_rows:
            caught.append(f"{len(long_rows)} row(s) have more fields than the header; the extra fields were ignored")
    except Exception as exc:  # pandas raises several parser error types
        raise ArtifactError(f"{name} is not a readable CSV table: {str(exc).splitlines()[0][:200]}", code="corrupt") from None
    notes = [f"{name}: {message[:200]}" for message in caught]
    return list(df.columns), df.to_numpy(dtype=object), notes


def split_symbol(group_key: str, info: dict | None) -> tuple[str, str, Issue | None]:
    """Symbol and return name: info.pkl wins when its names are consistent with the group key."""
    symbol, _, return_name = group_key.partition("_")
    if info:
        s, r = info.get("symbol"), info.get("return_name")
        if isinstance(s, str) and s and isinstance(r, str) and r and f"{s}_{r}" == group_key:
            return s, r, None
        if isinstance(s, str) and s and not isinstance(r, str) and group_key.startswith(s + "_"):
            return s, group_key[len(s) + 1:], None
        if (isinstance(s, str) and s) or (isinstance(r, str) and r):
            return symbol, return_name, Issue(
                "warning", "info_name_mismatch",
                f"info.pkl names symbol={s!r} return_name={r!r}, which does not match the group key {group_key}; "
                f"using symbol {symbol}", None)
    return symbol, return_name, None
