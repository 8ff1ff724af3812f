"""Command line: `python -m localdb url|start|stop|status` for the database of $AIRFLOW_HOME."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from localdb import LocalDB, LocalDBError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdb", description=__doc__)
    parser.add_argument("--home", default=os.environ.get("AIRFLOW_HOME"),
                        help="the Airflow home whose database this is (default: $AIRFLOW_HOME)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("url", help="print the SQLAlchemy URL of the database")
    p_start = sub.add_parser("start", help="start the server unless it runs; wait until it answers")
    p_start.add_argument("--log", help="the server's output (default: $AIRFLOW_HOME/postgres/postgres.log)")
    p_start.add_argument("--timeout", type=float, default=120)
    sub.add_parser("stop", help="stop the server (fast shutdown)")
    sub.add_parser("status", help="exit 0 when the server answers")
    args = parser.parse_args(argv)
    if not args.home:
        parser.error("set AIRFLOW_HOME or give --home")
    db = LocalDB(Path(args.home))
    try:
        if args.command == "url":
            print(db.url())
        elif args.command == "start":
            return start(db, Path(args.log) if args.log else db.log, args.timeout)
        elif args.command == "stop":
            print("local database stopped" if db.stop() else "local database: not running")
        elif args.command == "status":
            running = db.server_pid() is not None and db.answers()
            print(f"local database: {'running' if running else 'not running'} ({db.data})")
            return 0 if running else 1
    except LocalDBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def start(db: LocalDB, log: Path, timeout: float) -> int:
    db.prepare()
    pid = db.server_pid()
    if pid is not None:
        db.wait_ready(timeout)
        print(f"local database: PostgreSQL already running (pid {pid}, data {db.data})")
        return 0
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(log, "ab") as out:
        # A session of its own: a Ctrl-C in the terminal reaches it only through the stack's stop.
        process = subprocess.Popen(db.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    db.wait_ready(timeout, process)
    print(f"local database: PostgreSQL {process.pid} on {db.socket_dir} (data {db.data}, log {log})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
