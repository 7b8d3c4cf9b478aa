"""Research views (SPEC §11): each factor across every symbol of a model, for any IC metric or
importance type, and how widely each factor is used.

`ResearchIndex.build` runs once per refresh (a model's `ModelView` holds the result; the CLI builds
one for the directory it reads), in one pass over the values, so a request is a lookup.

What counts, per group (one column per symbol):
- IC metrics come from the group's ic.csv as parsed, whatever the state of its model: the IC is the
  research's own measurement, and a group whose model file is broken still has it.
- Importance types come from the *served* model: a group with errors contributes none (its
  dimension→factor mapping is not trusted); a group still serving its last good version contributes
  that version's importance.
- A factor's mean |value| is the mean over the symbols that have a value for it (absent and null
  cells are unknown, not zero); `usage.symbols` counts the symbols whose factors.txt lists it.
- A matrix's columns are the symbols with at least one value for the metric, sorted; its rows the
  factors with at least one value, by mean |value| (largest first, then by name).

A matrix is kept sparse: a desk's factors are each used by a few of its thousands of symbols, so the
dense table is mostly nulls (67 MB of list slots per server process at 5,000 groups of 20 factors
chosen from a few hundred). Each row keeps the columns that have a value and those values (packed
floats when they all are floats); `values` and `to_dict` lay the rows out in full on request.
"""
from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from model_manager.artifacts import GroupSnapshot
from model_manager.artifacts.snapshot import ic_column
from model_manager.conversion import IMPORTANCE_TYPES
from model_manager.errors import UsageError

Number = float | int
SparseRow = tuple["array[int]", "array[float] | tuple[Number, ...]"]  # (columns with a value, their values)
_Pair = tuple[GroupSnapshot, "GroupSnapshot | None"]  # a group's latest parse and the parse it serves


@dataclass(frozen=True)
class Matrix:
    """One metric's factor × symbol matrix: `values[i][j]` is factor i in symbol j (None: no value)."""

    metric: str
    symbols: list[str]
    factors: list[str]
    rows: list[SparseRow]   # per factor, in `factors` order
    mean_abs: list[float]   # per factor, in `factors` order
    counts: list[int]       # per factor: how many symbols have a value

    @property
    def values(self) -> list[list[Number | None]]:
        """Every row laid out in full (None where a symbol has no value)."""
        return self.dense(len(self.rows))

    def dense(self, end: int) -> list[list[Number | None]]:
        """The first `end` rows laid out in full."""
        width = len(self.symbols)
        out = []
        for columns, values in self.rows[:end]:
            row: list[Number | None] = [None] * width
            for j, value in zip(columns, values):
                row[j] = value
            out.append(row)
        return out

    def to_dict(self, model_name: str, top: int | None = None) -> dict:
        """The SPEC §11 matrix object; `top` keeps the first N factors (0 or None: all)."""
        end = top if top else len(self.factors)
        return {"model_name": model_name, "metric": self.metric, "symbols": self.symbols,
                "factors": self.factors[:end], "values": self.dense(end)}


@dataclass(frozen=True)
class Column:
    """What one symbol contributes: its label, its factors, and {metric: {factor: value}}."""

    label: str
    factors: list[str]
    metrics: dict[str, dict[str, Number | None]]


