"""A stand-in for the OpenTelemetry collector that `make rehearsal` has no image for.

Production's Airflow components export their metrics over OTLP/HTTP to a collector (config/production.env,
docker-compose.yaml). Here, on 127.0.0.1 only, this answers each export as a collector would (200, an empty
protobuf answer) and records one line per export: its path and size, never its content. `make rehearsal`
checks that the components did export, so the production settings are proven to reach a collector.

    python scripts/otlp_sink.py --port PORT --record FILE
"""
from __future__ import annotations

import argparse
import http.server
import threading

#: what OTLP/HTTP posts to; anything else is answered 404
PATHS = ("/v1/metrics", "/v1/traces", "/v1/logs")
#: an export larger than this is refused unread (the components' exports are kilobytes)
MAX_BODY_BYTES = 16 << 20


def handler(record: str) -> type[http.server.BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            if self.path not in PATHS or not 0 <= length <= MAX_BODY_BYTES:
                self.send_response(404 if self.path not in PATHS else 413)
                self.end_headers()
                return
            self.rfile.read(length)
            with lock, open(record, "a") as out:
                out.write(f"{self.path} {length}\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:  # one line per export would drown the log
            pass

    return Sink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True, help="a file that gets one line per export received")
    args = parser.parse_args()
    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler(args.record)).serve_forever()


if __name__ == "__main__":
    main()
