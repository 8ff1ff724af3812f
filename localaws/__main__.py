"""Command line: `python -m localaws serve|stop|wait|connection`."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from localaws.credentials import CREDENTIALS_FILE_NAME, Credentials, CredentialsFileError
from localaws.server import (DEFAULT_START_SECONDS, START_SECONDS_ENV, LocalAWS, NonLoopbackAddress, connection,
                             pid_alive, start_seconds_setting, wait_until_ready)


def serve(args: argparse.Namespace) -> int:
    if not args.credentials:
        print("error: give --credentials FILE (or set AIRFLOW_HOME): the endpoint's keys are written there for "
              "clients to read", file=sys.stderr)
        return 2
    try:
        start_seconds = start_seconds_setting(os.environ.get(START_SECONDS_ENV) if args.start_seconds is None
                                              else args.start_seconds)
        from localaws.guard import MAX_BODY_ENV, max_body_setting

        max_body_setting(os.environ.get(MAX_BODY_ENV))  # a wrong value stops the start here, with the fix
        credentials = Credentials.load_or_create(args.credentials)
        vcpus = None if args.no_provision else int(os.environ.get("BATCH_LOCAL_VCPUS") or os.cpu_count() or 1)
        endpoint = LocalAWS(host=args.host, port=args.port, region=args.region, credentials=credentials,
                            provision_vcpus=vcpus, start_seconds=start_seconds)
    except (NonLoopbackAddress, CredentialsFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    endpoint.start()
    if endpoint.provisioned is not None:
        changed = endpoint.provisioned["created"] + endpoint.provisioned["updated"]
        print(f"provisioned from config/batch_resources.json: {', '.join(changed) or 'nothing to change'}", flush=True)
    if args.pidfile:
        Path(args.pidfile).parent.mkdir(parents=True, exist_ok=True)
        Path(args.pidfile).write_text(f"{os.getpid()}\n")
    isolation = ("each isolated by bubblewrap" if endpoint.isolation_problem is None
                 else f"NOT isolated: {endpoint.isolation_problem}")
    print(f"local AWS endpoint ready at {endpoint.url} (Batch jobs run as local processes, {isolation}; "
          f"{endpoint.start_seconds:g} s from submit to RUNNING); its credentials: {args.credentials}", flush=True)
    try:
        while not stop.wait(1.0):
            if args.exit_with_parent and not pid_alive(args.exit_with_parent):
                break
    finally:
        endpoint.stop()
        if args.pidfile:
            Path(args.pidfile).unlink(missing_ok=True)
    return 0


def default_credentials_file() -> str | None:
    home = os.environ.get("AIRFLOW_HOME")
    return str(Path(home) / CREDENTIALS_FILE_NAME) if home else None


def stop(args: argparse.Namespace) -> int:
    pidfile = Path(args.pidfile)
    if not pidfile.exists():
        print("local AWS endpoint: not running")
        return 0
    pid = int(pidfile.read_text().strip())
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    print("local AWS endpoint stopped")
    return 0


def wait(args: argparse.Namespace) -> int:
    wait_until_ready(args.url, timeout=args.timeout)
    return 0


def print_connection(args: argparse.Namespace) -> int:
    """The aws_default connection for the endpoint whose keys are in --credentials (for AIRFLOW_CONN_AWS_DEFAULT)."""
    try:
        credentials = Credentials.load(args.credentials)
    except (FileNotFoundError, CredentialsFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(connection(args.url, credentials.client, args.region)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localaws", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the endpoint in the foreground")
    p_serve.add_argument("--host", default="127.0.0.1", help="loopback address only")
    p_serve.add_argument("--port", type=int, default=4566)
    p_serve.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    p_serve.add_argument("--credentials", metavar="FILE",
                         default=default_credentials_file(),
                         help="the key pairs to accept: read from FILE (mode 0600, yours) if it exists, else "
                              "generated and written there (default: $AIRFLOW_HOME/localaws-credentials.json)")
    p_serve.add_argument("--no-provision", action="store_true",
                         help="do not apply config/batch_resources.json at start")
    p_serve.add_argument("--start-seconds", metavar="SECONDS",
                         help="a Batch job's time from SubmitJob to RUNNING when capacity is free, spread over "
                              "SUBMITTED, PENDING, RUNNABLE and STARTING; 0: at once (default: "
                              f"${START_SECONDS_ENV}, else {DEFAULT_START_SECONDS:g})")
    p_serve.add_argument("--pidfile")
    p_serve.add_argument("--exit-with-parent", type=int, default=0, metavar="PID",
                         help="stop when this process is gone")
    p_stop = sub.add_parser("stop", help="stop an endpoint started with --pidfile")
    p_stop.add_argument("--pidfile", required=True)
    p_wait = sub.add_parser("wait", help="wait until an endpoint answers")
    p_wait.add_argument("--url", default="http://127.0.0.1:4566")
    p_wait.add_argument("--timeout", type=float, default=30)
    p_conn = sub.add_parser("connection", help="print the aws_default connection (JSON) for an endpoint's credentials")
    p_conn.add_argument("--credentials", metavar="FILE", default=default_credentials_file(), required=not default_credentials_file())
    p_conn.add_argument("--url", default="http://127.0.0.1:4566")
    p_conn.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    commands = {"serve": serve, "stop": stop, "wait": wait, "connection": print_connection}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