@dataclass(frozen=True)
class ResearchIndex:
    matrices: dict[str, Matrix] = field(default_factory=dict)
    usage: list[dict] = field(default_factory=list)
    listed: dict[str, int] = field(default_factory=dict, repr=False)  # factor -> symbols listing it (for `updated`)

    @property
    def metrics(self) -> list[str]:
        """Known metrics: the IC columns of the model's groups, then the importance types."""
        ic = sorted(m for m in self.matrices if m not in IMPORTANCE_TYPES)
        return ic + list(IMPORTANCE_TYPES)

    def matrix(self, metric: str) -> Matrix:
        """The matrix of `metric` (case-insensitive); UsageError (400) naming the known metrics."""
        key = metric.strip().lower()
        if key not in self.metrics:
            raise UsageError(f"unknown metric {metric!r}: use one of {', '.join(self.metrics)}")
        return self.matrices.get(key) or Matrix(key, [], [], [], [], [])

    @classmethod
    def build(cls, columns: Iterable[Column]) -> ResearchIndex:
        """One pass over every value of every column, then one sort per metric. The columns are
        taken one at a time (each one's values are dropped once noted)."""
        labels: list[str] = []
        cells: dict[str, dict[str, _Cells]] = {}  # metric -> factor -> (columns, values), by column
        listed: dict[str, int] = {}
        for j, column in enumerate(columns):
            labels.append(column.label)
            for factor in set(column.factors):
                listed[factor] = listed.get(factor, 0) + 1
            for metric, values in column.metrics.items():
                rows = cells.setdefault(metric, {})
                for factor, value in values.items():
                    if value is not None:
                        row = rows.get(factor)
                        if row is None:
                            row = rows[factor] = ([], [])
                        row[0].append(j)
                        row[1].append(value)
        matrices = {metric: _matrix(metric, rows, labels) for metric, rows in cells.items()}
        return cls(matrices, _usage(listed, matrices), listed)

    def updated(self, changes: list[tuple[Column, Column]]) -> ResearchIndex | None:
        """This index with some columns replaced, each given as (old, new) with the same label: the
        same index `build` makes of all the new columns, at the cost of the rows those columns touch
        (a retrained group among thousands: a few dozen rows, not a million values). None when a
        change adds a column to a matrix or takes one out of it (a symbol gains or loses a metric):
        its positions all move, and `build` is the way."""
        if not changes:
            return self
        matrices = dict(self.matrices)
        for metric in sorted({m for pair in changes for column in pair for m in column.metrics}):
            matrix = _updated_matrix(matrices.get(metric), metric, changes)
            if matrix is None:
                return None
            matrices[metric] = matrix
        listed = dict(self.listed)
        for old, new in changes:
            for factor in set(old.factors):
                listed[factor] -= 1
                if not listed[factor]:
                    del listed[factor]
            for factor in set(new.factors):
                listed[factor] = listed.get(factor, 0) + 1
        return ResearchIndex(matrices, _usage(listed, matrices), listed)


_Cells = tuple[list[int], list[Number]]


def _matrix(metric: str, rows: dict[str, _Cells], labels: list[str]) -> Matrix:
    used = sorted({j for columns, _ in rows.values() for j in columns}, key=lambda j: labels[j])
    position = {j: i for i, j in enumerate(used)}
    stats = {f: (sum(map(abs, values)) / len(values), len(values)) for f, (_, values) in rows.items()}
    order = sorted(rows, key=lambda f: (-stats[f][0], f))
    return Matrix(metric, [labels[j] for j in used], order, [_sparse(rows[f], position) for f in order],
                  [stats[f][0] for f in order], [stats[f][1] for f in order])


def _sparse(row: _Cells, position: dict[int, int]) -> SparseRow:
    """A row's (matrix columns, values), by matrix column; the values packed when all are floats (an
    int stays an int, so the row's JSON is the same)."""
    places, values = list(map(position.__getitem__, row[0])), row[1]
    if places != sorted(places):  # the columns come in label order when the groups do (the usual case)
        cells = sorted(zip(places, values))  # a column is in a row once: values are never compared
        places, values = [j for j, _ in cells], [value for _, value in cells]
    return _packed(places, values)


def _packed(places: list[int], values: list[Number]) -> SparseRow:
    packed = array("d", values) if all(type(v) is float for v in values) else tuple(values)
    return array("I", places), packed


