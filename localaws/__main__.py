"""Command line: `python -m localaws serve|stop|wait`."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from localaws.server import LocalAWS, NonLoopbackAddress, pid_alive, wait_until_ready


def serve(args: argparse.Namespace) -> int:
    try:
        endpoint = LocalAWS(host=args.host, port=args.port, region=args.region)
    except NonLoopbackAddress as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    endpoint.start()
    if args.pidfile:
        Path(args.pidfile).parent.mkdir(parents=True, exist_ok=True)
        Path(args.pidfile).write_text(f"{os.getpid()}\n")
    print(f"local AWS endpoint ready at {endpoint.url} (Batch jobs run as local processes)", flush=True)
    try:
        while not stop.wait(1.0):
            if args.exit_with_parent and not pid_alive(args.exit_with_parent):
                break
    finally:
        endpoint.stop()
        if args.pidfile:
            Path(args.pidfile).unlink(missing_ok=True)
    return 0


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localaws", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the endpoint in the foreground")
    p_serve.add_argument("--host", default="127.0.0.1", help="loopback address only")
    p_serve.add_argument("--port", type=int, default=4566)
    p_serve.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    p_serve.add_argument("--pidfile")
    p_serve.add_argument("--exit-with-parent", type=int, default=0, metavar="PID",
                         help="stop when this process is gone")
    p_stop = sub.add_parser("stop", help="stop an endpoint started with --pidfile")
    p_stop.add_argument("--pidfile", required=True)
    p_wait = sub.add_parser("wait", help="wait until an endpoint answers")
    p_wait.add_argument("--url", default="http://127.0.0.1:4566")
    p_wait.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return {"serve": serve, "stop": stop, "wait": wait}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
