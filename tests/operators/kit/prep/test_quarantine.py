"""Tests of operators.kit.prep.quarantine: the limits and the messages that explain them."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from operators.kit.prep import prepare
from tests.operators.kit.prep.samples import CSV_HEADER, SCHEMA, good_lines


def test_more_than_max_quarantined_share_fails_with_the_counts_by_reason(tmp_path):
    lines = good_lines(80)
    for i in range(0, 16):
        lines[i] = lines[i].replace(f"{1 + i % 40}.5,", "n/a,", 1)
    lines[20] = "S0,P0020,2026-01-01,-3,4,yes\n"
    lines[21] = "S0,P0021\n"
    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(lines))
    from operators.kit.prep import PrepError

    with pytest.raises(PrepError) as error:
        prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8)
    message = str(error.value)
    assert "18 of 80 rows" in message and "22.5%" in message and "max_quarantined_share=0.1" in message
    assert f"non_numeric:price: 16 (first: {tmp_path / 'in.csv'})" in message
    assert f"malformed:missing_columns: 1 (first: {tmp_path / 'in.csv'} line 23)" in message
    assert "out_of_range:price: 1" in message and "raise the run parameter max_quarantined_share" in message
    assert (tmp_path / "out" / "quarantine.parquet").exists() and not (tmp_path / "out" / "manifest.parquet").exists()
    assert len(pd.read_parquet(tmp_path / "out" / "quarantine.parquet")) == 18

    assert prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, max_quarantined_share=0.25).rows_ok == 62
    for share in (1.5, -0.1, True, "0.2"):
        with pytest.raises(ValueError, match="max_quarantined_share must be a number in 0..1"):
            prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "x"), 8, max_quarantined_share=share)
    # Only the rows in the window count: bad rows outside it are not part of the run.
    in_window = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "w"), 8,
                        window=("2026-01-02", "2026-01-06"), max_quarantined_share=0.25)
    assert in_window.rows_in < 80


def test_an_empty_or_unusable_window_says_why(tmp_path):
    from operators.kit.prep import PrepError

    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(good_lines(20)))
    with pytest.raises(PrepError, match=r"no rows in the window \[2026-03-01, 2026-03-08\) of .*in.csv: its 'date' "
                                        r"values run from 2026-01-01 to 2026-01-05 \(20 rows\)"):
        prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, window=("2026-03-01", "2026-03-08"))
    (tmp_path / "bad.csv").write_text(CSV_HEADER + "".join(
        f"S0,P{i:04d},2026-01-0{1 + i % 5},-1,3,yes\n" for i in range(20)))
    with pytest.raises(PrepError) as error:
        prepare(str(tmp_path / "bad.csv"), SCHEMA, str(tmp_path / "out"), 8, window=("2026-01-01", "2026-01-03"),
                max_quarantined_share=1)
    message = str(error.value)
    assert message.startswith("no usable rows in the window [2026-01-01, 2026-01-03) of ")
    assert f"out_of_range:price: 8 (first: {tmp_path / 'bad.csv'})" in message


@pytest.mark.parametrize("dag_file", ["units_of_work.py", "pricing_optimization.py"])
def test_both_dags_pass_max_quarantined_share_to_prepare(dag_file, data_root):
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    from operators.kit.prep import PrepError

    dag = next(iter(DagBag(dag_folder=str(Path(__file__).parents[4] / "dags" / dag_file)).dags.values()))
    assert dag.params["max_quarantined_share"] == 0.1
    source = data_root / "in.csv"
    bad = ["n/a" if i % 4 == 0 else "2.5" for i in range(40)]  # 25% of the rows are bad
    if dag_file == "units_of_work.py":
        text = "unit_id,seq,value\n" + "".join(f"u{i},0,{value}\n" for i, value in enumerate(bad))
    else:
        text = "segment,location,product,date,price,quantity,unit_cost,current_price\n" + "".join(
            f"S0,L1,P{i:04d},2026-01-0{1 + i % 5},{value},3,1,2\n" for i, value in enumerate(bad))
    source.write_text(text)
    params = dag.params.dump()
    params.update(input_uri=str(source), bucket_count=4)
    prepare_task = dag.get_task("prepare").python_callable
    kwargs = {"params": params, "dag": dag, "run_id": "manual__1", "source": {"uri": str(source), "started_at": 0.0},
              "data_interval_end": pendulum.datetime(2026, 1, 7, tz="UTC")}
    with pytest.raises(PrepError, match=r"10 of 40 rows.*25.0%.*max_quarantined_share=0.1"):
        prepare_task(**kwargs)
    params["max_quarantined_share"] = 0.3
    assert prepare_task(**kwargs)["rows_quarantined"] == 10
