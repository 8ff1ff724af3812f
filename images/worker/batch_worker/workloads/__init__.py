"""Workloads: a workload turns one batch (all rows of some units) into one output table.

A workload is a subclass of `Workload` that declares its whole contract:

- `schema`: the input columns and the unit key (`batch_worker.schema.InputSchema`);
- `parameters`: each `Parameter` with its type, range and description; cross-field rules go in
  `validate`, so the trigger form and `plan` refuse a bad combination before any Batch job;
- `output`: the `OutputSchema` (names and types) the worker enforces on every batch;
- `version`: bump it when the results for the same input and parameters change (cache key).

Discovery, the same in the worker and on the Airflow side (`get_workload`):

- every module of this package (`batch_worker/workloads/*.py`) whose class is decorated with
  `@register`; no list to edit;
- the Python entry point group `airbatch.workloads` of any installed package: the entry point's
  name is the workload's name, its value `package.module:Class` (or `package.module`, whose
  `Workload` subclass of that name is taken). A team's own package adds to its pyproject.toml

      [project.entry-points."airbatch.workloads"]
      my_algo = "my_team.algo:MyAlgo"

Workload modules stay light at import: numpy, pandas and pyarrow are imported inside functions,
so DAG files read parameters and schemas without loading them.
"""
from __future__ import annotations

import copy
import importlib
import importlib.metadata
import inspect
import math
import pkgutil
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from batch_worker.schema import InputSchema

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

ENTRY_POINT_GROUP = "airbatch.workloads"

HOW_TO_REGISTER = (
    "To add one: a @register-decorated Workload subclass in a module of the batch_worker.workloads package, or in "
    f'your own package\'s pyproject.toml [project.entry-points."{ENTRY_POINT_GROUP}"] '
    '<name> = "<package>.<module>:<WorkloadClass>", installed (pip install -e <folder>) where Airflow and the '
    "worker run.")


class BadData(Exception):
    """The batch itself is unusable: retrying will not help (the runtime exits with EXIT_BAD_DATA)."""


class TransientError(Exception):
    """A retry may succeed (a flaky dependency, a throttled call): the runtime exits with EXIT_TRANSIENT."""


class OutputSchemaError(BadData):
    """A batch's output does not match the workload's declared `output`; a retry gives the same output."""


class WorkloadError(ValueError):
    """A workload cannot be found or loaded: a configuration error, not a data error."""


class UnknownWorkload(WorkloadError, KeyError):
    """No workload of that name is registered."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


# --- parameters ---------------------------------------------------------------------------------

#: Parameter kinds and their JSON Schema types.
PARAMETER_TYPES = {"number": "number", "integer": "integer", "string": "string", "boolean": "boolean",
                   "string_list": "array"}


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Parameter:
    """One workload parameter: a top-level param of the pipeline's trigger form, checked again by `plan`.

    `default` is a JSON value (a list for string_list). Bounds apply to numbers; `enum` to numbers and
    strings; `nullable` also allows null (None).
    """

    name: str
    kind: str  # one of PARAMETER_TYPES
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    enum: tuple | None = None
    nullable: bool = False

    def __post_init__(self):
        if self.kind not in PARAMETER_TYPES:
            raise ValueError(f"parameter {self.name!r}: unknown kind {self.kind!r}; expected one of "
                             f"{sorted(PARAMETER_TYPES)}")
        if not self.description.strip():
            raise ValueError(f"parameter {self.name!r}: give it a description (the trigger form shows it)")
        problems = self.problems(self.default)
        if problems:
            raise ValueError(f"parameter {self.name!r}: its default is not allowed: {'; '.join(problems)}")

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of an Airflow Param for this parameter (without the default)."""
        kind = PARAMETER_TYPES[self.kind]
        schema: dict[str, Any] = {"type": [kind, "null"] if self.nullable else kind, "description": self.description}
        if self.kind == "string_list":
            schema["items"] = {"type": "string"}
        for key, value in (("minimum", self.minimum), ("maximum", self.maximum),
                           ("exclusiveMinimum", self.exclusive_minimum), ("exclusiveMaximum", self.exclusive_maximum)):
            if value is not None:
                schema[key] = value
        if self.enum is not None:
            schema["enum"] = [*self.enum, None] if self.nullable else list(self.enum)
        return schema

    def canonical(self, value: Any) -> Any:
        """`value` in the one form cache keys see, so that equal values give equal keys: a number parameter's
        integer is a float (`1` is `1.0`), an integer parameter's integral float an int (`28.0` is `28`, as JSON
        Schema's "integer" reads it). Anything else, a fraction for an integer included, is left for `problems`."""
        if isinstance(value, bool):
            return value
        if self.kind == "number" and isinstance(value, int):
            try:
                return float(value)
            except OverflowError:
                return value
        if self.kind == "integer" and isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    def problems(self, value: Any) -> list[str]:
        """What is wrong with `value` for this parameter, each problem naming it and saying what is allowed."""
        if value is None:
            if self.nullable:
                return []
            if self.kind in ("number", "integer"):
                # A JSON NaN reaches a task as null (Airflow passes a run's conf on as JSON): say both.
                return [f"{self.name} is null: NaN or null is not a number; give {self._type_words()}"]
            return [f"{self.name} must not be null ({self._type_words()})"]
        type_problem = self._type_problem(value)
        if type_problem:
            return [type_problem]
        problems = []
        if self.enum is not None and value not in self.enum:
            problems.append(f"{self.name} must be one of {list(self.enum)}, got {value!r}")
        if self.kind in ("number", "integer"):
            for bound, ok, words in ((self.minimum, lambda b: value >= b, ">="), (self.maximum, lambda b: value <= b, "<="),
                                     (self.exclusive_minimum, lambda b: value > b, ">"),
                                     (self.exclusive_maximum, lambda b: value < b, "<")):
                if bound is not None and not ok(bound):
                    problems.append(f"{self.name} must be {words} {_fmt(bound)}, got {_fmt(value)}")
        return problems

    def _type_words(self) -> str:
        return {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
                "string_list": "a list of strings"}[self.kind]

    def _type_problem(self, value: Any) -> str | None:
        if self.kind == "number":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif self.kind == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind == "string":
            ok = isinstance(value, str)
        elif self.kind == "boolean":
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        return None if ok else f"{self.name} must be {self._type_words()}, got {value!r}"


