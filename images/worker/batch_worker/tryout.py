"""`batch-worker try`: run a workload on a sample, in-process and in seconds, before any pipeline run.

    batch-worker try <workload> <input file> [--params JSON] [--rows N] [--head N]

1. reads a CSV or Parquet sample;
2. checks it against the workload's input schema: a missing column, or a column whose values are
   not of its declared type, is named and stops here; rows that prep would quarantine (a null
   where none is allowed, a number out of range, an unreadable date, a repeated unique key) are
   counted by reason and left out;
3. takes one batch: the first units, in file order, up to --rows rows (at least one unit);
4. resolves the parameters as `plan` does and runs the workload on the batch (the batch reaches it
   through Parquet, typed as the worker reads it);
5. checks the output against the declared output schema and prints its head, the counts and the
   time of each step;
6. when the workload says it combines batches (`Workload.combines_batches`), runs the batch's
   units again in two calls and checks that each unit gets the same rows as in one call: the
   worker relies on that to run small batches together. A unit whose rows differ fails the try
   (exit 1), naming the unit.

Exit codes: 0 ok; 65 the sample or the output is bad; 64 usage or configuration (unknown
workload or parameter, unreadable --params, no such file).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd

from batch_worker.schema import Column, InputSchema
from batch_worker.workloads import BadData, Workload, WorkloadError, get_workload

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 64
EXIT_BAD_DATA = 65
DEFAULT_ROWS = 10_000


class UsageError(Exception):
    """The command line or the configuration is wrong (exit 64)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2; usage errors are 64 (EX_USAGE) like the runtime's
        self.print_usage(sys.stderr)
        raise UsageError(message)


def read_sample(path: str, schema: InputSchema) -> pd.DataFrame:
    """The sample file as a table; string columns of a CSV stay text ("007" is not 7)."""
    file = Path(path)
    if not file.exists():
        raise UsageError(f"input file {path} does not exist")
    suffix = file.suffix.lower()
    try:
        if suffix in (".csv", ".txt") or file.name.lower().endswith(".csv.gz"):
            text_columns = {c.name: "string" for c in schema.columns if c.dtype == "string"}
            return pd.read_csv(file, dtype=text_columns)
        if suffix in (".parquet", ".pq") or file.is_dir():
            return pd.read_parquet(file)
    except (ValueError, OSError) as exc:
        raise BadData(f"{path}: cannot be read as {'CSV' if suffix != '.parquet' else 'Parquet'}: {exc}") from exc
    raise UsageError(f"input file {path}: expected a .csv or .parquet file")


def _example(values: pd.Series) -> str:
    return repr(values.dropna().iloc[0]) if values.notna().any() else "nothing"


def typed_column(values: pd.Series, column: Column) -> tuple[pd.Series | None, str | None]:
    """(the column converted to its declared type, None) or (None, what is wrong with it)."""
    from pandas.api import types

    present = values.dropna()
    if column.dtype == "string":
        if isinstance(values.dtype, pd.StringDtype) or (values.dtype == object and present.map(
                lambda v: isinstance(v, str)).all()):
            return values.astype("string"), None
        return None, f"is declared string but holds {values.dtype} values (e.g. {_example(values)})"
    if column.dtype in ("int", "float"):
        if types.is_bool_dtype(values.dtype) or not types.is_numeric_dtype(values.dtype):
            return None, f"is declared {column.dtype} but holds {values.dtype} values (e.g. {_example(values)})"
        if column.dtype == "int":
            fractional = present[present != present.round()]
            if len(fractional):
                return None, f"is declared int but holds fractions (e.g. {fractional.iloc[0]!r})"
            return values.astype("Int64"), None
        return values.astype("float64"), None
    if types.is_datetime64_any_dtype(values.dtype):
        return values, None
    parsed = pd.to_datetime(values, errors="coerce", format="mixed")
    if present.size and parsed.notna().sum() == 0:
        return None, f"is declared date but none of its values is a date (e.g. {_example(values)})"
    return parsed, None


