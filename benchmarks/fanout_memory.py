"""A no-op fan-out of N units under the always-on stack, with the memory of every process kind.

    python benchmarks/fanout_memory.py --units 1000000 [--buckets B] [--batches-per-shard S] [--root DIR]

Starts `make up` on free ports in a private folder (scripts/soak.py's Stack), triggers one
`units_of_work` run of N generated no-op units through the REST API, and while it runs reads every
process of the stack twice a second: each process's peak RSS (`VmHWM`, which the kernel keeps for the
process's whole life, so a reading between two samples is not lost while the process lives) and
the sum of RSS of each kind at each reading. After the run: the metadata database's size
(`pg_database_size`, and the data folder on disk), then `make up` is stopped.

The kinds are scripts/soak.py's: api-server, scheduler, dag-processor, triggerer, executor workers
(forked from the scheduler), task processes, postgres, the local endpoint, Batch jobs. A process
that lives less than half a second may end between two readings: Batch children run for seconds
(slices of a shard), task processes for longer.

Ends with one line of figures, `units=... seconds=... peak_process_mb_max=... db_mb=...`, and exits 1
when the run does not succeed or when a process went above `--limit-mb` (2048).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from rehearsal import RehearsalError, wait_run  # noqa: E402  (scripts/ is not a package)
from soak import SoakError, Stack, kind_of, say, with_descendants  # noqa: E402

from benchmarks.harness import PeriodicSampler  # noqa: E402

LIMIT_MB = 2048


def status_kb(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmHWM: peak RSS, VmRSS: RSS now); None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class MemorySampler(PeriodicSampler):
    """Reads `processes()` (pid -> command) every `interval` seconds in a thread of its own: the peak RSS of
    each process seen, by kind, and the largest sum of RSS of one kind at one reading."""

    name = "memory-sampler"

    def __init__(self, processes, interval: float = 0.5):
        super().__init__(interval)
        self.processes = processes
        self.peak_kb: dict[int, tuple[str, int]] = {}  # pid -> (kind, peak RSS)
        self.kind_sum_kb: dict[str, int] = {}
        self.example: dict[str, str] = {}  # kind -> the command line of one of its processes
        self.readings = 0

    def sample(self) -> None:
        self.read_once()

    def read_once(self) -> None:
        sums: dict[str, int] = {}
        for pid, command in with_descendants(self.processes()).items():
            peak, now = status_kb(pid, "VmHWM"), status_kb(pid, "VmRSS")
            if peak is None or now is None:
                continue
            kind = kind_of(command)
            self.example.setdefault(kind, command[:160])
            seen = self.peak_kb.get(pid, (kind, 0))[1]
            self.peak_kb[pid] = (kind, max(seen, peak))
            sums[kind] = sums.get(kind, 0) + now
        for kind, total in sums.items():
            self.kind_sum_kb[kind] = max(self.kind_sum_kb.get(kind, 0), total)
        self.readings += 1

    def by_kind(self) -> dict[str, dict]:
        """{kind: {"processes", "peak_process_mb" (the largest peak of one process), "peak_sum_mb", "example"}}."""
        kinds: dict[str, dict] = {}
        for kind, peak in self.peak_kb.values():
            entry = kinds.setdefault(kind, {"processes": 0, "peak_process_mb": 0, "peak_sum_mb": 0})
            entry["processes"] += 1
            entry["peak_process_mb"] = max(entry["peak_process_mb"], round(peak / 1024))
        for kind, entry in kinds.items():
            entry["peak_sum_mb"] = round(self.kind_sum_kb.get(kind, 0) / 1024)
            entry["example"] = self.example.get(kind, "")
        return dict(sorted(kinds.items()))


def database_size(stack: Stack) -> dict[str, float]:
    """The metadata DB's size as PostgreSQL counts it, and its data folder on disk, in MB."""
    import sqlalchemy

    from localdb import LocalDB

    db = LocalDB(stack.home)
    engine = sqlalchemy.create_engine(db.url())
    try:
        with engine.connect() as connection:
            size = connection.execute(sqlalchemy.text("SELECT pg_database_size('airflow')")).scalar()
    finally:
        engine.dispose()
    on_disk = sum(path.stat().st_size for path in db.data.rglob("*") if path.is_file())
    return {"db_mb": round(size / 2**20, 1), "db_folder_mb": round(on_disk / 2**20, 1)}


def fanout(args: argparse.Namespace) -> dict:
    root = Path(args.root or tempfile.mkdtemp(prefix="airbatch-fanout-"))
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    stack = Stack(root)
    stack.env.pop("UP_WATCH_SECONDS")  # make up's own watchdog interval, as a user runs it
    conf = {"units": args.units, "salt": f"fanout-{args.units}"}
    if args.buckets:
        conf["bucket_count"] = args.buckets
    if args.batches_per_shard:
        conf["batches_per_shard"] = args.batches_per_shard
    try:
        stack.up()
        api = stack.api()
        with MemorySampler(stack.processes) as sampler:
            started = time.monotonic()
            run_id = api.trigger("units_of_work", conf, f"fanout{args.units}")
            say(f"triggered {run_id} with {json.dumps(conf)}")
            wait_run(api, "units_of_work", run_id, args.timeout)
            seconds = time.monotonic() - started
        summary = api.xcom("units_of_work", run_id, "summary")
        say(f"{run_id} succeeded in {seconds:.0f} s")
        figures = {"root": str(root), "units": args.units, "seconds": round(seconds, 1),
                   "units_per_second": round(args.units / seconds), "readings": sampler.readings,
                   "memory": sampler.by_kind(), **database_size(stack),
                   "batches": summary.get("batches") if isinstance(summary, dict) else None,
                   "shards": len([ti for ti in api.task_instances("units_of_work", run_id)
                                  if ti["task_id"] == "run_shard"])}
        figures["stop_seconds"] = round(stack.stop(), 1)
        return figures
    finally:
        stack.shut_down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/fanout_memory.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=100_000, help="generated no-op units (default 100000)")
    parser.add_argument("--buckets", type=int, help="batches (the DAG's bucket_count; default its own)")
    parser.add_argument("--batches-per-shard", type=int, help="the DAG's batches_per_shard (default its own)")
    parser.add_argument("--limit-mb", type=int, default=LIMIT_MB, help="the most one process may reach (2048)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds the run may take (3600)")
    parser.add_argument("--root", help="the private folder of the stack (default: a new temporary one)")
    parser.add_argument("--figures", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    try:
        figures = fanout(args)
    except (SoakError, RehearsalError) as error:
        print(f"fanout_memory: {error}", file=sys.stderr)
        return 1
    print(json.dumps(figures, indent=2))
    if args.figures:
        args.figures.write_text(json.dumps(figures, indent=2) + "\n")
    memory = figures["memory"]
    top = max(entry["peak_process_mb"] for entry in memory.values())
    over = sorted(kind for kind, entry in memory.items() if entry["peak_process_mb"] > args.limit_mb)
    print(f"units={figures['units']} seconds={figures['seconds']} units_per_second={figures['units_per_second']} "
          + " ".join(f"peak_mb[{kind.replace(' ', '_')}]={entry['peak_process_mb']}" for kind, entry in memory.items())
          + f" peak_process_mb_max={top} limit_mb={args.limit_mb} db_mb={figures['db_mb']}"
          f" db_folder_mb={figures['db_folder_mb']}")
    if over:
        print(f"fanout_memory: above {args.limit_mb} MB: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
