"""Sweep overhead: a sweep of N trivial configurations against the kit's no-op fan-out of N units.

    python benchmarks/sweep.py --configs N [--configs-per-batch C] [--vcpus V]

The target is stated for `--configs 10000`: the sweep (`training_sweep` with `trainer: trivial`, one
trigger carrying a grid of N configurations, checked, keyed, batched, run as array jobs on the
local endpoint, then its history, report and notification written) within 1.5x of the
`units_of_work` DAG over N no-op units (its defaults: min(N, 3000) batches). Both run through
`dag.test()` on the same endpoint, each on a fresh DATA_ROOT so nothing is cached, after an untimed
warm-up run.

Ends with one line of figures: seconds of each and their ratio.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.5
sys.path.insert(0, str(REPO))


def grid_of(configs: int) -> dict:
    """A two-parameter grid with at least `configs` configurations (l2 x max_iterations)."""
    side = math.ceil(math.sqrt(configs))
    rows = math.ceil(configs / side)
    return {"grid": {"l2": [round(0.01 * (i + 1), 4) for i in range(side)],
                     "max_iterations": list(range(1, rows + 1))}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, required=True)
    parser.add_argument("--configs-per-batch", type=int, default=None, help="default: the DAG's (20)")
    parser.add_argument("--vcpus", type=int, default=2, help="local compute environment vCPUs")
    args = parser.parse_args()
    if args.configs > 20_000:
        raise SystemExit("--configs: at most 20,000 here (the grid's max_iterations goes up to 200)")

    from benchmarks.harness import DAGS, airflow_home, timed_run

    airflow_home("bench-sweep", [DAGS / "units_of_work.py", DAGS / "training_sweep.py"])
    from localaws.stack import running_endpoint

    spec = grid_of(args.configs)
    count = len(spec["grid"]["l2"]) * len(spec["grid"]["max_iterations"])
    with running_endpoint(vcpus=args.vcpus):
        with tempfile.TemporaryDirectory(prefix="sweep-warmup-") as scratch:
            os.environ["DATA_ROOT"] = scratch  # the first run in a process pays the imports: not timed
            timed_run(DAGS / "units_of_work.py", run_conf={"units": 10, "rows_per_unit": 1, "bucket_count": 10})
        with tempfile.TemporaryDirectory(prefix="sweep-fanout-") as scratch:
            os.environ["DATA_ROOT"] = scratch
            fanout_s, _ = timed_run(DAGS / "units_of_work.py",
                                    run_conf={"units": count, "rows_per_unit": 1, "bucket_count": min(count, 3000),
                                              "salt": uuid.uuid4().hex})
        with tempfile.TemporaryDirectory(prefix="sweep-") as scratch:
            os.environ["DATA_ROOT"] = scratch
            conf = {"sweep": spec, "trainer": "trivial"}
            if args.configs_per_batch:
                conf["configs_per_batch"] = args.configs_per_batch
            sweep_s, run = timed_run(DAGS / "training_sweep.py", run_conf=conf)
            from operators.kit.summary import xcom_value

            summary = xcom_value(run.dag_id, run.run_id, "summary")
    assert summary["counts"] == {"trained": count}, summary["counts"]
    ratio = sweep_s / fanout_s
    print(f"configurations {count} (one trigger), vCPUs {args.vcpus}")
    print(f"  no-op fan-out of {count} units   {fanout_s:8.1f} s")
    print(f"  sweep of {count} trivial configs {sweep_s:8.1f} s")
    print(f"configs={count} fanout_s={fanout_s:.1f} sweep_s={sweep_s:.1f} ratio={ratio:.2f}x target={TARGET}x "
          f"met={'yes' if ratio <= TARGET else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
