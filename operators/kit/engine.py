"""The unit-of-work engine's Airflow side: plan shards, find pending batches, write worklists, collect.

The flow of one run (see docs/engine.md):

    prepare  -> manifest of batches (operators.kit.prep)
    plan     -> shards: one array job each, descriptors for .expand_kwargs()   plan_shards()
    run      -> per shard, pending batches -> worklist -> one array job        UnitsOfWorkOperator
    collect  -> the shards' summaries combined, the dead-letter list written    combine()

Storage layout under DATA_ROOT (a local directory or s3://bucket/prefix):

    runs/<dag_id>/<run_id>/prep/...            batches, manifest, quarantine
    runs/<dag_id>/<run_id>/worklists/*.json    one per submitted array job
    runs/<dag_id>/<run_id>/results/shard-N.json  each batch's outcome and output URI
    runs/<dag_id>/<run_id>/dead_letter.parquet   the units of failed batches (when any failed)
    outputs/<workload>/<cache key>/            result.parquet + _DONE.json (shared by all runs)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import pandas as pd
from batch_worker.cache import (DONE_FILE, FAILED_FILE, RESULT_FILE, WORKLIST_FORMAT, cache_key, children_needed,
                                is_valid_done)
from batch_worker.storage import Location
from batch_worker.workloads import get_workload

from operators.kit.prep import read_manifest
from operators.kit.storage import data_root, location, options_for

#: AWS Batch array jobs hold 2 to 10,000 children.
MAX_ARRAY_SIZE = 10_000
DEFAULT_BATCHES_PER_SHARD = 1_000
#: How long a shard task may run (submit, wait, collect) before its job is terminated and the task fails.
DEFAULT_SHARD_TIMEOUT_MINUTES = 360
#: The job definition of each queue: the GPU one asks for a GPU.
JOB_DEFINITIONS = {"airbatch-cpu": "airbatch-worker-cpu", "airbatch-gpu": "airbatch-worker-gpu"}
#: How many failed batch ids a summary in XCom lists; the shard's results file lists all.
FAILED_IDS_IN_SUMMARY = 100


_SAFE = re.compile(r"[A-Za-z0-9_.=-]+")
#: Separates a readable slug from the hash of the exact text; never part of a name kept as it is.
_HASH_SEPARATOR = "~"


def safe_name(text: str) -> str:
    """A file or S3 key name for `text`: readable, and different texts always give different names.

    A text of safe characters only (and not "." or "..") is kept as it is. Any other text becomes
    its slug (unsafe characters as "_") + "~" + a hash of the exact text; "~" never occurs in a
    kept name, so a slug cannot collide with a kept name, nor two slugs with each other unless
    their hashes do.
    """
    if _SAFE.fullmatch(text) and text not in (".", ".."):
        return text
    slug = re.sub(r"[^A-Za-z0-9_.=-]", "_", text).strip(".")[:80]
    return f"{slug}{_HASH_SEPARATOR}{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def batch_job_name(text: str) -> str:
    """An AWS Batch job name (letters, digits, hyphens, underscores; at most 128)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:128]


def run_root_of(dag_id: str, run_id: str, root: str | None = None) -> str:
    """The run root (folder) of (dag_id, run_id) under DATA_ROOT, or `root`; `own_run_root` also claims it."""
    return f"{root or data_root()}/runs/{safe_name(dag_id)}/{safe_name(run_id)}"


#: The record of which run a run folder belongs to, written when the folder is first used.
OWNER_FILE = "_OWNER.json"


def own_run_root(dag_id: str, run_id: str, aws_conn_id: str | None = "aws_default") -> str:
    """The run folder of (dag_id, run_id), recorded as this run's; refuses a folder that belongs to another run."""
    root = run_root_of(dag_id, run_id)
    check_run_owner(root, dag_id, run_id, aws_conn_id)
    return root


def check_run_owner(root: str, dag_id: str, run_id: str, aws_conn_id: str | None = "aws_default") -> None:
    """Record (dag_id, run_id) as the owner of `root` if nobody is; raise if another run owns it."""
    folder = location(root, aws_conn_id)
    path = folder.join(OWNER_FILE)
    raw = folder.read_many([path]).get(path)
    mine = {"dag_id": dag_id, "run_id": run_id}
    if raw is None:
        folder.write_json(path, mine)
        return
    try:
        owner = json.loads(raw)
    except ValueError:
        owner = None
    if not isinstance(owner, dict) or {k: owner.get(k) for k in mine} != mine:
        raise ValueError(f"run folder {root} belongs to another run ({path} holds {raw[:200].decode(errors='replace')}),"
                         f" not to run {run_id!r} of {dag_id!r}; nothing was written there. Trigger this run with "
                         f"another run id, or move that folder away if it is no longer needed")


