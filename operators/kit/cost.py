"""What a run's Batch jobs cost: vCPU-hours, GPU-hours and dollars per run, per shard and per unit.

Every attempt of every job (each array child's attempts, Spot interruptions and retries included)
counts from its `startedAt` to its `stoppedAt` (DescribeJobs), times the job's vCPUs and GPUs
(its resourceRequirements, else the job definition in config/batch_resources.json), costed from
config/batch_rates.json by the family and provisioning model of the queue's compute environment.

The figures are estimates from list rates, never a bill; on the local endpoint no money is spent
and the label says so. Each shard's task costs its own jobs once they have ended, with the Batch
client it holds; `collect` adds the shards up (describing only a shard that could not cost itself)
and writes the run's figures to `<run folder>/cost.json`; `plan`
refuses a run whose estimate, from the last comparable run (same DAG and queue), exceeds its
`budget`, before any job is submitted.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

REPO = Path(__file__).resolve().parents[2]
RATES_FILE = REPO / "config" / "batch_rates.json"
RESOURCES_FILE = REPO / "config" / "batch_resources.json"
COST_FILE = "cost.json"
#: DescribeJobs takes up to 100 ids per call.
DESCRIBE_PAGE = 100
MODELS = ("on_demand", "spot")
#: The figures a cost adds up, per job, shard and run.
TOTALS = ("seconds", "vcpu_hours", "gpu_hours", "cost")


class RateTableError(ValueError):
    pass


def load_rates(path: Path | str = RATES_FILE) -> dict[str, Any]:
    """The rate table, checked: every family has on_demand and spot rates, each a number >= 0."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise RateTableError(f"{path}: cannot read the rate table ({error})") from None
    families = table.get("families") if isinstance(table, dict) else None
    if not isinstance(families, dict) or not families:
        raise RateTableError(f"{path}: 'families' must map instance families to their rates")
    for family, models in families.items():
        for model in MODELS:
            rates = (models or {}).get(model)
            for rate in ("vcpu_hour", "gpu_hour"):
                value = (rates or {}).get(rate)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                    raise RateTableError(f"{path}: families.{family}.{model}.{rate} must be a number >= 0, "
                                          f"got {value!r}")
    return table


def load_resources(path: Path | str = RESOURCES_FILE) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def queue_rates(queue: str, resources: dict[str, Any]) -> tuple[str, str]:
    """(instance family, "spot" | "on_demand") of the first compute environment behind `queue`."""
    try:
        environment = resources["job_queues"][queue]["compute_environments"][0]
        spec = resources["compute_environments"][environment]
    except (KeyError, IndexError):
        raise RateTableError(f"queue {queue!r} has no compute environment in {RESOURCES_FILE.name}: cannot cost "
                              "its jobs") from None
    family = spec["instance_types"][0].split(".")[0]
    model = "spot" if str(spec.get("provisioning_model", "")).upper() == "SPOT" else "on_demand"
    return family, model


def _name(arn: str) -> str:
    """The name in a Batch ARN (`...:job-queue/airbatch-cpu` -> `airbatch-cpu`, job definitions without `:rev`)."""
    return arn.rsplit("/", 1)[-1].split(":")[0]


def job_shape(job: dict[str, Any], resources: dict[str, Any]) -> tuple[float, float]:
    """(vCPUs, GPUs) a job asked for."""
    container = job.get("container") or {}
    needs = {r.get("type"): float(r.get("value")) for r in container.get("resourceRequirements") or []
             if r.get("type") in ("VCPU", "GPU")}
    definition = resources.get("job_definitions", {}).get(_name(job.get("jobDefinition", "")), {})
    vcpus = needs.get("VCPU") or float(container.get("vcpus") or 0) or float(definition.get("vcpus", 1))
    gpus = needs.get("GPU", float(definition.get("gpus", 0)))
    return vcpus, gpus


def attempt_seconds(job: dict[str, Any]) -> tuple[float, int]:
    """(seconds over every finished attempt, attempts still open); times are epoch milliseconds."""
    attempts = job.get("attempts") or []
    if not attempts and job.get("startedAt") is not None:
        attempts = [{"startedAt": job["startedAt"], "stoppedAt": job.get("stoppedAt")}]
    seconds, open_attempts = 0.0, 0
    for attempt in attempts:
        started, stopped = attempt.get("startedAt"), attempt.get("stoppedAt")
        if started is None:
            continue
        if stopped is None:
            open_attempts += 1
            continue
        seconds += max(0, stopped - started) / 1000
    return seconds, open_attempts


