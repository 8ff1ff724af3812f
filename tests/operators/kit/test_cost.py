"""Cost: attempts' times x the job's vCPUs/GPUs x the rate table; per run, shard and unit; the budget check; a run's
cost written from its jobs on the local endpoint."""
from __future__ import annotations

import json

import pytest

from operators.kit import cost

from tests.operators.kit.batch_jobs import submit, wait_for

CPU_QUEUE = "arn:aws:batch:us-east-1:123456789012:job-queue/airbatch-cpu"
GPU_QUEUE = "arn:aws:batch:us-east-1:123456789012:job-queue/airbatch-gpu"
CPU_DEF = "arn:aws:batch:us-east-1:123456789012:job-definition/airbatch-worker-cpu:1"
GPU_DEF = "arn:aws:batch:us-east-1:123456789012:job-definition/airbatch-worker-gpu:1"


def child(job_id, queue, definition, attempts, requirements=None):
    container = {"resourceRequirements": requirements} if requirements else {}
    return {"jobId": job_id, "jobQueue": queue, "jobDefinition": definition, "container": container,
            "attempts": [{"startedAt": a, "stoppedAt": b} for a, b in attempts]}


def describer(jobs):
    calls = []

    def describe(ids):
        assert len(ids) <= cost.DESCRIBE_PAGE
        calls.append(list(ids))
        return [jobs[i] for i in ids if i in jobs]

    return describe, calls


def test_the_shipped_price_table_is_valid_and_prices_both_queues():
    rates_table = cost.load_rates()
    resources = cost.load_resources()
    for queue in resources["job_queues"]:
        family, model = cost.queue_rates(queue, resources)
        assert family in rates_table["families"] and model in cost.MODELS


def test_a_run_costs_every_attempt_of_every_array_child_per_shard_and_per_unit():
    rates_table = cost.load_rates()
    rates = rates_table["families"]["c6i"]["spot"]
    jobs = {
        "p0": {"jobId": "p0", "arrayProperties": {"size": 2}, "jobQueue": CPU_QUEUE},
        # a Spot interruption and its retry: both attempts count
        "p0:0": child("p0:0", CPU_QUEUE, CPU_DEF, [(0, 1_800_000), (2_000_000, 3_800_000)]),
        "p0:1": child("p0:1", CPU_QUEUE, CPU_DEF, [(0, 3_600_000)], [{"type": "VCPU", "value": "2"}]),
        "single": child("single", CPU_QUEUE, CPU_DEF, [(0, 360_000)]),
    }
    describe, calls = describer(jobs)
    summaries = [{"shard": 0, "job_ids": ["p0"], "units": 100, "batches": 10},
                 {"shard": 1, "job_ids": ["single"], "units": 50, "batches": 5}]
    result = cost.run_cost(summaries, describe, local=True)
    shard0 = (0.5 + 0.5) * 1 * rates["vcpu_hour"] + 1.0 * 2 * rates["vcpu_hour"]
    shard1 = 0.1 * rates["vcpu_hour"]
    assert result["shards"][0]["cost"] == pytest.approx(shard0)
    assert result["shards"][0]["vcpu_hours"] == pytest.approx(3.0) and result["shards"][0]["jobs"] == 2
    assert result["shards"][1]["cost"] == pytest.approx(shard1)
    assert result["cost"] == pytest.approx(shard0 + shard1)
    assert result["per_unit"] == pytest.approx((shard0 + shard1) / 150)
    assert result["per_batch"] == pytest.approx((shard0 + shard1) / 15)
    assert result["gpu_hours"] == 0 and result["queues"] == ["airbatch-cpu"]
    assert "local endpoint" in result["label"] and "estimate" in result["label"]
    assert ["p0:0", "p0:1"] in calls  # children described by id, not guessed


def test_a_shard_that_costed_its_own_jobs_is_added_up_without_describing_them_again():
    jobs = {
        "p0": {"jobId": "p0", "arrayProperties": {"size": 2}, "jobQueue": CPU_QUEUE},
        "p0:0": child("p0:0", CPU_QUEUE, CPU_DEF, [(0, 1_800_000)]),
        "p0:1": child("p0:1", CPU_QUEUE, CPU_DEF, [(0, 3_600_000)]),
        "single": child("single", CPU_QUEUE, CPU_DEF, [(0, 360_000)]),
    }
    describe, calls = describer(jobs)
    own = cost.shard_cost(["p0"], describe)
    assert own["jobs"] == 2 and own["vcpu_hours"] == pytest.approx(1.5) and own["queues"] == ["airbatch-cpu"]
    calls.clear()
    summaries = [{"shard": 0, "job_ids": ["p0"], "units": 100, "batches": 10, "cost": own},
                 # a shard that could not cost itself (its describe failed then), and one from before shards did
                 {"shard": 1, "job_ids": ["single"], "units": 50, "batches": 5, "cost": None},
                 {"shard": 2, "job_ids": ["single"], "units": 50, "batches": 5}]
    result = cost.run_cost(summaries, describe, local=True)
    assert calls == [["single"], ["single"]]  # only the shards without their own figures
    described = cost.shard_cost(["single"], describe)
    assert result["shards"][0]["cost"] == pytest.approx(own["cost"]) and result["shards"][0]["jobs"] == 2
    assert result["shards"][1]["cost"] == result["shards"][2]["cost"] == pytest.approx(described["cost"])
    assert result["cost"] == pytest.approx(own["cost"] + 2 * described["cost"])


