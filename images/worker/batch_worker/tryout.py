"""`batch-worker try`: run a workload on a sample, in-process and in seconds, before any pipeline run.

    batch-worker try <workload> <input file> [--params JSON] [--rows N] [--head N] [--max-quarantined-share S]

1. reads a CSV (every value as text, as prep reads it) or Parquet sample;
2. checks it against the workload's input schema with prep's rules: a missing column (or a
   Parquet column of another type) is named and stops here; every value is read by
   `Column.read_text` (the one definition prep's SQL translates: "0.5" in an int column is
   `non_integer`, never rounded), and the rows prep would quarantine (null, non_finite,
   non_numeric, non_integer, non_date, out_of_range, duplicate, conflicting_duplicate) are counted
   by reason, each with its first row, unit and value, and left out; when they are more than
   --max-quarantined-share of the rows (the pipelines' default, 0.1), the sample is refused with
   prep's message (`schema.quarantine_refusal`), as a run on it would be;
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

from batch_worker.exit_codes import EXIT_BAD_DATA, EXIT_ERROR, EXIT_OK, EXIT_USAGE
from batch_worker.output import GroupNotSplit, checked_output, group_units, output_names_unit, row_owners
from batch_worker.schema import (BLANKS, CONFLICTING_DUPLICATE, DEFAULT_MAX_QUARANTINED_SHARE, DUPLICATE, Column,
                                 InputSchema, quarantine_refusal)
from batch_worker.workloads import BadData, Workload, WorkloadError, get_workload

DEFAULT_ROWS = 10_000


class UsageError(Exception):
    """The command line or the configuration is wrong (exit 64)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2; usage errors are 64 (EX_USAGE) like the runtime's
        self.print_usage(sys.stderr)
        raise UsageError(message)


def read_sample(path: str, schema: InputSchema) -> pd.DataFrame:
    """The sample file as a table; every value of a CSV stays text, to be read by the schema's rules ("007" is not
    7, "0.5" is not rounded), an empty field None."""
    file = Path(path)
    if not file.exists():
        raise UsageError(f"input file {path} does not exist")
    suffix = file.suffix.lower()
    try:
        if suffix in (".csv", ".txt") or file.name.lower().endswith(".csv.gz"):
            frame = pd.read_csv(file, dtype=str, keep_default_na=False, na_values=[])
            return frame.astype(object).where(frame != "", None)
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


#: A reason kind's place in prep's order (nulls, then infinities, then text that does not parse, then ranges).
_RANK = {"null": 0, "non_finite": 1, "non_numeric": 2, "non_integer": 2, "non_date": 2, "out_of_range": 3}


def check_sample(frame: pd.DataFrame, schema: InputSchema, source: str,
                 max_quarantined_share: float = DEFAULT_MAX_QUARANTINED_SHARE,
                 text: bool = False) -> tuple[pd.DataFrame, dict[str, int]]:
    """The usable rows, typed, and the count of left-out rows by reason, with prep's reasons and rules.

    `text`: the values are a CSV's text, each read by `Column.read_text`; otherwise typed (Parquet), each column
    checked against its declared type as a whole (a mismatch is named and stops here), then each value by
    `Column.check_value`. BadData names every bad column, or refuses the sample with `quarantine_refusal` when more
    than `max_quarantined_share` of its rows are bad."""
    missing = [c.name for c in schema.columns if c.name not in frame.columns]
    problems = [f"missing column(s): {', '.join(repr(n) for n in missing)} (has {list(frame.columns)})"] if missing else []
    typed: dict[str, pd.Series] = {}
    for column in schema.columns:
        if column.name in frame.columns and not text:
            values, problem = typed_column(frame[column.name], column)
            if problem:
                problems.append(f"column {column.name!r} {problem}")
            else:
                typed[column.name] = values
    if problems:
        raise BadData(f"{source} does not match the input schema: " + "; ".join(problems))
    keys = set(schema.unit_key) | set(schema.unique_key)
    best = [(9, 0, None)] * len(frame)  # per row: (rank, column position, reason kind) of its first bad value
    values: dict[str, list] = {}
    for position, column in enumerate(schema.columns):
        raw = frame[column.name].tolist()
        if text and column.dtype == "string" and column.name in keys:
            raw = [v.strip(BLANKS) if isinstance(v, str) else v for v in raw]  # prep trims key strings
        read = [column.read_text(v) for v in raw] if text else \
            [(v, column.check_value(v)) for v in typed[column.name].astype(object).where(typed[column.name].notna(),
                                                                                          None).tolist()]
        values[column.name] = [v for v, _ in read]
        for row, (_, kind) in enumerate(read):
            if kind and (_RANK[kind], position) < best[row][:2]:
                best[row] = (_RANK[kind], position, kind)
    reasons = [f"{kind}:{schema.columns[position].name}" if kind else None for _, position, kind in best]
    firsts: dict[str, str] = {}
    for row, reason in enumerate(reasons):
        if reason and reason not in firsts:
            column = schema.columns[best[row][1]]
            firsts[reason] = column.describe_value(best[row][2], frame[column.name].iloc[row],
                                                   where(source, row, schema, frame))
    rows = pd.DataFrame(values, index=frame.index, columns=list(schema.names), dtype=object)
    if schema.unique_key:
        _mark_duplicates(rows, reasons, schema, source, frame, firsts)
    bad = pd.Series(reasons, index=frame.index, dtype=object)
    left_out = bad.dropna().value_counts().to_dict()
    refusal = quarantine_refusal(f"of {source}", len(frame), left_out, firsts, max_quarantined_share)
    if refusal:
        raise BadData(refusal)
    kept = rows[bad.isna()].reset_index(drop=True)
    for column in schema.columns:  # the types the worker reads from the batch's Parquet
        series = kept[column.name]
        if column.dtype == "string":
            kept[column.name] = series.astype("string")
        elif column.dtype == "int":
            kept[column.name] = series.astype("Int64")
        elif column.dtype == "float":
            kept[column.name] = series.astype("float64")
        else:
            kept[column.name] = pd.to_datetime(series).dt.date
    return kept, left_out