def job_cost(job: dict[str, Any], rates_table: dict[str, Any], resources: dict[str, Any]) -> dict[str, Any]:
    """One job's (or array child's) attempts costed: seconds, vCPU-hours, GPU-hours and cost."""
    family, model = queue_rates(_name(job.get("jobQueue", "")), resources)
    rates = rates_table["families"].get(family)
    if rates is None:
        raise RateTableError(f"{RATES_FILE.name}: no rates for instance family {family!r} (queue "
                              f"{_name(job.get('jobQueue', ''))}); add families.{family} to the table")
    vcpus, gpus = job_shape(job, resources)
    seconds, open_attempts = attempt_seconds(job)
    hours = seconds / 3600
    cost = hours * (vcpus * rates[model]["vcpu_hour"] + gpus * rates[model]["gpu_hour"])
    return {"seconds": seconds, "vcpu_hours": hours * vcpus, "gpu_hours": hours * gpus, "cost": cost,
            "attempts": len(job.get("attempts") or []), "open_attempts": open_attempts,
            "family": family, "billing": model}


def describe_leaves(describe: Callable[[list[str]], list[dict[str, Any]]], job_ids: Iterable[str]) -> list[dict]:
    """The jobs that ran: each array job's children (`<id>:<index>`), each plain job itself."""
    def pages(ids: list[str]) -> list[dict[str, Any]]:
        return [job for start in range(0, len(ids), DESCRIBE_PAGE) for job in describe(ids[start:start + DESCRIBE_PAGE])]

    leaves = []
    for job in pages(list(dict.fromkeys(job_ids))):
        size = (job.get("arrayProperties") or {}).get("size")
        if size:
            leaves += pages([f"{job['jobId']}:{index}" for index in range(int(size))])
        else:
            leaves.append(job)
    return leaves


def _total(costs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: sum(c[key] for c in costs) for key in TOTALS}


def label(local: bool) -> str:
    return ("estimate (local endpoint: the same list rates, nothing was charged)" if local
            else "estimate from list rates (config/batch_rates.json), not a bill")


