"""Tests of operators.kit.prep.reading: what DuckDB reads, reserved names, partition folders."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from batch_worker.schema import Column, InputSchema

from operators.kit.prep import prepare
from tests.operators.kit.prep.samples import CSV_HEADER, DAY0, SCHEMA, batches, good_lines, quarantine_of, sales


def test_nan_in_parquet_is_quarantined_despite_statistics_without_nan(tmp_path):
    frame = sales()
    frame.loc[[3, 4], "quantity"] = np.nan  # writers leave NaN out of the min/max statistics
    frame.loc[5, "quantity"] = 5000.0
    table = pa.Table.from_pandas(frame, preserve_index=False)  # from_pandas turns NaN into NULL; put NaN back
    table = table.set_column(table.schema.get_field_index("quantity"), "quantity",
                             pa.array(frame["quantity"].to_numpy()))
    assert table["quantity"].null_count == 0
    pq.write_table(table, tmp_path / "in.parquet")
    result = prepare(str(tmp_path / "in.parquet"), SCHEMA, str(tmp_path / "out"), 8)
    assert result.quarantined_by_reason == {"null:quantity": 2, "out_of_range:quantity": 1}
    assert not batches(result)["quantity"].isna().any()


def test_input_columns_named_like_prep_internals_cannot_collide(tmp_path):
    frame = sales().assign(reason="the supplier's reason", _dup_rank=7, bucket="b", filename="f", h=1)
    frame.loc[0, "price"] = -1.0
    frame = pd.concat([frame, frame.iloc[[5, 5]]], ignore_index=True)
    frame.to_parquet(tmp_path / "in.parquet")
    result = prepare(str(tmp_path / "in.parquet"), SCHEMA, str(tmp_path / "out"), 8)
    assert result.quarantined_by_reason == {"duplicate": 2, "out_of_range:price": 1}
    quarantine = quarantine_of(result)
    assert set(quarantine["reason"]) == {"the supplier's reason"}
    assert sorted(quarantine["_prep_reason"]) == ["duplicate", "duplicate", "out_of_range:price"]
    assert len(batches(result)) == len(sales()) - 1

    for name in ("_prep_reason", "_PREP_file", "_prep_anything"):
        (tmp_path / "bad.csv").write_text(CSV_HEADER.rstrip("\n") + f",{name}\n" + "".join(
            line.rstrip("\n") + ",x\n" for line in good_lines(5)))
        with pytest.raises(ValueError, match=rf"\['{name}'\] start with '_prep_'.*rename them") as error:
            prepare(str(tmp_path / "bad.csv"), SCHEMA, str(tmp_path / "refused"), 8)
        assert "bad.csv" in str(error.value)
        assert not (tmp_path / "refused").exists()
    with pytest.raises(ValueError, match="'_prep_x'.*reserved"):
        Column("_prep_x", "string")
    with pytest.raises(ValueError, match=r"\['Bucket'\] clash"):
        prepare(str(tmp_path / "in.parquet"), InputSchema(columns=(*SCHEMA.columns, Column("Bucket", "string")),
                                                          unit_key=("segment",)), str(tmp_path / "x"), 8)


def test_date_folders_never_silently_override_a_date_column_in_the_files(tmp_path):
    frame = sales()
    for day, rows in frame.groupby("date"):
        directory = tmp_path / "hive" / f"date={day.isoformat()}"
        directory.mkdir(parents=True)
        rows.to_parquet(directory / "part-0.parquet")
    agreed = prepare(str(tmp_path / "hive"), SCHEMA, str(tmp_path / "out"), 8)
    assert agreed.rows_ok == len(frame)
    misplaced = tmp_path / "hive" / "date=2026-01-02" / "part-1.parquet"
    frame[frame["date"] == DAY0 + dt.timedelta(days=8)].assign(product="X").to_parquet(misplaced)
    from operators.kit.prep import PrepError

    with pytest.raises(PrepError, match=r"part-1.parquet: column 'date' holds '2026-01-09' but the file sits in folder "
                                        r"date=2026-01-02 \(40 such row\(s\).*move each file"):
        prepare(str(tmp_path / "hive"), SCHEMA, str(tmp_path / "out"), 8)