def output_root(workload: str, root: str | None = None) -> str:
    return f"{root or data_root()}/outputs/{safe_name(workload)}"


# --- plan -----------------------------------------------------------------------------------------

@dataclass
class ShardSpec:
    """What one mapped task instance needs; small, so it travels through XCom."""

    index: int
    label: str
    manifest: str
    start: int  # positions in the manifest (sorted by batch_id), [start, stop)
    stop: int
    workload: str
    params: dict[str, Any]
    output_root: str
    run_root: str
    min_success_ratio: float = 1.0
    batches_per_child: int | None = None
    #: The shard task's execution_timeout; at that point its Batch job is terminated.
    timeout_s: float = DEFAULT_SHARD_TIMEOUT_MINUTES * 60

    @classmethod
    def from_dict(cls, value: dict[str, Any] | "ShardSpec") -> "ShardSpec":
        if isinstance(value, ShardSpec):
            return value
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"shard descriptor has unknown field(s) {sorted(unknown)}")
        return cls(**value)


def plan_shards(manifest_uri: str, *, workload: str, params: dict[str, Any] | None, out_root: str,
                run_dir: str, queue: str = "airbatch-cpu", batches_per_shard: int = DEFAULT_BATCHES_PER_SHARD,
                min_success_ratio: float = 1.0, batches_per_child: int | None = None,
                timeout_minutes: float = DEFAULT_SHARD_TIMEOUT_MINUTES,
                aws_conn_id: str | None = "aws_default") -> list[dict[str, Any]]:
    """Cut the manifest into shards of at most `batches_per_shard` batches; one array job each.

    Returns kwargs for `UnitsOfWorkOperator.partial(...).expand_kwargs(...)`: the shard descriptor,
    the queue and its job definition. The workload's parameters and the settings are checked here,
    before anything is submitted.
    """
    if not 1 <= batches_per_shard <= MAX_ARRAY_SIZE:
        raise ValueError(f"batches_per_shard must be 1..{MAX_ARRAY_SIZE}, got {batches_per_shard}")
    if not 0.0 <= float(min_success_ratio) <= 1.0:
        raise ValueError(f"min_success_ratio must be within 0..1, got {min_success_ratio}")
    if not float(timeout_minutes) > 0:
        raise ValueError(f"shard_timeout_minutes must be above 0, got {timeout_minutes}")
    if queue not in JOB_DEFINITIONS:
        raise ValueError(f"queue must be one of {sorted(JOB_DEFINITIONS)}, got {queue!r}")
    resolved = get_workload(workload).resolve_params(params)
    manifest = read_manifest(manifest_uri, options_for(manifest_uri, aws_conn_id))
    ids = manifest["batch_id"].tolist()
    shards = []
    for index, start in enumerate(range(0, len(ids), batches_per_shard)):
        stop = min(start + batches_per_shard, len(ids))
        spec = ShardSpec(index=index, label=f"shard {index}: batches {ids[start]}-{ids[stop - 1]}",
                         manifest=manifest_uri, start=start, stop=stop, workload=workload, params=resolved,
                         output_root=out_root, run_root=run_dir, min_success_ratio=float(min_success_ratio),
                         batches_per_child=batches_per_child, timeout_s=float(timeout_minutes) * 60)
        shards.append({"shard": asdict(spec), "job_queue": queue, "job_definition": JOB_DEFINITIONS[queue]})
    return shards


# --- pending batches and worklists ------------------------------------------------------------------

def shard_batches(spec: ShardSpec, aws_conn_id: str | None = "aws_default") -> list[dict[str, Any]]:
    """The shard's batches with their cache keys, in batch_id order."""
    workload = get_workload(spec.workload)
    manifest = read_manifest(spec.manifest, options_for(spec.manifest, aws_conn_id)).iloc[spec.start:spec.stop]
    return [{"batch_id": int(row.batch_id), "uri": row.uri, "rows": int(row.rows), "units": int(row.units),
             "content_hash": row.content_hash,
             "key": cache_key(row.content_hash, workload.name, workload.version, spec.params)}
            for row in manifest.itertuples(index=False)]


