"""A workload's output: held to its declared schema, and split back by unit into the batches of a group.

The worker (`batch_worker.runtime`) runs small batches in groups and splits a group's output back into each
batch's own result; `batch-worker try` (`batch_worker.tryout`) checks a workload's output and its grouping the
same way, before any run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from batch_worker.workloads import Workload

if TYPE_CHECKING:
    import pyarrow as pa


def checked_frame(workload: Workload, result: Any, where: str) -> pd.DataFrame:
    """The workload's result: a DataFrame (TypeError otherwise) held to its declared output (OutputSchemaError
    otherwise, naming `where`)."""
    if not isinstance(result, pd.DataFrame):
        raise TypeError(f"workload {workload.name!r} returned {type(result).__name__}, not a DataFrame")
    return result if workload.output is None else workload.output.enforce(result, where)


def checked_output(workload: Workload, result: Any, where: str) -> tuple[pd.DataFrame, pa.Schema | None]:
    """`checked_frame`, and the declared output's Arrow schema (None without one)."""
    schema = workload.output.arrow_schema() if workload.output is not None else None
    return checked_frame(workload, result, where), schema


def output_names_unit(workload: Workload) -> bool:
    """Whether the workload's declared output names every unit-key column: a group's output is split back
    into its batches by them, so without them its batches run one at a time."""
    return workload.output is not None and set(workload.schema.unit_key) <= set(workload.output.names)


class GroupNotSplit(Exception):
    """A group's output cannot be split back into its batches (a row names no unit of the group)."""


def _key_index(frame: pd.DataFrame, unit_key: list[str]) -> pd.Index:
    keys = frame[unit_key]
    return pd.Index(keys.iloc[:, 0]) if len(unit_key) == 1 else pd.MultiIndex.from_frame(keys)


def group_units(batch: pd.DataFrame, unit_key: list[str], rows: list[int]) -> tuple[pd.Index, np.ndarray]:
    """The units of a group's rows (`batch`: its batches' rows, `rows` of each, one after the other): an
    index of their keys and, for each unit, the position in the group of the batch holding it."""
    position = np.repeat(np.arange(len(rows)), rows)
    units = _key_index(batch, unit_key)
    first = ~units.duplicated()
    if len(batch[unit_key].assign(_position=position).drop_duplicates()) != int(first.sum()):
        raise GroupNotSplit("a unit is in more than one batch of the group")
    return units[first], position[first]


def row_owners(units: tuple[pd.Index, np.ndarray], result: pd.DataFrame, unit_key: list[str]) -> np.ndarray:
    """For each row of a group's output, the position in the group of the batch holding its unit."""
    index, position = units
    at = index.get_indexer(_key_index(result, unit_key))
    if (at < 0).any():
        raise GroupNotSplit(f"{int((at < 0).sum())} output row(s) name no unit of the group by {', '.join(unit_key)}")
    return position[at]