# --- the output schema ----------------------------------------------------------------------------

#: Output column types: the pandas dtype a column is cast to when all its values are null, and its Arrow type.
OUTPUT_DTYPES = ("string", "int", "float", "bool", "date", "timestamp")


@dataclass(frozen=True)
class OutputColumn:
    name: str
    dtype: str  # one of OUTPUT_DTYPES
    nullable: bool = True
    description: str = ""

    def __post_init__(self):
        if self.dtype not in OUTPUT_DTYPES:
            raise ValueError(f"output column {self.name!r}: unknown dtype {self.dtype!r}; expected one of "
                             f"{list(OUTPUT_DTYPES)}")

    @property
    def pandas_dtype(self) -> str:
        """The pandas dtype that holds this column (nullable extension types where nulls are allowed)."""
        return {"string": "string", "int": "Int64" if self.nullable else "int64", "float": "float64",
                "bool": "boolean" if self.nullable else "bool", "date": "datetime64[s]",
                "timestamp": "datetime64[us, UTC]"}[self.dtype]

    def arrow_type(self):
        import pyarrow as pa

        return {"string": pa.large_string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                "date": pa.date32(), "timestamp": pa.timestamp("us", tz="UTC")}[self.dtype]


@dataclass(frozen=True)
class OutputSchema:
    """The columns (in order) and types of a workload's output; the runtime enforces it on every batch."""

    columns: tuple[OutputColumn, ...]

    def __post_init__(self):
        names = [c.name for c in self.columns]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"output schema names column(s) {repeated} more than once")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def pandas_dtypes(self) -> dict[str, str]:
        return {c.name: c.pandas_dtype for c in self.columns}

    def arrow_schema(self) -> "pa.Schema":
        import pyarrow as pa

        return pa.schema([pa.field(c.name, c.arrow_type(), nullable=c.nullable) for c in self.columns])

    def enforce(self, frame: "pd.DataFrame", where: str) -> "pd.DataFrame":
        """`frame` with the declared columns in order and a fresh index; an all-null column cast to its type.

        Raises OutputSchemaError naming `where`, the column, the declared and the found type when a
        column is missing, extra, repeated, of another type, or holds nulls while declared not nullable.
        Columns that already hold their declared type are kept as they are, not copied (pandas copies
        on write, so the caller's frame is never changed through the result).
        """
        names = self.names
        found = frame.columns.tolist()
        found_set = set(found)
        missing = [n for n in names if n not in found_set]
        extra = [str(n) for n in found if n not in self._name_set]
        if missing or extra:
            raise OutputSchemaError(
                f"{where}: the output does not have the declared columns: "
                + "; ".join(part for part in (f"missing {missing}" if missing else "",
                                              f"not declared {extra}" if extra else "") if part)
                + f"; declared: {list(names)}")
        if len(found_set) < len(found):
            repeated = sorted({str(n) for n in found if found.count(n) > 1})
            raise OutputSchemaError(f"{where}: the output has column(s) {repeated} more than once; return each "
                                    "declared column once")
        changed = {}
        for column in self.columns:
            values = self._checked(frame[column.name], column, where)
            if values is not None:
                changed[column.name] = values
        if changed:
            frame = frame.assign(**changed)  # replaces columns in place: the order stays `found`
        if tuple(found) != names:
            frame = frame[list(names)]
        return frame.reset_index(drop=True)

    @property
    def _name_set(self) -> frozenset:
        return frozenset(self.names)

    @staticmethod
    def _checked(values: "pd.Series", column: OutputColumn, where: str) -> "pd.Series | None":
        """`values` as `column` holds them, or None when they need no change; OutputSchemaError if they cannot be."""
        import numpy as np
        import pandas as pd
        from pandas.api import types

        nulls = values.array.isna()
        null_count = int(nulls.sum())
        if null_count and not column.nullable:
            raise OutputSchemaError(f"{where}: output column {column.name!r} is declared not nullable but holds "
                                    f"{null_count} null value(s)")
        if null_count == len(values):  # all null, or no rows: nothing to check, only the type to give
            return pd.Series([None] * len(values), index=values.index, dtype=object).astype(column.pandas_dtype)
        dtype = values.dtype
        present = values.to_numpy()[~nulls] if dtype == object else None
        changed = None
        if column.dtype == "string":
            ok = isinstance(dtype, pd.StringDtype) or (
                present is not None and all(isinstance(v, str) for v in present))
        elif column.dtype == "int":
            ok = types.is_integer_dtype(dtype) and not types.is_bool_dtype(dtype)
        elif column.dtype == "float":
            ok = types.is_float_dtype(dtype) or (types.is_integer_dtype(dtype) and not types.is_bool_dtype(dtype))
            if ok and dtype != np.float64:
                changed = values.astype("float64")
        elif column.dtype == "bool":
            ok = types.is_bool_dtype(dtype)
        elif column.dtype == "date":
            ok = types.is_datetime64_any_dtype(dtype) or (
                present is not None and all(type(v).__name__ == "date" for v in present))
        else:
            ok = types.is_datetime64_any_dtype(dtype)
            if ok:
                changed = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        if not ok:
            found = f"{dtype}" + (f" holding {type(present[0]).__name__}" if present is not None else "")
            raise OutputSchemaError(f"{where}: output column {column.name!r} is declared {column.dtype} but is "
                                    f"{found}; make the workload return {column.dtype} values or change its "
                                    "`output` (and bump its version)")
        return changed