def shard_cost(job_ids: Iterable[str], describe: Callable[[list[str]], list[dict[str, Any]]], *,
               rates_table: dict[str, Any] | None = None, resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """One shard's jobs costed: `jobs` (the leaves that ran), seconds, vCPU-hours, GPU-hours, cost and `queues`.

    The shard's task works this out when its jobs have ended, with the Batch client it already holds,
    and puts it in its summary; `run_cost` then only adds the shards up.
    """
    rates_table = rates_table or load_rates()
    resources = resources or load_resources()
    costs, queues = [], set()
    for job in describe_leaves(describe, job_ids):
        costs.append(job_cost(job, rates_table, resources))
        queues.add(_name(job.get("jobQueue", "")))
    return {"jobs": len(costs), **_total(costs), "queues": sorted(queues)}


def run_cost(shard_summaries: list[dict[str, Any]], describe: Callable[[list[str]], list[dict[str, Any]]], *,
             local: bool, rates_table: dict[str, Any] | None = None,
             resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's cost from its shards' summaries (`job_ids`, `shard`, `units`, `batches`, and `cost` where the
    shard costed its own jobs): per run, shard, unit. Only a shard without its `cost` is described here."""
    rates_table = rates_table or load_rates()
    shards, queues = [], set()
    for summary in shard_summaries:
        if not summary:
            continue
        own = summary.get("cost")
        if not (isinstance(own, dict) and {"jobs", "queues", *TOTALS} <= set(own)):
            resources = resources or load_resources()
            own = shard_cost(summary.get("job_ids") or [], describe, rates_table=rates_table, resources=resources)
        queues.update(own["queues"])
        shards.append({"shard": summary["shard"], "units": summary.get("units", 0), "batches": summary.get("batches", 0),
                       "jobs": own["jobs"], **{key: own[key] for key in TOTALS}})
    total = _total(shards)
    units = sum(s["units"] for s in shards)
    batches = sum(s["batches"] for s in shards)
    return {"label": label(local), "currency": rates_table.get("currency", "USD"), **total,
            "units": units, "batches": batches, "queues": sorted(queues),
            "per_unit": total["cost"] / units if units else None,
            "per_batch": total["cost"] / batches if batches else None,
            "shards": shards, "computed_at": time.time()}


#: Below this an amount is shown as "< $0.000001": a millionth of a dollar is the finest figure worth reading.
SMALLEST_SHOWN = 1e-6


def plain(value: float, digits: int) -> str:
    """`value` to `digits` significant digits in plain decimal notation, never with an exponent (0.0000026,
    not 2.6e-06)."""
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def money(value: float | None, currency: str = "USD") -> str:
    """An amount as people read it, the one rule for every cost the project shows (run view, run note,
    notifications, budget checks): cents from one cent up ($1,234.57, $0.26); below one cent two significant
    digits in plain decimals ($0.0000026, never $2.6e-06), because a run on the local endpoint or a unit's
    share of a run costs that little; below a millionth of a dollar "< $0.000001"."""
    if value is None or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    symbol = "$" if currency == "USD" else f"{currency} "
    sign = "-" if value < 0 else ""
    amount = abs(value)
    if amount == 0 or round(amount, 2) >= 0.01:
        return f"{sign}{symbol}{amount:,.2f}"
    if amount < SMALLEST_SHOWN:
        return f"< {symbol}{SMALLEST_SHOWN:.6f}"
    return f"{sign}{symbol}{plain(amount, 2)}"


def quantity(value: float | None) -> str:
    """vCPU-hours, GPU-hours and the like: three significant digits, never an exponent (0.00072, 1,230)."""
    if value is None or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    text = plain(value, 3)
    return text.rstrip("0").rstrip(".") if "." in text else text


def cost_line(cost: dict[str, Any]) -> str:
    """The one-line cost of a run, for notifications and the run note."""
    per_unit = money(cost.get("per_unit"), cost.get("currency", "USD"))
    return (f"cost {money(cost['cost'], cost.get('currency', 'USD'))} ({per_unit} per unit), "
            f"{quantity(cost['vcpu_hours'])} vCPU-hours, {quantity(cost['gpu_hours'])} GPU-hours; {cost['label']}")


# --- the run folder and the budget -----------------------------------------------------------------------

def batch_describer(aws_conn_id: str | None = "aws_default") -> tuple[Callable[[list[str]], list[dict]], bool]:
    """DescribeJobs through the Airflow AWS connection, and whether that connection is the local endpoint."""
    from operators.kit.batch_hook import HouseBatchHook

    hook = HouseBatchHook(aws_conn_id=aws_conn_id)
    return hook.describe_jobs, hook.on_other_endpoint()


def write_run_cost(shard_summaries: list[dict[str, Any]], run_dir: str,
                   aws_conn_id: str | None = "aws_default") -> dict[str, Any]:
    """Cost the run's jobs and write `<run_dir>/cost.json`; returns what was written."""
    from operators.kit import engine

    describe, local = batch_describer(aws_conn_id)
    cost = run_cost(shard_summaries, describe, local=local)
    folder = engine.location(run_dir, aws_conn_id)
    folder.write_json(folder.join(COST_FILE), cost)
    return cost


def last_comparable_cost(runs_folder: str, queue: str, exclude_run_dir: str | None = None,
                         aws_conn_id: str | None = "aws_default") -> dict[str, Any] | None:
    """The newest `cost.json` among the runs in `runs_folder` (one DAG's) that ran on `queue`."""
    from operators.kit import engine

    folder = engine.location(runs_folder, aws_conn_id)
    if not folder.fs.exists(folder.uri):
        return None
    paths = [folder.full(p) for p in folder.fs.glob(folder.join("*", COST_FILE))]
    excluded = exclude_run_dir.rstrip("/") + "/" if exclude_run_dir else None
    found = []
    for path, raw in folder.read_many(p for p in paths if not (excluded and p.startswith(excluded))).items():
        try:
            cost = json.loads(raw)
        except ValueError:
            continue
        if isinstance(cost, dict) and queue in (cost.get("queues") or []) and cost.get("per_batch") is not None:
            found.append((cost.get("computed_at", 0), path, cost))
    return max(found, key=lambda item: (item[0], item[1]))[2] if found else None


def check_budget(budget: float | None, batches: int, last: dict[str, Any] | None) -> str | None:
    """Raise ValueError when the estimate (the last comparable run's cost per batch x `batches`) exceeds
    `budget`; return a line saying what was estimated (None when there is no budget)."""
    if budget is None:
        return None
    if last is None:
        return f"budget {money(budget)}: no earlier run on this queue to estimate from; not checked"
    estimate = last["per_batch"] * batches
    line = (f"estimate {money(estimate)} for {batches:,} batches at {money(last['per_batch'])} per batch "
            f"(the last comparable run); budget {money(budget)}")
    if estimate > budget:
        raise ValueError(f"{line}: over budget, nothing was submitted. Raise the run's `budget` param, "
                         "lower `bucket_count`, or leave `budget` empty to run without a limit")
    return line
