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
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from model_manager.artifacts import GroupSnapshot
from model_manager.conversion import IMPORTANCE_TYPES
from model_manager.errors import UsageError

Number = float | int


@dataclass(frozen=True)
class Matrix:
    """One metric's factor × symbol matrix: `values[i][j]` is factor i in symbol j (None: no value)."""

    metric: str
    symbols: list[str]
    factors: list[str]
    values: list[list[Number | None]]
    mean_abs: list[float]   # per factor, in `factors` order
    counts: list[int]       # per factor: how many symbols have a value

    def to_dict(self, model_name: str, top: int | None = None) -> dict:
        """The SPEC §11 matrix object; `top` keeps the first N factors (0 or None: all)."""
        end = top if top else len(self.factors)
        return {"model_name": model_name, "metric": self.metric, "symbols": self.symbols,
                "factors": self.factors[:end], "values": self.values[:end]}


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
        """One pass over every value of every column, then one sort per metric."""
        columns = list(columns)
        cells: dict[str, dict[str, dict[int, Number]]] = {}  # metric -> factor -> {column: value}
        listed: dict[str, int] = {}
        for j, column in enumerate(columns):
            for factor in set(column.factors):
                listed[factor] = listed.get(factor, 0) + 1
            for metric, values in column.metrics.items():
                rows = cells.setdefault(metric, {})
                for factor, value in values.items():
                    if value is not None:
                        rows.setdefault(factor, {})[j] = value
        matrices = {metric: _matrix(metric, rows, columns) for metric, rows in cells.items()}
        return cls(matrices, _usage(listed, matrices))


def _matrix(metric: str, rows: dict[str, dict[int, Number]], columns: list[Column]) -> Matrix:
    used = sorted({j for row in rows.values() for j in row}, key=lambda j: columns[j].label)
    stats = {f: (sum(abs(v) for v in row.values()) / len(row), len(row)) for f, row in rows.items()}
    order = sorted(rows, key=lambda f: (-stats[f][0], f))
    values = [[rows[f].get(j) for j in used] for f in order]
    return Matrix(metric, [columns[j].label for j in used], order, values,
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
    if snapshot.ic:
        for metric in snapshot.ic["columns"][1:]:
            metrics[metric] = snapshot.ic_by_factor(metric)
    if served is not None and served.importance:
        metrics.update(served.importance)
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
