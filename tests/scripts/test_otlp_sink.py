"""The rehearsal's stand-in OpenTelemetry collector: answers OTLP/HTTP exports on loopback and counts them."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request


from localaws.server import free_port
from localaws.stack import REPO


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_exports_are_answered_and_counted_and_nothing_else_is(tmp_path):
    port, record = free_port(), tmp_path / "exports.txt"
    sink = subprocess.Popen([sys.executable, str(REPO / "scripts" / "otlp_sink.py"), "--port", str(port),
                             "--record", str(record)])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                status = post(f"{url}/v1/metrics", b"\x0a\x00")
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "the sink did not start"
                time.sleep(0.1)
        assert status == 200
        assert post(f"{url}/v1/traces", b"abc") == 200
        assert post(f"{url}/not-otlp", b"x") == 404
        assert record.read_text().splitlines() == ["/v1/metrics 2", "/v1/traces 3"]  # path and size, no content
    finally:
        sink.terminate()
        sink.wait(timeout=30)
