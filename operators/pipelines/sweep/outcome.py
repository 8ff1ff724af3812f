"""What a sweep did, per configuration: its history rows, the report with the leaderboard, the notifications."""
from __future__ import annotations

import json
import time
from typing import Any

from operators.pipelines.sweep.spec import WORKLOAD

#: Failed configurations messaged one by one at most (`notify_each_failure`); the rest are in the history.
FAILURE_MESSAGES_MAX = 100
#: Failed configurations listed in a summary, and so at most messaged one by one (all are in the history).
FAILED_LISTED = FAILURE_MESSAGES_MAX
#: Sweeps the failures-by-class trend looks back over.
TREND_SWEEPS = 5
#: Sweeps of the same DAG listed as the history (this one included) in the report, the log and the run view.
HISTORY_SWEEPS = 10


def trained_before(keys: list[str]) -> dict[str, dict[str, Any]]:
    """The latest history row of each configuration key in `keys` whose outcome is final (trained, or no_fit)."""
    import pandas as pd

    from operators.kit import history

    if not keys:
        return {}
    con = history.connect()
    con.register("wanted", pd.DataFrame({"config_key": sorted(set(keys))}))
    rows = con.execute(
        "SELECT c.* FROM configurations c JOIN wanted w USING (config_key) "
        "WHERE c.status IN ('trained', 'cached') OR (c.status = 'failed' AND c.failure_class = 'no_fit') "
        "QUALIFY row_number() OVER (PARTITION BY c.config_key ORDER BY c.sweep_started_at DESC) = 1").df()
    return {row["config_key"]: row for row in rows.to_dict("records")}


