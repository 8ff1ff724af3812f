"""The kernel-limit benchmark: the pipeline and its kernel alone give the same results, and the figures parse."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from benchmarks import kernel_limit

#: The last line as the benchmark's docstring states it, written out here rather than taken from the module.
FIGURES_LINE = re.compile(
    r"rows=\d+ units=\d+ batches=\d+ kernel_s=[\d.]+ kernel_units_per_s=\d+ pipeline_s=[\d.]+ "
    r"pipeline_units_per_s=\d+ pipeline_vs_kernel=[\d.]+ target=(none|[\d.]+) met=(yes|no|n/a)")


def test_shares_balance_rows_and_leave_no_process_empty():
    manifest = pd.DataFrame({"batch_id": [0, 1, 2, 3], "uri": ["a", "b", "c", "d"], "rows": [10, 40, 30, 20]})
    assert kernel_limit.shares(manifest, 2) == [["b", "a"], ["c", "d"]]
    assert kernel_limit.shares(manifest, 8) == [["b"], ["c"], ["d"], ["a"]]


def test_the_target_follows_the_input_rows():
    line = kernel_limit.figures_line(1_000_000, 100, 32, 2.0, 4.0)
    assert kernel_limit.parse_figures(line)["pipeline_vs_kernel"] == "0.50"
    assert line.endswith("target=none met=n/a")
    assert kernel_limit.figures_line(2_800_000, 100, 64, 2.0, 4.0).endswith("target=0.50 met=yes")
    assert kernel_limit.figures_line(14_000_000, 100, 512, 2.0, 4.0).endswith("target=0.70 met=no")
    with pytest.raises(ValueError, match="not a line of figures"):
        kernel_limit.parse_figures(line + " extra=1")


@pytest.mark.system
@pytest.mark.timeout(600)
def test_the_pipeline_and_its_kernel_agree_and_the_figures_parse(airflow_db, local_aws, data_root, tmp_path,
                                                                   monkeypatch, capsys):
    from benchmarks.pricing_vs_monolith import pricing_pipeline

    monkeypatch.setenv("AIRBATCH_INPUT_PREFIXES", "")  # set by the run; restored after the test, as DATA_ROOT is
    _, pipeline = pricing_pipeline(20_000, tmp_path, vcpus=None)
    assert kernel_limit.against_kernel(pipeline, 20_000, processes=2) == 0

    lines = capsys.readouterr().out.strip().splitlines()
    assert "outputs: equal (every declared column; floats within 1e-6)" in lines
    assert any(line.startswith("breakdown against the kernel's ") for line in lines)
    [cpu] = [line for line in lines if line.startswith("cpu: ")]
    spent = re.match(r"cpu: pipeline (\S+) CPU-s \(prepare (\S+), run_shard (\S+), evaluate (\S+), rest (\S+)\) "
                     r"against the kernel's (\S+) CPU-s; on \d+ core\(s\) .* at most (\S+)$", cpu)
    assert spent, cpu
    pipeline_cpu, prepare, run_shard, evaluate, rest, kernel_cpu, most = map(float, spent.groups())
    assert prepare > 0 and run_shard > 0  # the shard's Batch jobs are counted: they read and run
    assert kernel_cpu >= 0  # a few milliseconds on these 20,000 rows
    assert pipeline_cpu == pytest.approx(prepare + run_shard + evaluate + rest, abs=0.3)
    assert most > 0
    assert FIGURES_LINE.fullmatch(lines[-1]), lines[-1]
    figures = kernel_limit.parse_figures(lines[-1])
    assert figures["rows"] == "20000" and int(figures["units"]) == len(pipeline.outputs) > 0
    assert float(figures["pipeline_vs_kernel"]) == pytest.approx(
        float(figures["kernel_s"]) / float(figures["pipeline_s"]), abs=0.01)

    # a changed result is found: the comparison covers the workload's declared columns
    workload, _ = kernel_limit.shard_workload(pipeline.fanout)
    changed = pipeline.outputs.assign(n_points=pipeline.outputs["n_points"] + 1)
    assert kernel_limit.differences(workload, pipeline.outputs, changed) == [
        f"n_points differs for {len(changed)} units"]
