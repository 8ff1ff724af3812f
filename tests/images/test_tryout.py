"""`batch-worker try`: a sample checked and run in-process through the real console script."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from batch_worker import runtime


def batch_worker_try(*args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(["batch-worker", "try", *args], env=env, capture_output=True, text=True, timeout=120)


#: The noop sample has 2 bad rows of 7, more than the pipelines' default share (0.1): the tries that run it allow more.
LENIENT = ["--max-quarantined-share", "0.5"]


def noop_sample(folder: Path) -> Path:
    path = folder / "units.csv"
    path.write_text("unit_id,seq,value\n007,0,1.5\n007,1,2\nu2,0,3\nu3,0,4\nu3,0,4\nu4,-1,2\nu5,0,1\n")
    return path


def test_a_good_sample_runs_one_batch_and_prints_its_head_counts_and_timings(tmp_path):
    done = batch_worker_try("noop", str(noop_sample(tmp_path)), "--rows", "3", *LENIENT)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "input " in out and "7 rows; 2 left out (duplicate: 1, out_of_range:seq: 1); 4 units in the rest" in out
    assert "batch: 3 rows of the first 2 unit(s) (--rows 3)" in out
    assert "output: 2 rows x 3 columns; matches the declared output schema" in out
    head = [line.split() for line in out.splitlines() if line.startswith(("0 ", "1 "))]
    assert head == [["0", "007", "2", "3.5"], ["1", "u2", "1", "3.0"]]  # "007" stays text
    assert "timings: read " in out and " run " in out and " check output " in out
    assert "combines batches: checked: 2 units in two calls give the rows they get in one" in out
    assert " combine check " in out
    alone = batch_worker_try("noop", str(noop_sample(tmp_path)), "--params", '{"sleep_s": 0.01}', *LENIENT)
    assert alone.returncode == 0 and "combines batches" not in alone.stdout  # per-batch work: no groups, no check


def test_a_workload_that_says_it_combines_batches_but_mixes_its_units_fails_the_try(tmp_path, monkeypatch, capsys):
    from batch_worker import tryout
    from batch_worker.workloads import get_workload

    noop = type(get_workload("noop"))
    real_run = noop.run
    # every unit's sum shifted by the rows of the whole call: a result that depends on the other units
    monkeypatch.setattr(noop, "run", lambda self, batch, params: real_run(self, batch, params).assign(
        value_sum=lambda f: f["value_sum"] + len(batch)))
    assert tryout.main(["noop", str(noop_sample(tmp_path)), *LENIENT]) == runtime.EXIT_ERROR
    error = capsys.readouterr().err
    assert "cannot combine batches: workload 'noop' says it combines batches, but its units (the first: [{'unit_id': '007'}" in error
    assert "return False from combines_batches" in error
    monkeypatch.setattr(noop, "run", lambda self, batch, params: real_run(self, batch, params).assign(unit_id="x"))
    assert tryout.main(["noop", str(noop_sample(tmp_path)), *LENIENT]) == runtime.EXIT_ERROR
    assert "output row(s) name no unit of the group by unit_id" in capsys.readouterr().err


def test_the_combine_check_runs_on_the_sample_as_read_and_as_the_worker_would_group(tmp_path, monkeypatch, capsys):
    from batch_worker import tryout
    from batch_worker.workloads import OutputColumn, OutputSchema, get_workload

    noop = type(get_workload("noop"))
    real_run = noop.run

    def doubles_in_place(self, batch, params):  # changes its input, each unit from its own rows only
        batch["value"] *= 2
        return real_run(self, batch, params)

    monkeypatch.setattr(noop, "run", doubles_in_place)
    assert tryout.main(["noop", str(noop_sample(tmp_path)), *LENIENT]) == 0
    assert "combines batches: checked: 4 units in two calls give the rows they get in one" in capsys.readouterr().out
    monkeypatch.setattr(noop, "run", real_run)
    monkeypatch.setattr(noop, "output", OutputSchema((OutputColumn("rows", "int"), OutputColumn("value_sum", "float"))))
    monkeypatch.setattr(noop, "run", lambda self, batch, params: real_run(self, batch, params)[["rows", "value_sum"]])
    assert tryout.main(["noop", str(noop_sample(tmp_path)), *LENIENT]) == 0
    assert ("combines batches: no: the worker runs its batches one at a time, because the declared `output` does "
            "not name every unit-key column (unit_id)") in capsys.readouterr().out


def test_a_parquet_sample_of_the_pricing_workload_runs(tmp_path):
    days = pd.date_range("2026-01-01", periods=40, freq="D")
    frame = pd.DataFrame({"segment": "S", "location": "L", "product": "P", "date": days,
                          "price": [8.0 + (i % 5) * 0.5 for i in range(40)], "quantity": 10.0, "unit_cost": 4.0,
                          "current_price": 9.0})
    frame.to_parquet(tmp_path / "sales.parquet")
    done = batch_worker_try("pricing", str(tmp_path / "sales.parquet"), "--params", '{"holdout_days": 7}')
    assert done.returncode == 0, done.stdout + done.stderr
    assert "output: 1 rows x 16 columns; matches the declared output schema" in done.stdout
    assert '"holdout_days": 7' in done.stdout


def test_a_missing_column_is_bad_data_naming_it(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("unit_id,seq,amount\nu1,0,1.5\n")
    done = batch_worker_try("noop", str(bad))
    assert done.returncode == runtime.EXIT_BAD_DATA
    assert "missing column(s): 'value'" in done.stderr


def test_a_column_of_the_wrong_type_is_bad_data_naming_it(tmp_path):
    frame = pd.DataFrame({"unit_id": ["u1", "u2"], "seq": ["0", "first"], "value": ["high", "2"]})
    frame.to_parquet(tmp_path / "bad.parquet")
    done = batch_worker_try("noop", str(tmp_path / "bad.parquet"))
    assert done.returncode == runtime.EXIT_BAD_DATA
    assert "column 'seq' is declared int but holds str values (e.g. '0')" in done.stderr
    assert "column 'value' is declared float but holds str values (e.g. 'high')" in done.stderr


def test_text_that_is_not_a_value_of_its_column_leaves_its_row_out_named_by_row_unit_and_value(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("unit_id,seq,value\nu1,0,high\nu2,first,2\n")
    done = batch_worker_try("noop", str(bad))
    assert done.returncode == runtime.EXIT_BAD_DATA
    assert f"2 of 2 rows of {bad} were quarantined (100.0%), more than max_quarantined_share=0.1:" in done.stderr
    assert (f"non_numeric:value: 1 (first: {bad} row 1, unit unit_id='u1': value = 'high' is not a number); write "
            "numbers") in done.stderr
    assert f"non_numeric:seq: 1 (first: {bad} row 2, unit unit_id='u2': seq = 'first' is not a number)" in done.stderr


@pytest.mark.slow
def test_a_wrong_parameter_or_workload_is_a_usage_error(tmp_path):
    sample = str(noop_sample(tmp_path))
    unknown = batch_worker_try("noop", sample, "--params", '{"sleep": 1}')
    assert unknown.returncode == runtime.EXIT_USAGE
    assert "cannot run: workload 'noop' parameters: unknown parameter(s) ['sleep']" in unknown.stderr
    out_of_range = batch_worker_try("noop", sample, "--params", '{"sleep_s": -1}')
    assert out_of_range.returncode == runtime.EXIT_USAGE and "sleep_s must be >= 0, got -1" in out_of_range.stderr
    assert batch_worker_try("noop", sample, "--params", "{").returncode == runtime.EXIT_USAGE
    missing = batch_worker_try("nope", sample)
    assert missing.returncode == runtime.EXIT_USAGE and "unknown workload 'nope'; registered: " in missing.stderr
    assert batch_worker_try("noop").returncode == runtime.EXIT_USAGE
    assert batch_worker_try("noop", str(tmp_path / "absent.csv")).returncode == runtime.EXIT_USAGE


def test_bad_data_raised_by_the_workload_exits_65(tmp_path):
    sample = str(noop_sample(tmp_path))
    done = batch_worker_try("noop", sample, "--params", '{"fail_units": ["u2"]}', *LENIENT)
    assert done.returncode == runtime.EXIT_BAD_DATA and "marked as failing by fail_units" in done.stderr


def labels_csv(folder: Path, bad: dict[str, str], rows: int = 20) -> Path:
    """Packaging labels as a CSV, `bad` {column: text} written into the first `rows` rows (of 100)."""
    from operators.pipelines.packaging import packaging_data

    labels = packaging_data.week_labels(0, groups=2, products_per_group=10, labels_per_week=100,
                                        start_date="2026-01-05", seed=3).astype(object)
    for column, text in bad.items():
        labels.loc[:rows - 1, column] = text
    path = folder / "labels.csv"
    labels.to_csv(path, index=False)
    return path


def shape(message: str) -> list[str]:
    """A refusal's lines without what each side can say about a reason's first row, and without prep's sentence
    on where it wrote the quarantine: the counts, reasons, advice and instructions."""
    lines = []
    for line in message.strip().splitlines():
        if " (first: " in line:
            line = line.split(" (first: ")[0] + " ..." + line[line.rindex("); ") + 1:]
        lines.append(line.split(" The quarantined rows are in ")[0])
    return lines


def refusals(tmp_path: Path, sample: Path) -> tuple[str, str]:
    """What `batch-worker try` and the pipeline's prep say about `sample` (each must refuse it)."""
    from batch_worker.workloads import get_workload

    from operators.kit import prep

    done = batch_worker_try("packaging", str(sample))
    assert done.returncode == runtime.EXIT_BAD_DATA, done.stdout + done.stderr
    try:
        prep.prepare(str(sample), get_workload("packaging").schema, str(tmp_path / "prep"), 4)
    except prep.PrepError as refused:
        return done.stderr.removeprefix("bad data: "), str(refused)
    raise AssertionError(f"prep accepted {sample}")