def _batch_jobs(job_ids: list[str], descriptions: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Batch cache key -> the job (child) that ran it last: its description."""
    from operators.kit import engine

    ran: dict[str, dict[str, Any]] = {}
    for job_id in job_ids:  # in submission order: a later job (a fallback queue's) wins
        parent = descriptions.get(job_id)
        worklist_uri = (parent or {}).get("parameters", {}).get("worklist")
        if not worklist_uri:
            continue
        worklist = engine.location(worklist_uri).read_json()
        per_child = int(worklist["batches_per_child"])
        array = bool(parent.get("arrayProperties", {}).get("size"))
        for position, item in enumerate(worklist["items"]):
            child = descriptions.get(f"{job_id}:{position // per_child}") if array else parent
            if child is not None:
                ran[item["key"]] = child
    return ran


def _clean(value: Any) -> Any:
    try:
        import pandas as pd

        return None if value is None or pd.isna(value) else value
    except (TypeError, ValueError):
        return value


def summarise(shard_summaries: list[dict[str, Any]], prepared: dict[str, Any], params: dict[str, Any],
              dag_id: str, run_id: str) -> dict[str, Any]:
    import datetime as dt

    import pandas as pd
    from batch_worker.workloads import get_workload

    from operators.kit import engine, history
    from operators.kit.batch_hook import HouseBatchHook

    shard_summaries = [s for s in shard_summaries if s]
    table = engine.location(prepared["configurations"])
    with table.fs.open(table.uri, "rb") as handle:
        configurations = pd.read_parquet(handle)
    results = engine.read_results([s["results"] for s in shard_summaries])
    key_of_batch = {b["batch_id"]: b["key"] for r in results for b in r["batches"]}
    failed_batches = {f["batch_id"]: f for r in results for f in r["failed"]}
    outputs = engine.read_outputs([b["output"] for r in results for b in r["batches"] if b["output"]],
                                  schema=get_workload(WORKLOAD).output.arrow_schema())
    trained = {row["config_id"]: row for row in outputs.to_dict("records")}
    earlier = trained_before(configurations.loc[configurations["reused"], "config_key"].tolist())

    job_ids = [j for s in shard_summaries for j in s["job_ids"]]
    described = HouseBatchHook(aws_conn_id="aws_default").describe_with_children(job_ids)
    descriptions = {job["jobId"]: job for job in described}
    ran = _batch_jobs(job_ids, descriptions)

    started_at = dt.datetime.fromtimestamp(prepared["started_at"], tz=dt.timezone.utc)
    rows = []
    for config in configurations.to_dict("records"):
        row = {"sweep_started_at": started_at, "dag_id": dag_id, "run_id": run_id, "config_id": config["config_id"],
               "config_key": config["config_key"], "resource_class": config["resource_class"],
               "queue": config["queue"], "hyperparameters": config["hyperparameters"], "reused": bool(config["reused"]),
               "status": "not_run", "failure_class": None, "error": None, "attempts": 0,
               "batch_id": _clean(config["batch_id"]), "job_id": None, "score": None, "holdout_auc": None,
               "units_fitted": None, "train_seconds": None}
        if _clean(config.get("duplicate_of")) is not None:
            pass  # takes its first configuration's outcome below, once every row is known
        elif config["reused"]:
            before = earlier.get(config["config_key"], {})
            failed = before.get("status") == "failed"
            row.update(status="failed" if failed else "cached", failure_class=_clean(before.get("failure_class")),
                       error=_clean(before.get("error")), score=_clean(before.get("score")),
                       holdout_auc=_clean(before.get("holdout_auc")), units_fitted=_clean(before.get("units_fitted")),
                       job_id=_clean(before.get("job_id")))
        else:
            key = key_of_batch.get(row["batch_id"])
            job = ran.get(key)
            if job is not None:
                row.update(job_id=job["jobId"], attempts=len(job.get("attempts") or []),
                           queue=str(job.get("jobQueue", config["queue"])).rsplit("/", 1)[-1])
            if row["config_id"] in trained:
                out = trained[row["config_id"]]
                row.update(status=out["status"], failure_class=_clean(out["failure_class"]), error=_clean(out["error"]),
                           score=_clean(out["score"]), holdout_auc=_clean(out["holdout_auc"]),
                           units_fitted=_clean(out["units_fitted"]), train_seconds=_clean(out["train_seconds"]))
            elif row["batch_id"] in failed_batches:
                failure = failed_batches[row["batch_id"]]
                row.update(status="failed", failure_class=failure["class"], error=failure["error"])
        rows.append(row)
    duplicates = copy_duplicates(rows, configurations)

    events = history.job_events(described, dag_id=dag_id, run_id=run_id)
    shortages = [s for summary in shard_summaries for s in summary.get("capacity_shortages", [])]
    for shortage in shortages:
        events.append({"at": dt.datetime.fromtimestamp(shortage["at"], tz=dt.timezone.utc), "dag_id": dag_id,
                       "run_id": run_id, "job_id": shortage["job_id"], "array_index": None, "attempt": None,
                       "queue": shortage["queue"], "status": "CAPACITY_SHORTAGE", "reason": shortage["reason"],
                       "exit_code": None})
    throttled = sum(s.get("throttled_submits", 0) for s in shard_summaries)
    sweep_id = f"{dag_id}.{run_id}"
    written = history.write(sweep_id, rows, events)

    con = history.connect()
    leaders = history.leaderboard(con, run_id, params["leaderboard_size"])
    shown = shown_parameters(configurations["hyperparameters"].tolist())
    for leader in leaders:
        leader["settings"] = settings_text(leader["hyperparameters"], shown)
    trend = history.failures_by_class(con, dag_id, TREND_SWEEPS)
    earlier_sweeps = history.sweeps(con, dag_id, HISTORY_SWEEPS)
    counts: dict[str, int] = {}
    by_class: dict[str, dict[str, Any]] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        if row["status"] == "failed":
            entry = by_class.setdefault(row["failure_class"] or "unknown", {"count": 0, "first_error": row["error"]})
            entry["count"] += 1
    failed_rows = [r for r in rows if r["status"] == "failed"]
    summary = {
        "dag_id": dag_id, "run_id": run_id, "configurations": len(rows), "counts": counts,
        "failures_by_class": by_class, "leaderboard": leaders, "trend": trend, "capacity_shortages": shortages,
        "throttled_submits": throttled, "history": written, "job_ids": job_ids,
        "failed_configurations": [{k: r[k] for k in ("config_id", "failure_class", "error", "attempts", "queue")}
                                  for r in failed_rows],
        "duplicates": len(duplicates), "duplicates_shown": dict(list(duplicates.items())[:FAILED_LISTED]),
        "duration_s": round(time.time() - prepared["started_at"], 3),
        "history_sweeps": earlier_sweeps, "cost": sweep_cost(shard_summaries, prepared["run_root"]),
        "run_root": prepared["run_root"],
    }
    summary["note"] = note_text(summary)
    summary["report"] = write_report(summary, prepared["run_root"])
    summary["failed_configurations"] = summary["failed_configurations"][:FAILED_LISTED]
    # The task log gets tables people read; the returned dict (the XCom) is not logged (show_return_value_in_logs).
    print(log_text(summary))
    return summary


def sweep_cost(shard_summaries: list[dict[str, Any]], run_root: str) -> dict[str, Any] | None:
    """The sweep's Batch jobs costed as a unit pipeline's collect step costs its run (each shard's own figures,
    else DescribeJobs), written to `<run>/cost.json` for the run view; None (and a warning) when it cannot be."""
    from operators.kit import cost

    try:
        return cost.write_run_cost(shard_summaries, run_root)
    except Exception as error:  # noqa: BLE001 - a cost must never change a sweep's outcome
        print(f"WARNING: the sweep's cost could not be worked out ({type(error).__name__}: {error}); "
              "the run view shows none")
        return None


def shown_parameters(hyperparameters: list[str]) -> list[str]:
    """The hyper-parameters worth showing beside a configuration's id: those that vary across the sweep or are
    set away from the trainer's default (every configuration carries all of them, defaults filled in)."""
    from operators.pipelines.sweep.spec import trainer_parameters

    defaults = {name: p.default for name, p in trainer_parameters().items()}
    values: dict[str, set[str]] = {}
    for text in hyperparameters:
        for name, value in json.loads(text).items():
            values.setdefault(name, set()).add(json.dumps(value, sort_keys=True))
    return [name for name, seen in values.items()
            if len(seen) > 1 or seen != {json.dumps(defaults.get(name), sort_keys=True)}]


def settings_text(hyperparameters: dict[str, Any], shown: list[str]) -> str:
    """"l2=0.1, holdout_days=14": a configuration's hyper-parameters that tell it apart (all at their defaults:
    "defaults")."""
    return ", ".join(f"{name}={json.dumps(hyperparameters[name])}" for name in shown
                     if name in hyperparameters) or "defaults"


def score_text(value: Any, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def note_text(summary: dict[str, Any]) -> str:
    """The run's note: configurations by state, the best one and the cost."""
    from operators.kit.cost import money

    counts = summary["counts"]
    text = (f"{summary['configurations']:,} configurations: "
            + ", ".join(f"{n:,} {state}" for state, n in sorted(counts.items())))
    if summary["leaderboard"]:
        best = summary["leaderboard"][0]
        text += f"; best {best['config_id']} (score {score_text(best['score'])})"
    if summary.get("cost"):
        text += f"; cost {money(summary['cost'].get('cost'), summary['cost'].get('currency', 'USD'))} (estimate)"
    return text


def text_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """Rows as aligned columns for a log: a header, a rule, a line per row."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]


def log_text(summary: dict[str, Any]) -> str:
    """The summary task's log: what a person reads first, as tables (the whole report is in report.md)."""
    lines = [f"Sweep {summary['run_id']} of {summary['dag_id']}: {summary['note']}", ""]
    if _duplicates_line(summary):
        lines += [_duplicates_line(summary), ""]
    lines.append("Leaderboard (lowest holdout log-loss first):")
    if summary["leaderboard"]:
        lines += text_table(["rank", "configuration", "score", "holdout AUC", "hyper-parameters"], [
            [rank, leader["config_id"], score_text(leader["score"]), score_text(leader["holdout_auc"], 4),
             leader.get("settings") or json.dumps(leader["hyperparameters"], sort_keys=True)]
            for rank, leader in enumerate(summary["leaderboard"], start=1)])
    else:
        lines.append("  (no configuration trained)")
    lines += ["", "Failures by class:"]
    if summary["failures_by_class"]:
        lines += text_table(["class", "configurations", "first error"], [
            [kind, f"{entry['count']:,}", entry["first_error"]]
            for kind, entry in sorted(summary["failures_by_class"].items())])
    else:
        lines.append("  none")
    if summary.get("history_sweeps"):
        lines += ["", f"Sweeps of {summary['dag_id']} (newest first, this one included):"]
        lines += text_table(["started", "run", "configurations", "trained", "cached", "failed", "best", "score"], [
            [s["started"], s["run_id"], s["configurations"], s["trained"], s["cached"], s["failed"],
             s["best_config_id"], score_text(s["best_score"])] for s in summary["history_sweeps"]])
    lines += ["", *closing_lines(summary)]
    return "\n".join(lines)


def closing_lines(summary: dict[str, Any]) -> list[str]:
    """Capacity shortages, throttled submits, cost and the report's path: the end of the log's and the message's text."""
    from operators.kit.cost import cost_line

    lines = [f"job {shortage['job_id']}: {shortage['reason']}" for shortage in summary["capacity_shortages"]]
    if summary["throttled_submits"]:
        lines.append(f"{summary['throttled_submits']} throttled SubmitJob calls were retried with backoff")
    if summary.get("cost"):
        lines.append(cost_line(summary["cost"]))
    return [*lines, f"report: {summary['report']}"]


def copy_duplicates(rows: list[dict[str, Any]], configurations) -> dict[str, str]:
    """Give each configuration that repeats an earlier one of the sweep (`duplicate_of`) that one's outcome, with
    status `duplicate` (so it is neither ranked nor counted as a failure twice); {its id: the earlier id}."""
    if "duplicate_of" not in configurations:
        return {}
    duplicate_of = {c: first for c, first in zip(configurations["config_id"], configurations["duplicate_of"])
                    if _clean(first) is not None}
    by_id = {row["config_id"]: row for row in rows}
    for row in rows:
        first = by_id.get(duplicate_of.get(row["config_id"]))
        if first is not None:
            row.update({k: first[k] for k in ("failure_class", "error", "job_id", "score", "holdout_auc",
                                              "units_fitted", "batch_id")}, status="duplicate", attempts=0)
    return duplicate_of


def _duplicates_line(summary: dict[str, Any]) -> str | None:
    if not summary.get("duplicates"):
        return None
    shown = ", ".join(f"{c} (as {first})" for c, first in summary["duplicates_shown"].items())
    more = summary["duplicates"] - len(summary["duplicates_shown"])
    return (f"{summary['duplicates']:,} configuration(s) repeat an earlier configuration's hyper-parameters: trained "
            f"once, each row carries that outcome with status duplicate: {shown}"
            + (f" and {more:,} more" if more > 0 else ""))


def report_text(summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    lines = [f"# Sweep {summary['run_id']} of {summary['dag_id']}", "",
             f"{summary['configurations']:,} configurations: " + ", ".join(f"{n:,} {state}" for state, n in
                                                                          sorted(counts.items())), ""]
    if _duplicates_line(summary):
        lines += [_duplicates_line(summary), ""]
    lines += ["## Leaderboard (lowest holdout log-loss first)", "", "| rank | configuration | score | holdout AUC | "
              "settings | hyper-parameters |", "|---|---|---|---|---|---|"]
    for rank, leader in enumerate(summary["leaderboard"], start=1):
        auc = "" if leader["holdout_auc"] is None else f"{leader['holdout_auc']:.4f}"
        lines.append(f"| {rank} | {leader['config_id']} | {leader['score']:.6g} | {auc} | "
                     f"{leader.get('settings', '')} | `{json.dumps(leader['hyperparameters'], sort_keys=True)}` |")
    lines += ["", "## Failures by class (this sweep)", ""]
    lines += [f"- {kind}: {entry['count']:,}; first error: {entry['first_error']}"
              for kind, entry in sorted(summary["failures_by_class"].items())] or ["- none"]
    lines += ["", f"## Failures by class, last {TREND_SWEEPS} sweeps", ""]
    lines += [f"- {t['started']} {t['run_id']}: {t['failure_class']} {t['failed']:,}" for t in summary["trend"]] or \
             ["- none"]
    lines += ["", "## Capacity", ""]
    lines += [f"- job {s['job_id']}: {s['reason']}" for s in summary["capacity_shortages"]] or \
             ["- no capacity shortage"]
    lines.append(f"- {summary['throttled_submits']} SubmitJob calls throttled and retried with backoff")
    if summary.get("cost"):
        from operators.kit.cost import cost_line

        lines += ["", "## Cost", "", f"- {cost_line(summary['cost'])}"]
    if summary.get("history_sweeps"):
        lines += ["", f"## Sweeps of {summary['dag_id']} (newest first)", "",
                  "| started | run | configurations | trained | cached | failed | best | score |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {s['started']} | {s['run_id']} | {s['configurations']:,} | {s['trained']:,} | {s['cached']:,} | "
                  f"{s['failed']:,} | {s['best_config_id'] or ''} | {score_text(s['best_score'])} |"
                  for s in summary["history_sweeps"]]
    lines += ["", "## History", ""] + [f"- {table}: {uri}" for table, uri in summary["history"].items()]
    return "\n".join(lines) + "\n"


def write_report(summary: dict[str, Any], run_root: str) -> str:
    from operators.kit import engine

    folder = engine.location(run_root)
    uri = folder.join("report.md")
    folder.write_bytes(uri, report_text(summary).encode())
    return uri


def metric_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The sweep's figures as the kit's run metrics take them (operators.kit.alarms.run_figures): its duration and
    cost, and per sweep the configurations by state and the best score (namespace airbatch, Pipeline=<dag_id>)."""
    counts = summary["counts"]
    best = summary["leaderboard"][0] if summary["leaderboard"] else {}
    metrics = {f"Configurations{state.title().replace('_', '')}": count for state, count in counts.items()}
    metrics.update(Configurations=summary["configurations"], BestScore=best.get("score"),
                   BestHoldoutAUC=best.get("holdout_auc"))
    return {"duration_s": summary["duration_s"], "cost": summary.get("cost"), "metrics": metrics}


def notify(summary: dict[str, Any], each_failure: bool = False) -> dict[str, Any]:
    """One message for the sweep; with `each_failure`, one per terminally failed configuration (up to a cap)."""
    from operators.kit import notify as notifications

    counts = summary["counts"]
    subject = (f"[{summary['dag_id']}] sweep {summary['run_id']}: " +
               ", ".join(f"{n:,} {state}" for state, n in sorted(counts.items())))
    lines = [f"{summary['configurations']:,} configurations in {summary['duration_s']:.0f} s: " +
             ", ".join(f"{n:,} {state}" for state, n in sorted(counts.items()))]
    if _duplicates_line(summary):
        lines.append(_duplicates_line(summary))
    if summary["leaderboard"]:
        lines.append("best configurations:")
        lines += [f"  {rank}. {leader['config_id']}: score {leader['score']:.6g} "
                  f"({leader.get('settings') or json.dumps(leader['hyperparameters'], sort_keys=True)})"
                  for rank, leader in enumerate(summary["leaderboard"], start=1)]
    if summary["failures_by_class"]:
        lines.append("failures by class:")
        lines += [f"  {kind}: {entry['count']:,}; first error: {entry['first_error']}"
                  for kind, entry in sorted(summary["failures_by_class"].items())]
    lines += closing_lines(summary)
    data = {k: summary[k] for k in ("dag_id", "run_id", "counts", "failures_by_class", "leaderboard",
                                    "capacity_shortages", "throttled_submits", "report")}
    data["cost"] = summary.get("cost")
    data["duplicates"] = summary.get("duplicates", 0)
    sent = {"sweep": notifications.send("sweep", subject, "\n".join(lines), data), "configurations": []}
    if each_failure:
        for failed in summary["failed_configurations"]:
            sent["configurations"].append(notifications.send(
                "configuration_failed",
                f"[{summary['dag_id']}] configuration {failed['config_id']} failed ({failed['failure_class']})",
                f"sweep {summary['run_id']}: configuration {failed['config_id']} failed terminally after "
                f"{failed['attempts']} attempt(s) on {failed['queue']}\nclass: {failed['failure_class']}\n"
                f"error: {failed['error']}",
                {"dag_id": summary["dag_id"], "run_id": summary["run_id"], **failed}))
    return sent
