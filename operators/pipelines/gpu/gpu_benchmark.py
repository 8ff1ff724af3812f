"""Planning and reporting for `dags/gpu_batch_benchmark.py`: the gpu_cases suite as Batch jobs on both queues.

Each case is a unit of work in a batch of its own; each device gets one shard whose single child
runs every case in one process, so CUDA start-up and warm-up are paid once per device and
reported on their own line (the first-call penalty), never averaged in.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Any

#: (device, queue, job definition) of the two sides of the comparison.
SIDES = (("cpu", "airbatch-cpu", "airbatch-worker-cpu"), ("gpu", "airbatch-gpu", "airbatch-worker-gpu"))


def plan(case_ids: list[str], *, small: bool, repeats: int, run_dir: str, out_root: str, nonce: str,
         aws_conn_id: str | None = "aws_default") -> list[dict[str, Any]]:
    """Write one batch per case and a manifest; return one shard per device for `.expand_kwargs()`."""
    import pandas as pd

    from batch_worker import gpu_cases
    from batch_worker.runtime import parquet_bytes

    from operators.kit import engine

    problems = case_problems(case_ids, list(gpu_cases.CASES))
    if problems:
        raise ValueError("cases: " + "; ".join(problems))
    cases = [c for c in gpu_cases.CASES if c in set(case_ids)] if case_ids else list(gpu_cases.CASES)
    root = engine.location(f"{run_dir}/cases", aws_conn_id)
    rows = []
    for batch_id, case_id in enumerate(cases):
        uri = root.join(f"bucket={batch_id}", "data_0.parquet")
        root.write_bytes(uri, parquet_bytes(pd.DataFrame({"case_id": [case_id]})))
        rows.append({"batch_id": batch_id, "uri": uri, "rows": 1, "units": 1,
                     "content_hash": hashlib.sha256(case_id.encode()).hexdigest()[:16]})
    manifest = root.join("manifest.parquet")
    root.write_bytes(manifest, parquet_bytes(pd.DataFrame(rows)))
    shards = []
    for index, (device, queue, job_definition) in enumerate(SIDES):
        spec = engine.ShardSpec(index=index, label=f"{device}: {len(cases)} cases", manifest=manifest, start=0,
                                stop=len(cases), workload="gpu_benchmark",
                                params={"device": device, "small": small, "repeats": repeats, "nonce": nonce},
                                output_root=out_root, run_root=run_dir, batches_per_child=len(cases))
        shards.append({"shard": asdict(spec), "job_queue": queue, "job_definition": job_definition})
    return shards


def case_problems(case_ids: list[str], known: list[str]) -> list[str]:
    """What is wrong with the `cases` param: unknown ids (with the closest known ones) and repeated ids."""
    import difflib

    problems = []
    for case_id in dict.fromkeys(c for c in case_ids if c not in known):
        close = difflib.get_close_matches(case_id, known, n=2, cutoff=0.6)
        problems.append(f"unknown case id {case_id!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)"
                                                          if close else ""))
    repeated = sorted({c for c in case_ids if case_ids.count(c) > 1})
    if repeated:
        problems.append(f"case id(s) {repeated} listed more than once; list each case once")
    if problems:
        problems.append(f"known case ids: {known}; empty: every case")
    return problems


def report(shard_summaries: list[dict[str, Any]], out_dir: str, aws_conn_id: str | None = "aws_default") -> dict:
    """Join both devices' rows into the comparison table; write rows.csv, comparison.csv and comparison.png."""
    import os
    import tempfile

    import pandas as pd

    from batch_worker import gpu_cases

    from operators.kit import engine

    rows: dict[str, list[dict[str, Any]]] = {"cpu": [], "gpu": []}
    for summary in shard_summaries:
        device = "cpu" if summary["label"].startswith("cpu") else "gpu"
        frame = engine.read_outputs(engine.output_uris([summary["results"]], aws_conn_id), aws_conn_id)
        rows[device] += [{k: (None if pd.isna(v) else v) for k, v in r.items()}
                         for r in frame.astype(object).to_dict("records")]
    table = gpu_cases.compare(rows["cpu"], rows["gpu"])
    out = engine.location(out_dir, aws_conn_id)
    with tempfile.TemporaryDirectory() as scratch:
        files = {"rows.csv": gpu_cases.write_table(rows["cpu"] + rows["gpu"], os.path.join(scratch, "rows.csv")),
                 "comparison.csv": gpu_cases.write_table(table, os.path.join(scratch, "comparison.csv")),
                 "comparison.png": gpu_cases.plot_comparison(table, os.path.join(scratch, "comparison.png"))}
        written = {}
        for name, path in files.items():
            written[name] = out.join(name)
            out.write_bytes(written[name], path.read_bytes())
    speedup = gpu_cases.suite_speedup(table)
    return {"table": table, "files": written, "suite_speedup": speedup,
            "text": gpu_cases.format_table(table),
            "gpu_device": next((r["device"] for r in rows["gpu"] if r.get("device")), None),
            "cpu_device": next((r["device"] for r in rows["cpu"] if r.get("device")), None)}