def check_sample(frame: pd.DataFrame, schema: InputSchema, source: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The usable rows, typed, and the count of left-out rows by reason; BadData names every bad column."""
    missing = [c.name for c in schema.columns if c.name not in frame.columns]
    problems = [f"missing column(s): {', '.join(repr(n) for n in missing)} (has {list(frame.columns)})"] if missing else []
    typed: dict[str, pd.Series] = {}
    for column in schema.columns:
        if column.name in frame.columns:
            values, problem = typed_column(frame[column.name], column)
            if problem:
                problems.append(f"column {column.name!r} {problem}")
            else:
                typed[column.name] = values
    if problems:
        raise BadData(f"{source} does not match the input schema: " + "; ".join(problems))
    rows = pd.DataFrame(typed, index=frame.index)
    reasons = pd.Series("", index=rows.index, dtype=object)

    def leave_out(mask: pd.Series, reason: str) -> None:
        mask = mask.fillna(False).astype(bool) & (reasons == "")
        reasons[mask] = reason

    for column in schema.columns:
        if not column.nullable:
            leave_out(rows[column.name].isna() & frame[column.name].notna(), f"unreadable {column.name}")
            leave_out(rows[column.name].isna(), f"null {column.name}")
        if column.min is not None:
            leave_out(rows[column.name] < column.min, f"{column.name} below {column.min:g}")
        if column.max is not None:
            leave_out(rows[column.name] > column.max, f"{column.name} above {column.max:g}")
    if schema.unique_key:
        leave_out(rows.duplicated(list(schema.unique_key), keep="first"), "repeated " + "+".join(schema.unique_key))
    kept = rows[reasons == ""]
    for column in schema.columns:
        if column.dtype == "date":
            kept = kept.assign(**{column.name: pd.to_datetime(kept[column.name]).dt.date})
    return kept.reset_index(drop=True), reasons[reasons != ""].value_counts().to_dict()


def first_units(rows: pd.DataFrame, unit_key: tuple[str, ...], max_rows: int) -> tuple[pd.DataFrame, int, int]:
    """(the rows of the first units in file order whose rows fit in `max_rows`, at least one unit;
    units taken, units in the sample)."""
    units = rows.groupby(list(unit_key), sort=False, dropna=False).ngroup()
    sizes = units.value_counts(sort=False).sort_index()
    taken = max(1, int((sizes.cumsum() <= max_rows).sum()))
    return rows[units < taken].reset_index(drop=True), taken, len(sizes)


def as_the_worker_reads_it(batch: pd.DataFrame) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(batch, preserve_index=False), buffer)
    buffer.seek(0)
    return pd.read_parquet(buffer)


def run_try(workload_name: str, input_path: str, params_text: str, max_rows: int, head: int) -> int:
    from batch_worker.runtime import checked_output, output_names_unit

    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        workload: Workload = get_workload(workload_name)
    except WorkloadError as exc:
        raise UsageError(str(exc)) from None
    try:
        params = json.loads(params_text)
    except ValueError as exc:
        raise UsageError(f"--params is not valid JSON: {exc}") from None
    try:
        params = workload.resolve_params(params)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    mark = time.perf_counter()
    frame = read_sample(input_path, workload.schema)
    timings["read"] = time.perf_counter() - mark
    mark = time.perf_counter()
    rows, left_out = check_sample(frame, workload.schema, input_path)
    timings["check input"] = time.perf_counter() - mark
    if rows.empty:
        raise BadData(f"{input_path}: no usable rows (left out: {left_out or 'none; the file is empty'})")
    batch, units, all_units = first_units(rows, workload.schema.unit_key, max_rows)
    batch = as_the_worker_reads_it(batch)
    print(f"workload {workload.name} v{workload.version}, parameters {json.dumps(params, sort_keys=True)}")
    print(f"input {input_path}: {len(frame)} rows; {sum(left_out.values())} left out"
          + (f" ({', '.join(f'{reason}: {n}' for reason, n in left_out.items())})" if left_out else "")
          + f"; {all_units} units in the rest")
    print(f"batch: {len(batch)} rows of the first {units} unit(s) (--rows {max_rows})")
    combines = workload.combines_batches(params)
    pristine = batch.copy() if combines else None  # the run may change its input in place
    mark = time.perf_counter()
    result = workload.run(batch, params)
    timings["run"] = time.perf_counter() - mark
    mark = time.perf_counter()
    result, _ = checked_output(workload, result, f"workload {workload.name!r} on {input_path}")
    timings["check output"] = time.perf_counter() - mark
    declared = "matches the declared output schema" if workload.output else "no output schema declared"
    print(f"output: {len(result)} rows x {len(result.columns)} columns; {declared}")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(result.head(head).to_string())
    if combines and not output_names_unit(workload):
        print("combines batches: no: the worker runs its batches one at a time, because the declared `output` "
              f"does not name every unit-key column ({', '.join(workload.schema.unit_key)})")
    elif combines:
        mark = time.perf_counter()
        print(f"combines batches: {check_combining(workload, pristine, params, result)}")
        timings["combine check"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    print("timings: " + ", ".join(f"{step} {seconds:.3f} s" for step, seconds in timings.items()))
    return EXIT_OK


class CombiningBroken(Exception):
    """A workload says it combines batches, but a unit's rows depend on the other units of the call."""


def check_combining(workload: Workload, batch: pd.DataFrame, params: dict[str, Any], result: pd.DataFrame) -> str:
    """Run the batch's units in two calls (the first half of its units, then the rest) and compare each unit's
    rows with those of the one call (`result`, checked); a line saying what was checked, or CombiningBroken."""
    from batch_worker.runtime import GroupNotSplit, checked_output, group_units, row_owners

    unit_key = list(workload.schema.unit_key)
    unit = batch.groupby(unit_key, sort=False, dropna=False).ngroup().to_numpy()
    units = int(unit.max()) + 1 if len(unit) else 0
    if units < 2:
        return "not checked (the batch holds one unit; give a sample of two or more)"
    halves = [batch[unit < units // 2].reset_index(drop=True), batch[unit >= units // 2].reset_index(drop=True)]
    try:
        owner = row_owners(group_units(pd.concat(halves, ignore_index=True), unit_key, [len(h) for h in halves]),
                           result, unit_key)
    except GroupNotSplit as exc:
        raise CombiningBroken(f"workload {workload.name!r} says it combines batches, but {exc}: the worker could not "
                              "split its output back by unit; return False from combines_batches, or name the "
                              "unit in every output row") from None
    for half, rows in enumerate(halves):
        alone, _ = checked_output(workload, workload.run(rows.copy(), params), f"workload {workload.name!r}")
        together = result[owner == half].reset_index(drop=True)
        try:
            # the types are compared as the worker writes them (through the declared Arrow schema), where an
            # all-null column is one type whichever pandas dtype holds it
            pd.testing.assert_frame_equal(together, alone, check_dtype=False, check_exact=False, rtol=1e-9, atol=0)
        except AssertionError as exc:
            keys = together[unit_key].drop_duplicates().head(3).to_dict("records")
            raise CombiningBroken(
                f"workload {workload.name!r} says it combines batches, but its units (the first: {keys}) get other rows when "
                f"run without the batch's other units ({str(exc).strip().splitlines()[0]}): their results depend "
                "on the other units of the call, so the worker must not run batches together; return False from "
                "combines_batches") from None
    return f"checked: {units} units in two calls give the rows they get in one"


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="batch-worker try", description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", help="the registered workload's name")
    parser.add_argument("input", help="a CSV or Parquet sample file")
    parser.add_argument("--params", default="{}", help="the workload's parameters as a JSON object (default: {})")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS,
                        help=f"at most this many rows in the batch, whole units only (default {DEFAULT_ROWS})")
    parser.add_argument("--head", type=int, default=10, help="result rows to print (default 10)")
    try:
        args = parser.parse_args(argv)
        if args.rows < 1:
            raise UsageError(f"--rows must be at least 1, got {args.rows}")
        return run_try(args.workload, args.input, args.params, args.rows, args.head)
    except UsageError as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BadData as exc:
        print(f"bad data: {exc}", file=sys.stderr)
        return EXIT_BAD_DATA
    except CombiningBroken as exc:
        print(f"cannot combine batches: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception:  # the workload's own bug: show where
        traceback.print_exc()
        return EXIT_ERROR