def test_gpu_hours_use_the_job_definitions_gpus_and_the_gpu_rate():
    rates_table = cost.load_rates()
    rates = rates_table["families"]["g5"]["spot"]
    jobs = {"g": child("g", GPU_QUEUE, GPU_DEF, [(0, 1_800_000)])}
    describe, _ = describer(jobs)
    result = cost.run_cost([{"shard": 0, "job_ids": ["g"], "units": 4, "batches": 1}], describe, local=False)
    assert result["gpu_hours"] == pytest.approx(0.5)
    assert result["vcpu_hours"] == pytest.approx(0.5 * 4)  # airbatch-worker-gpu asks for 4 vCPUs
    assert result["cost"] == pytest.approx(0.5 * (4 * rates["vcpu_hour"] + rates["gpu_hour"]))
    assert "not a bill" in result["label"]


def test_an_attempt_still_running_is_not_counted():
    job = {"attempts": [{"startedAt": 0, "stoppedAt": 1000}, {"startedAt": 2000}]}
    assert cost.attempt_seconds(job) == (1.0, 1)


def test_a_price_table_with_a_bad_rate_names_the_file_and_field(tmp_path):
    path = tmp_path / "batch_rates.json"
    path.write_text(json.dumps({"families": {"c6i": {"on_demand": {"vcpu_hour": 0.04, "gpu_hour": 0},
                                                     "spot": {"vcpu_hour": "cheap", "gpu_hour": 0}}}}))
    with pytest.raises(cost.RateTableError, match=r"batch_rates.json: families.c6i.spot.vcpu_hour must be a number"):
        cost.load_rates(path)


def test_money_is_rounded_for_people():
    assert cost.money(1234.5678) == "$1,234.57"
    assert cost.money(0.0123456) == "$0.01"  # cents from one cent up
    assert cost.money(0.26) == "$0.26" and cost.money(0) == "$0.00" and cost.money(-0.5) == "-$0.50"
    assert cost.money(0.00999) == "$0.01"  # what rounds to a cent is a cent
    assert cost.money(None) == "n/a" and cost.money(float("nan")) == "n/a"


def test_money_below_a_cent_never_shows_an_exponent():
    # a run on the local endpoint costs millionths of a dollar: it was shown as $2.6e-06
    assert cost.money(2.6e-06) == "$0.0000026"
    assert cost.money(0.0049) == "$0.0049"
    assert cost.money(1e-9) == "< $0.000001"
    assert cost.money(2.6e-06, "EUR") == "EUR 0.0000026"


def test_hours_never_show_an_exponent_either():
    assert cost.quantity(7.2e-07) == "0.00000072" and cost.quantity(0.000723456) == "0.000723"
    assert cost.quantity(1.5) == "1.5" and cost.quantity(12345.6) == "12,346" and cost.quantity(0) == "0"


def test_the_cost_line_of_a_local_run_reads_in_cents_and_plain_decimals():
    line = cost.cost_line({"cost": 2.6e-06, "per_unit": 1.3e-08, "vcpu_hours": 7.2e-05, "gpu_hours": 0.0,
                           "label": cost.label(True)})
    assert line.startswith("cost $0.0000026 (< $0.000001 per unit), 0.000072 vCPU-hours, 0 GPU-hours; ")
    assert "e-0" not in line


def write_cost(folder, run, queue, per_batch, at):
    (folder / run).mkdir(parents=True)
    (folder / run / cost.COST_FILE).write_text(json.dumps({"queues": [queue], "per_batch": per_batch,
                                                           "computed_at": at}))


def test_the_budget_uses_the_last_comparable_run_and_refuses_before_submission(tmp_path):
    runs = tmp_path / "runs" / "pricing"
    write_cost(runs, "old", "airbatch-cpu", 0.5, 1)
    write_cost(runs, "newer", "airbatch-cpu", 0.01, 2)
    write_cost(runs, "gpu", "airbatch-gpu", 9.0, 3)
    write_cost(runs, "this", "airbatch-cpu", 100.0, 4)  # the run itself (a cleared plan) is not compared
    last = cost.last_comparable_cost(str(runs), "airbatch-cpu", exclude_run_dir=str(runs / "this"))
    assert last["per_batch"] == 0.01
    assert "estimate $30.00 for 3,000 batches" in cost.check_budget(40, 3000, last)
    with pytest.raises(ValueError, match=r"estimate \$30.00 .* budget \$20.00: over budget, nothing was submitted"):
        cost.check_budget(20, 3000, last)
    assert cost.check_budget(None, 3000, last) is None
    assert "no earlier run" in cost.check_budget(1, 10, cost.last_comparable_cost(str(runs), "airbatch-none"))


def test_a_pipelines_plan_refuses_a_run_over_its_budget_before_reading_the_manifest(tmp_path):
    from operators.kit.pipeline import UnitPipeline

    runs = tmp_path / "runs" / "units_of_work"
    write_cost(runs, "earlier", "airbatch-cpu", 0.01, 1)
    pipeline = UnitPipeline("units_of_work", workload="noop")
    assert pipeline.params["budget"].value is None
    prepared = {"run_root": str(runs / "now"), "batches": 3000, "manifest_uri": str(tmp_path / "no-manifest")}
    with pytest.raises(ValueError, match="over budget, nothing was submitted"):
        pipeline.plan(prepared, {"budget": 20, "queue": "airbatch-cpu"})


def test_a_run_written_on_the_local_endpoint_describes_the_shard_that_did_not_cost_itself(local_aws, tmp_path):
    job_id = submit(local_aws, "cost-describer", "pass", size=2)
    wait_for(local_aws, job_id)
    summaries = [{"shard": 0, "job_ids": [job_id], "units": 4, "batches": 2}]
    written = cost.write_run_cost(summaries, str(tmp_path / "run"), aws_conn_id="aws_default")
    assert written["label"] == cost.label(True)
    assert written["shards"][0]["jobs"] == 2 and written["queues"] == ["airbatch-cpu"]
    assert json.loads((tmp_path / "run" / cost.COST_FILE).read_text()) == written