def test_a_fraction_in_an_int_column_is_never_rounded_and_is_named_by_row_unit_and_value(tmp_path):
    sample = labels_csv(tmp_path, {"damaged": "0.5"})
    done = batch_worker_try("packaging", str(sample))
    assert done.returncode == runtime.EXIT_BAD_DATA
    first = pd.read_csv(sample).iloc[0]
    assert f"20 of 100 rows of {sample} were quarantined (20.0%), more than max_quarantined_share=0.1:" in done.stderr
    assert (f"non_integer:damaged: 20 (first: {sample} row 1, unit package_type={first['package_type']!r}, "
            f"product_group={first['product_group']!r}: damaged = '0.5' is not a whole number (the column is "
            "declared int)); write whole numbers: the column is declared int, and a fraction is never rounded"
            ) in done.stderr
    # allowed a larger share, the try leaves those rows out: none of them is trained on as 0 or 1
    allowed = batch_worker_try("packaging", str(sample), "--max-quarantined-share", "0.25")
    assert allowed.returncode == 0, allowed.stderr
    assert "100 rows; 20 left out (non_integer:damaged: 20)" in allowed.stdout


def test_try_refuses_a_sample_with_the_message_prepare_refuses_a_run_with(tmp_path):
    sample = labels_csv(tmp_path, {"fragility": "1.5", "weight_kg": "heavy"}, rows=12)
    tried, prepared = refusals(tmp_path, sample)
    assert shape(tried) == shape(prepared)
    assert shape(tried)[0] == f"12 of 100 rows of {sample} were quarantined (12.0%), more than max_quarantined_share=0.1:"
    assert shape(tried)[1].startswith("  non_numeric:weight_kg: 12 ...; write numbers")


def test_try_and_prepare_refuse_a_fraction_in_an_int_column_alike(tmp_path):
    tried, prepared = refusals(tmp_path, labels_csv(tmp_path, {"damaged": "0.5"}))
    assert shape(tried) == shape(prepared)
