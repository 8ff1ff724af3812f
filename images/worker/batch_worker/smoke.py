"""A job that proves a Batch child really ran: it writes one file named after its array index.

    python -m batch_worker.smoke --out DIR [--sleep SECONDS] [--fail-index N]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_worker.smoke")
    parser.add_argument("--out", required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--fail-index", type=int, default=-1)
    args = parser.parse_args(argv)
    index = int(os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX", "0"))
    started = time.time()
    print(f"child {index} of job {os.environ.get('AWS_BATCH_JOB_ID')} started (attempt {os.environ.get('AWS_BATCH_JOB_ATTEMPT')})", flush=True)
    time.sleep(args.sleep)
    if index == args.fail_index:
        print(f"child {index}: failing on purpose (--fail-index {args.fail_index})", file=sys.stderr, flush=True)
        return 3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"index": index, "pid": os.getpid(), "started": started, "ended": time.time(),
              "job_id": os.environ.get("AWS_BATCH_JOB_ID"), "queue": os.environ.get("AWS_BATCH_JQ_NAME"),
              "compute_environment": os.environ.get("AWS_BATCH_CE_NAME")}
    tmp = out / f".child-{index:05d}.json.tmp"
    tmp.write_text(json.dumps(record))
    tmp.rename(out / f"child-{index:05d}.json")
    print(f"child {index}: wrote {out / f'child-{index:05d}.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
