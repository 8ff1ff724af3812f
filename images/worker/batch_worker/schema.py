"""The input schema a workload declares; prep validates data against it before any fan-out."""
from __future__ import annotations

from dataclasses import dataclass, field

#: Logical column types a workload may declare, and the DuckDB types that satisfy each.
DTYPES: dict[str, tuple[str, ...]] = {
    "string": ("VARCHAR",),
    "int": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "HUGEINT"),
    "float": ("FLOAT", "DOUBLE", "DECIMAL", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT"),
    "date": ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S"),
}

#: Prefix of the columns prep adds (quarantine reason, file, line, ranks). No schema or input column may
#: use it, compared without case as DuckDB and Athena compare names.
RESERVED_PREFIX = "_prep_"


def is_reserved(name: str) -> bool:
    return name.lower().startswith(RESERVED_PREFIX)


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # one of DTYPES
    nullable: bool = False
    min: float | None = None  # inclusive bounds for numeric columns; rows outside are quarantined
    max: float | None = None

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"column {self.name!r}: unknown dtype {self.dtype!r}; expected one of {sorted(DTYPES)}")
        if is_reserved(self.name):
            raise ValueError(f"column {self.name!r}: names starting with {RESERVED_PREFIX!r} are reserved for "
                             "the columns prep adds; rename the column")


@dataclass(frozen=True)
class InputSchema:
    """Columns of the input table; `unit_key` groups rows into units of work.

    `unique_key` identifies one row; repeated rows are quarantined as duplicates.
    `time_column` (optional) is the column a run's data interval filters on.
    """

    columns: tuple[Column, ...]
    unit_key: tuple[str, ...]
    unique_key: tuple[str, ...] = ()
    time_column: str | None = None
    extra: dict = field(default_factory=dict)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)