def _updated_matrix(matrix: Matrix | None, metric: str, changes: list[tuple[Column, Column]]) -> Matrix | None:
    """`matrix` with the changed columns' values of `metric` replaced (see `ResearchIndex.updated`)."""
    if matrix is None:
        return None
    cells: dict[str, dict[int, Number]] = {}  # factor -> {position: value} of the rows touched
    where = {factor: i for i, factor in enumerate(matrix.factors)}
    for old, new in changes:
        before = {f: v for f, v in old.metrics.get(metric, {}).items() if v is not None}
        after = {f: v for f, v in new.metrics.get(metric, {}).items() if v is not None}
        position = bisect_left(matrix.symbols, new.label)
        present = position < len(matrix.symbols) and matrix.symbols[position] == new.label
        if present != bool(before) or bool(before) != bool(after):
            return None
        for factor in before.keys() | after.keys():
            row = cells.get(factor)
            if row is None:
                i = where.get(factor)
                row = cells[factor] = {} if i is None else dict(zip(*matrix.rows[i]))
            row.pop(position, None)
            if factor in after:
                row[position] = after[factor]
    rows = {f: matrix.rows[i] for f, i in where.items() if f not in cells}
    stats = {f: (matrix.mean_abs[i], matrix.counts[i]) for f, i in where.items() if f not in cells}
    for factor, row in cells.items():
        if row:
            places = sorted(row)
            values = [row[j] for j in places]  # in column order, as `build` sums them
            rows[factor] = _packed(places, values)
            stats[factor] = (sum(map(abs, values)) / len(values), len(values))
    order = sorted(rows, key=lambda f: (-stats[f][0], f))
    return Matrix(metric, matrix.symbols, order, [rows[f] for f in order],
                  [stats[f][0] for f in order], [stats[f][1] for f in order])


def _usage(listed: dict[str, int], matrices: dict[str, Matrix]) -> list[dict]:
    means: dict[str, dict[str, float]] = {}
    for metric in sorted(matrices):
        matrix = matrices[metric]
        for factor, mean in zip(matrix.factors, matrix.mean_abs):
            means.setdefault(factor, {})[metric] = mean
    factors = sorted(set(listed) | set(means))
    return [{"factor": f, "symbols": listed.get(f, 0), "mean_abs": means.get(f, {})} for f in factors]


def group_column(label: str, snapshot: GroupSnapshot, served: GroupSnapshot | None) -> Column:
    """A group's column: IC from its latest parse, importance from the snapshot being served."""
    metrics: dict[str, dict[str, Number | None]] = {}
    ic = snapshot.ic  # read once: each read of a packed field unpacks it
    if ic:
        for metric in ic["columns"][1:]:
            metrics[metric] = ic_column(ic, metric)
    importance = served.importance if served is not None else None
    if importance:
        metrics.update(importance)
    return Column(label, snapshot.factors, metrics)


def build_index(groups: Iterable[tuple[GroupSnapshot, GroupSnapshot | None]]) -> ResearchIndex:
    """The index of a model's groups, given as (latest parse, served parse or None) pairs. Columns are
    labelled by symbol, or by group key where a symbol has several groups (only a directory the
    server would refuse; the CLI still reads it)."""
    pairs = list(groups)
    seen: dict[str, int] = {}
    for snapshot, _ in pairs:
        seen[snapshot.symbol] = seen.get(snapshot.symbol, 0) + 1
    return ResearchIndex.build(
        group_column(s.symbol if seen[s.symbol] == 1 else s.group_key, s, served) for s, served in pairs)


def updated_index(index: ResearchIndex, before: Mapping[str, _Pair], after: Mapping[str, _Pair]) -> ResearchIndex | None:
    """The index of the groups `after` (group_key -> (latest parse, served parse), as `build_index`
    takes them), given `index`, that of the groups `before`: only the groups that changed are looked
    at. None when it has to be built whole: the groups or their symbols are not the same ones, a
    symbol has several groups, or most groups changed (a full re-read: `build_index` is as quick)."""
    if before.keys() != after.keys():
        return None
    changed = [k for k, pair in after.items() if pair[0] is not before[k][0] or pair[1] is not before[k][1]]
    if len(changed) * 4 > len(after):
        return None
    symbols = [pair[0].symbol for pair in after.values()]
    if len(set(symbols)) != len(symbols) or any(before[k][0].symbol != after[k][0].symbol for k in changed):
        return None
    return index.updated([(group_column(before[k][0].symbol, *before[k]), group_column(after[k][0].symbol, *after[k]))
                          for k in changed])