# --- the workload --------------------------------------------------------------------------------

class _DefaultParams:
    """`Workload.default_params`: {name: default} of the class's parameters (a fresh copy each time)."""

    def __get__(self, instance: Any, owner: type) -> dict[str, Any]:
        return {p.name: copy.deepcopy(p.default) for p in owner.parameters}


class Workload:
    name: ClassVar[str]
    #: Bump when the code's results change: part of every batch's cache key.
    version: ClassVar[str]
    schema: ClassVar[InputSchema]
    parameters: ClassVar[tuple[Parameter, ...]] = ()
    output: ClassVar[OutputSchema | None] = None
    default_params = _DefaultParams()

    def run(self, batch: "pd.DataFrame", params: dict[str, Any]) -> "pd.DataFrame":
        raise NotImplementedError

    def combines_batches(self, params: dict[str, Any]) -> bool:
        """Whether the worker may run several small batches of a child in one call of `run` (False here).

        Say True when a unit's results depend only on its own rows (no state carried from one unit to
        the next, such as a random stream or a warm-up) and `output` names every unit-key column: the
        worker then splits the call's output back into each batch's result by unit, so the results are
        those of batch-by-batch runs, and a per-call cost (pandas' own, a model's load) is paid once per
        group of small batches instead of once per batch. `batch_worker.runtime` says how groups are sized.
        """
        return False

    def validate(self, params: dict[str, Any]) -> list[str]:
        """Problems between fields of resolved, well-typed parameters, each naming every field involved and
        what to change. Called where parameters are resolved, so `plan` refuses them before anything runs."""
        return []

    def resolve_params(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """The defaults updated with `params`, each in its canonical form (`Parameter.canonical`: `l2: 1` and
        `l2: 1.0` give one cache key) and checked, then `validate`d; one ValueError lists every problem."""
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise ValueError(f"workload {self.name!r}: parameters must be an object of name: value, got {params!r}")
        merged = self.default_params
        problems = []
        unknown = set(params) - set(merged)
        if unknown:
            problems.append(f"unknown parameter(s) {sorted(unknown)}; known: {sorted(merged)}")
        merged.update({k: v for k, v in params.items() if k in merged})
        for parameter in self.parameters:
            merged[parameter.name] = parameter.canonical(merged[parameter.name])
            problems += parameter.problems(merged[parameter.name])
        if not problems:
            problems = self.validate(merged)
        if problems:
            raise ValueError(f"workload {self.name!r} parameters: " + "; ".join(problems))
        return merged


# --- registration and discovery ------------------------------------------------------------------

_REGISTRY: dict[str, type[Workload]] = {}
_ORIGINS: dict[str, str] = {}


def _declaration_problems(cls: type) -> list[str]:
    problems = [f"lacks `{attr}`" for attr in ("name", "version", "schema") if not hasattr(cls, attr)]
    if hasattr(cls, "schema") and not isinstance(cls.schema, InputSchema):
        problems.append("`schema` must be an InputSchema")
    if not all(isinstance(p, Parameter) for p in cls.parameters):
        problems.append("`parameters` must be a tuple of Parameter")
    else:
        names = [p.name for p in cls.parameters]
        problems += [f"declares parameter {n!r} twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if cls.output is not None and not isinstance(cls.output, OutputSchema):
        problems.append("`output` must be an OutputSchema or None")
    return problems


def register(cls: type[Workload], origin: str | None = None) -> type[Workload]:
    """Class decorator: make `cls` known by its `name`."""
    problems = _declaration_problems(cls)
    if problems:
        raise WorkloadError(f"workload class {cls.__module__}.{cls.__qualname__}: " + "; ".join(problems))
    existing = _REGISTRY.get(cls.name)
    if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
        raise WorkloadError(f"workload name {cls.name!r} is taken twice: by {_ORIGINS[cls.name]} and by "
                            f"{cls.__module__}.{cls.__qualname__}; rename one")
    _REGISTRY[cls.name] = cls
    _ORIGINS[cls.name] = origin or f"module {cls.__module__}"
    return cls


def package_modules() -> list[str]:
    """The modules of this package (found on disk, no list): each may register workloads."""
    return [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]


def _import_package_modules() -> None:
    for module in package_modules():
        if module not in sys.modules:
            importlib.import_module(module)


def workload_entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _entry_point_origin(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    package = f" of {dist.metadata['Name']} {dist.version}" if dist is not None else ""
    return f"entry point {entry_point.name} = {entry_point.value}{package}"


def _load_entry_point(entry_point: importlib.metadata.EntryPoint) -> None:
    origin = _entry_point_origin(entry_point)
    try:
        loaded = entry_point.load()
    except Exception as exc:
        raise WorkloadError(f"workload {entry_point.name!r}: loading its {origin} failed: "
                            f"{type(exc).__name__}: {exc}") from exc
    if inspect.ismodule(loaded):
        candidates = [c for c in vars(loaded).values() if inspect.isclass(c) and issubclass(c, Workload)
                      and c is not Workload and getattr(c, "name", None) == entry_point.name]
    else:
        candidates = [loaded] if inspect.isclass(loaded) and issubclass(loaded, Workload) else []
    if not candidates:
        raise WorkloadError(f"{origin} (group {ENTRY_POINT_GROUP}) names no Workload subclass whose `name` is "
                            f"{entry_point.name!r}; point it at the class (package.module:Class) and give the class "
                            "that name")
    cls = candidates[0]
    if cls.name != entry_point.name:
        raise WorkloadError(f"{origin}: the class's name is {cls.name!r}, not {entry_point.name!r}; the entry "
                            "point's name must equal the workload's `name`")
    if _REGISTRY.get(cls.name) is not cls:
        register(cls, origin)


def registered_workloads() -> dict[str, str]:
    """Every workload that can be used: {name: where it comes from} (entry points are listed, not loaded)."""
    _import_package_modules()
    found = dict(_ORIGINS)
    for entry_point in workload_entry_points():
        found.setdefault(entry_point.name, _entry_point_origin(entry_point))
    return dict(sorted(found.items()))


def get_workload(name: str) -> Workload:
    """The workload registered as `name` (an instance); UnknownWorkload says what is registered and how to add one."""
    if name not in _REGISTRY:
        _import_package_modules()
    if name not in _REGISTRY:
        matching = [e for e in workload_entry_points() if e.name == name]
        if len({e.value for e in matching}) > 1:
            raise WorkloadError(f"workload {name!r} is declared by several entry points: "
                                f"{[_entry_point_origin(e) for e in matching]}; uninstall or rename all but one")
        if matching:
            _load_entry_point(matching[0])
    if name not in _REGISTRY:
        registered = "; ".join(f"{n} ({origin})" for n, origin in registered_workloads().items()) or "none"
        raise UnknownWorkload(f"unknown workload {name!r}; registered: {registered}. {HOW_TO_REGISTER}")
    return _REGISTRY[name]()