def done_markers(out: Location, batches: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Valid done-markers by cache key (read in one round; a marker for another key does not count)."""
    raw = out.read_many([out.join(b["key"], DONE_FILE) for b in batches])
    found = {}
    for batch in batches:
        data = raw.get(out.join(batch["key"], DONE_FILE))
        if is_valid_done(data, batch["key"]):
            found[batch["key"]] = json.loads(data)
    return found


def failure_records(out: Location, batches: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    raw = out.read_many([out.join(b["key"], FAILED_FILE) for b in batches])
    records = {}
    for batch in batches:
        data = raw.get(out.join(batch["key"], FAILED_FILE))
        try:
            records[batch["key"]] = json.loads(data) if data else None
        except ValueError:
            continue
    return {k: v for k, v in records.items() if v}


def children_plan(pending: int, batches_per_child: int | None = None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(batches per child, children) for `pending` batches.

    An explicit `batches_per_child` wins. Otherwise the environment's defaults apply: at most
    BATCH_MAX_CHILDREN children (on AWS hundreds, each a container), each with at least
    BATCH_MIN_BATCHES_PER_CHILD batches, so a child's run is long enough to amortise its start.
    On the local endpoint (BATCH_LOCAL_VCPUS set) at most one child per vCPU: more could only wait
    for a free vCPU and then pay their own interpreter start (about a second each).
    """
    env = os.environ if env is None else env
    if pending < 1:
        return 0, 0
    if batches_per_child:
        per_child = int(batches_per_child)
    else:
        max_children = int(env.get("BATCH_MAX_CHILDREN") or 500)
        if env.get("BATCH_LOCAL_VCPUS"):
            max_children = min(max_children, max(1, int(env["BATCH_LOCAL_VCPUS"])))
        min_per_child = int(env.get("BATCH_MIN_BATCHES_PER_CHILD") or 1)
        per_child = max(min_per_child, math.ceil(pending / max(1, max_children)))
    per_child = max(per_child, math.ceil(pending / MAX_ARRAY_SIZE), 1)
    return per_child, children_needed(pending, per_child)


def write_worklist(spec: ShardSpec, pending: list[dict[str, Any]], batches_per_child: int, run: dict[str, Any],
                   aws_conn_id: str | None = "aws_default") -> str:
    workload = get_workload(spec.workload)
    root = location(spec.run_root, aws_conn_id)
    name = safe_name(f"{run.get('task_id', 'task')}-shard{spec.index}-try{run.get('try_number', 1)}-{time.time_ns()}")
    uri = root.join("worklists", f"{name}.json")
    root.write_json(uri, {
        "format": WORKLIST_FORMAT, "workload": workload.name, "workload_version": str(workload.version),
        "params": spec.params, "output_root": spec.output_root, "batches_per_child": batches_per_child,
        "run": run, "items": pending,
    })
    return uri


# --- outcome of a shard ------------------------------------------------------------------------------

@dataclass
class ShardOutcome:
    spec: ShardSpec
    batches: list[dict[str, Any]]
    done: dict[str, dict[str, Any]]
    submitted_keys: set[str]
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return sum(1 for b in self.batches if b["key"] in self.done and b["key"] in self.submitted_keys)

    @property
    def cached(self) -> int:
        return sum(1 for b in self.batches if b["key"] in self.done and b["key"] not in self.submitted_keys)

    @property
    def success_ratio(self) -> float:
        return len(self.done) / len(self.batches) if self.batches else 1.0

    def summary(self, job_ids: list[str], wall_s: float, results_uri: str) -> dict[str, Any]:
        computed = [self.done[b["key"]]["seconds"] for b in self.batches
                    if b["key"] in self.done and b["key"] in self.submitted_keys]
        by_class: dict[str, int] = {}
        first_errors: dict[str, str] = {}
        for failure in self.failures:
            by_class[failure["class"]] = by_class.get(failure["class"], 0) + 1
            first_errors.setdefault(failure["class"], f"batch {failure['batch_id']}: {failure['error']}")
        return {
            "shard": self.spec.index, "label": self.spec.label, "workload": self.spec.workload,
            "batches": len(self.batches), "succeeded": self.succeeded, "cached": self.cached,
            "failed": len(self.failures), "success_ratio": round(self.success_ratio, 6),
            "units": sum(b["units"] for b in self.batches),
            "units_computed": sum(b["units"] for b in self.batches
                                  if b["key"] in self.done and b["key"] in self.submitted_keys),
            "units_cached": sum(b["units"] for b in self.batches
                                if b["key"] in self.done and b["key"] not in self.submitted_keys),
            "units_failed": sum(f["units"] for f in self.failures),
            "failed_batches": [f["batch_id"] for f in self.failures][:FAILED_IDS_IN_SUMMARY],
            "failures_by_class": by_class, "first_errors": first_errors, "job_ids": job_ids,
            "compute_s_per_batch": round(sum(computed) / len(computed), 6) if computed else None,
            "wall_s": round(wall_s, 3), "results": results_uri,
        }

    def results(self) -> dict[str, Any]:
        out = Location.parse(self.spec.output_root)
        failed = {f["key"]: f for f in self.failures}
        rows = []
        for batch in self.batches:
            status = ("failed" if batch["key"] in failed else
                      "succeeded" if batch["key"] in self.submitted_keys else "cached")
            rows.append({"batch_id": batch["batch_id"], "key": batch["key"], "units": batch["units"],
                         "status": status, "input": batch["uri"],
                         "output": None if status == "failed" else out.join(batch["key"], RESULT_FILE)})
        return {"shard": asdict(self.spec), "batches": rows, "failed": self.failures}


def outcome(spec: ShardSpec, batches: list[dict[str, Any]], submitted_keys: set[str], job_ids: Iterable[str],
            child_reasons: dict[str, tuple[str, str]], aws_conn_id: str | None = "aws_default") -> ShardOutcome:
    """Read every batch's marker after this try's jobs ended; classify the batches without one.

    A batch's `_FAILED.json` counts when one of `job_ids` (or one of its children) wrote it. A batch
    whose child ended without such a record (killed, timed out, host lost, or unable to write to
    the store) gets the (class, error) its child reported or Batch gave, from `child_reasons`.
    """
    job_ids = set(job_ids)
    out = location(spec.output_root, aws_conn_id)
    done = done_markers(out, batches)
    missing = [b for b in batches if b["key"] not in done]
    records = failure_records(out, missing)
    result = ShardOutcome(spec, batches, done, submitted_keys)
    for batch in missing:
        record = records.get(batch["key"])
        if record and str(record.get("job_id", "")).split(":")[0] in job_ids:
            kind, error = record["class"], record["error"]
        elif batch["key"] in child_reasons:
            kind, error = child_reasons[batch["key"]]
        elif batch["key"] in submitted_keys:
            kind, error = "lost", "the job ended without a done-marker for this batch"
        else:
            kind, error = "not_run", "no done-marker, and not part of the last submitted job"
        result.failures.append({"batch_id": batch["batch_id"], "key": batch["key"], "uri": batch["uri"],
                                "units": batch["units"], "class": kind, "error": error})
    return result


# --- claims: batches a job is computing now, so that another run waits instead of computing them twice ----
#
# Two runs that claim the same batches at the same moment must agree which claim comes first. A claim is ordered by
# a ticket, as in Lamport's bakery, not by the clock: a claim is written first without a ticket ("choosing"), then
# takes one above every ticket it can see, and a claim that must know whether it comes first waits for any claim
# still choosing. By the clock, a claim whose write was delayed (its process descheduled between reading the clock
# and writing) carried an earlier time than a claim that had already looked and not seen it: both ran the batches.

CLAIMS_DIR = "_claims"
#: A claim whose job is not submitted yet counts as in flight for this long, then as abandoned.
CLAIM_SUBMIT_GRACE_S = 300
#: How long a claim waits for another still choosing its ticket (two writes, moments apart, unless its task died);
#: one that chose no ticket by then comes first, and counts as in flight until CLAIM_SUBMIT_GRACE_S.
CLAIM_CHOOSE_WAIT_S = 30


def write_claim(out: Location, claim: dict[str, Any]) -> str:
    """Write (or rewrite) `claim` under the output root; returns its URI."""
    uri = out.join(CLAIMS_DIR, f"{claim['claim_id']}.json")
    out.write_json(uri, {k: v for k, v in claim.items() if k != "uri"})
    return uri


def new_claim(out: Location, keys: Iterable[str], run: dict[str, Any]) -> dict[str, Any]:
    """A claim on `keys` for `run`, written, then given its ticket: one above every ticket written so far."""
    created = time.time_ns()
    claim = {"claim_id": f"{created}-{os.urandom(4).hex()}", "created_ns": created, "ticket": None, "job_id": None,
             "keys": sorted(keys), "run": run}
    claim["uri"] = write_claim(out, claim)
    tickets = [int(other["ticket"]) for other in read_claims(out)
               if other["claim_id"] != claim["claim_id"] and other.get("ticket") is not None]
    claim["ticket"] = 1 + max(tickets, default=0)
    write_claim(out, claim)
    return claim


def read_claims(out: Location) -> list[dict[str, Any]]:
    """Every readable claim under the output root, each with its `uri`."""
    claims = []
    for uri, raw in out.read_many(out.list_files(out.join(CLAIMS_DIR))).items():
        try:
            claim = json.loads(raw)
        except ValueError:
            continue
        if isinstance(claim, dict) and isinstance(claim.get("keys"), list) and "created_ns" in claim:
            claims.append({**claim, "uri": uri})
    return claims


def choosing(claim: dict[str, Any]) -> bool:
    """Written, its ticket not yet (a claim written before tickets existed has no such field, and is not)."""
    return "ticket" in claim and claim["ticket"] is None


def claim_order(claim: dict[str, Any]) -> tuple[int, str]:
    """The lower ticket first, then the lower id; a claim written before tickets existed comes before any."""
    return int(claim.get("ticket") or 0), str(claim["claim_id"])


def claims_before(out: Location, claim: dict[str, Any], keys: set[str],
                  ignore: Callable[[dict[str, Any]], bool] = lambda other: False) -> list[dict[str, Any]]:
    """The other claims on any of `keys` that come before `claim` (those `ignore` names aside), once none of them
    is still choosing its ticket: one is waited for up to CLAIM_CHOOSE_WAIT_S from its own start, then comes first."""
    while True:
        overlapping = [other for other in read_claims(out)
                       if other["claim_id"] != claim["claim_id"] and keys.intersection(other["keys"])
                       and not ignore(other)]
        now = time.time_ns()
        waiting = [other for other in overlapping
                   if choosing(other) and now - int(other["created_ns"]) < CLAIM_CHOOSE_WAIT_S * 1e9]
        if not waiting:
            return [other for other in overlapping if choosing(other) or claim_order(other) < claim_order(claim)]
        time.sleep(0.1)


# --- collect --------------------------------------------------------------------------------------------

def combine(summaries: list[dict[str, Any]], *, unit_key: tuple[str, ...] = (), run_dir: str | None = None,
            aws_conn_id: str | None = "aws_default") -> dict[str, Any]:
    """One run's summary from its shards' summaries; writes the dead-letter list of failed units."""
    summaries = [s for s in summaries if s]
    total = {k: sum(s[k] for s in summaries) for k in ("batches", "succeeded", "cached", "failed", "units",
                                                        "units_failed")}
    # Unit counts by outcome, for the notification (a shard summary from before they were counted has none: 0)
    total.update({k: sum(s.get(k) or 0 for s in summaries) for k in ("units_computed", "units_cached")})
    by_class: dict[str, int] = {}
    first_errors: dict[str, str] = {}
    for s in summaries:
        for kind, n in s["failures_by_class"].items():
            by_class[kind] = by_class.get(kind, 0) + n
        for kind, error in s["first_errors"].items():
            first_errors.setdefault(kind, error)
    computed = [(s["compute_s_per_batch"], s["succeeded"]) for s in summaries if s["compute_s_per_batch"]]
    weight = sum(n for _, n in computed)
    result = {
        **total, "shards": len(summaries),
        "success_ratio": round((total["succeeded"] + total["cached"]) / total["batches"], 6) if total["batches"] else 1.0,
        "failures_by_class": by_class, "first_errors": first_errors,
        "failed_batches": sorted(b for s in summaries for b in s["failed_batches"])[:FAILED_IDS_IN_SUMMARY],
        "job_ids": [j for s in summaries for j in s["job_ids"]],
        "compute_s_per_batch": round(sum(v * n for v, n in computed) / weight, 6) if weight else None,
        "results": [s["results"] for s in summaries], "dead_letter": None,
    }
    if total["failed"] and run_dir:
        result["dead_letter"] = write_dead_letter(result["results"], unit_key, run_dir, aws_conn_id)
    return result


def read_results(results_uris: list[str], aws_conn_id: str | None = "aws_default") -> list[dict[str, Any]]:
    return [location(uri, aws_conn_id).read_json() for uri in results_uris]


def output_uris(results_uris: list[str], aws_conn_id: str | None = "aws_default") -> list[str]:
    """The result files of every batch that has one, in batch order."""
    return _outputs_of(read_results(results_uris, aws_conn_id))


def _outputs_of(results: list[dict[str, Any]]) -> list[str]:
    rows = [b for r in results for b in r["batches"] if b["output"]]
    return [b["output"] for b in sorted(rows, key=lambda b: b["batch_id"])]


def read_run_outputs(results_uris: list[str], aws_conn_id: str | None = "aws_default") -> pd.DataFrame:
    """Every batch output of a run (its shards' results files) as one table, typed by the workload's declared
    output schema: what evaluation reads."""
    results = read_results(results_uris, aws_conn_id)
    names = {r.get("shard", {}).get("workload") for r in results} - {None}
    declared = get_workload(names.pop()).output if len(names) == 1 else None
    return read_outputs(_outputs_of(results), aws_conn_id,
                        schema=declared.arrow_schema() if declared is not None else None)


def read_outputs(output_uris: list[str], aws_conn_id: str | None = "aws_default", schema=None) -> pd.DataFrame:
    """The result files of `output_uris` as one table (empty when there are none).

    `schema` (a workload's `output.arrow_schema()`) types every column as declared, so a batch whose
    column is all null reads like the others. A file that cannot be read is named, with the columns
    whose types differ from the others'.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds

    if not output_uris:
        return schema.empty_table().to_pandas() if schema is not None else pd.DataFrame()
    first = location(output_uris[0], aws_conn_id)
    filesystem = first.fs if first.remote else None
    paths = [u.removeprefix("s3://") for u in output_uris] if first.remote else output_uris
    try:
        return ds.dataset(paths, format="parquet", filesystem=filesystem, schema=schema).to_table().to_pandas()
    except (pa.ArrowException, OSError) as exc:
        reference = schema if schema is not None else ds.dataset(paths[0], format="parquet", filesystem=filesystem).schema
        origin = "the workload's output schema" if schema is not None else output_uris[0]
        for uri, path in zip(output_uris, paths):
            try:
                ds.dataset(path, format="parquet", filesystem=filesystem, schema=reference).to_table()
            except (pa.ArrowException, OSError) as file_exc:
                own = ds.dataset(path, format="parquet", filesystem=filesystem).schema
                differ = [f"{f.name} is {own.field(f.name).type} there, {f.type} in {origin}" for f in reference
                          if f.name in own.names and own.field(f.name).type != f.type]
                raise ValueError(f"cannot read batch output {uri}: {file_exc}"
                                 + (f" ({'; '.join(differ)})" if differ else "")) from file_exc
        raise ValueError(f"cannot read the batch outputs ({len(output_uris)} files from {output_uris[0]}): "
                         f"{exc}") from exc


def write_dead_letter(results_uris: list[str], unit_key: tuple[str, ...], run_dir: str,
                      aws_conn_id: str | None = "aws_default") -> str:
    """The failed batches' units (their key columns), with the batch, failure class and error."""
    frames = []
    for shard in read_results(results_uris, aws_conn_id):
        for failure in shard["failed"]:
            source = location(failure["uri"], aws_conn_id)
            if unit_key:
                with source.fs.open(source.uri, "rb") as handle:
                    units = pd.read_parquet(handle, columns=list(unit_key)).drop_duplicates()
            else:
                units = pd.DataFrame(index=[0])
            frames.append(units.assign(batch_id=failure["batch_id"], failure_class=failure["class"],
                                       error=failure["error"]))
    root = location(run_dir, aws_conn_id)
    uri = root.join("dead_letter.parquet")
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    from batch_worker.runtime import parquet_bytes

    root.write_bytes(uri, parquet_bytes(frame))
    return uri