def where(source: str, row: int, schema: InputSchema, frame: pd.DataFrame) -> str:
    """`source row N, unit k=v, ...`: row N is the file's N-th data row (the header not counted)."""
    unit = ", ".join(f"{k}={frame[k].iloc[row]!r}" for k in schema.unit_key if k in frame.columns)
    return f"{source} row {row + 1}" + (f", unit {unit}" if unit else "")


def _mark_duplicates(rows: pd.DataFrame, reasons: list, schema: InputSchema, source: str, frame: pd.DataFrame,
                     firsts: dict[str, str]) -> None:
    """Prep's rule among the rows still good: rows sharing a unique key and equal in every schema column keep one
    (`duplicate` for the others); rows sharing a key that differ are all `conflicting_duplicate`."""
    good = [row for row, reason in enumerate(reasons) if reason is None]
    if not good:
        return
    candidates = rows.iloc[good].astype(object)
    key = list(schema.unique_key)
    groups = candidates.groupby(key, sort=False, dropna=False)
    for _, group in groups:
        if len(group) < 2:
            continue
        distinct = len(group.drop_duplicates())
        for number, index in enumerate(group.index):
            row = frame.index.get_loc(index)
            reason = CONFLICTING_DUPLICATE if distinct > 1 else (DUPLICATE if number else None)
            if reason:
                reasons[row] = reason
                firsts.setdefault(reason, f"{where(source, row, schema, frame)}: "
                                          + "+".join(key) + " = " + repr(tuple(group.loc[index, key])))


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


def run_try(workload_name: str, input_path: str, params_text: str, max_rows: int, head: int,
            max_quarantined_share: float = DEFAULT_MAX_QUARANTINED_SHARE) -> int:
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
    text = not Path(input_path).suffix.lower() in (".parquet", ".pq") and not Path(input_path).is_dir()
    rows, left_out = check_sample(frame, workload.schema, input_path, max_quarantined_share, text=text)
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
    parser.add_argument("--max-quarantined-share", type=float, default=DEFAULT_MAX_QUARANTINED_SHARE,
                        help="refuse the sample when a larger share of its rows is bad, as prepare refuses a run "
                             f"(the run param max_quarantined_share; default {DEFAULT_MAX_QUARANTINED_SHARE})")
    try:
        args = parser.parse_args(argv)
        if args.rows < 1:
            raise UsageError(f"--rows must be at least 1, got {args.rows}")
        if not 0 <= args.max_quarantined_share <= 1:  # NaN fails both comparisons
            raise UsageError(f"--max-quarantined-share must be a number in 0..1, got {args.max_quarantined_share}")
        return run_try(args.workload, args.input, args.params, args.rows, args.head, args.max_quarantined_share)
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
