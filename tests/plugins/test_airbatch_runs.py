"""The plugin (plugins/airbatch_runs.py): loading it costs every Airflow process almost nothing, the run view's app
is built at its first request.

Every task's process loads the plugins (for their listeners), so what the plugin imports at load time
is paid once per task. The app itself is served through the real api-server in test_run_view.py.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
HEAVY = ("fastapi", "airflow.api_fastapi.core_api.security", "operators.kit.engine", "pandas")


def test_loading_the_plugin_imports_neither_the_api_server_nor_the_engine():
    code = ("import json, sys; import airflow.plugins_manager; import airbatch_runs; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PLUGINS, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_app_is_built_once_at_the_first_request_and_serves_every_request():
    sys.path.insert(0, str(PLUGINS))
    try:
        from airbatch_runs import AppOnFirstRequest
    finally:
        sys.path.remove(str(PLUGINS))
    built, served = [], []

    def factory():
        async def app(scope, receive, send):
            served.append(scope["path"])
        built.append(app)
        return app

    lazy = AppOnFirstRequest(factory)
    assert built == []

    async def requests():
        await asyncio.gather(*(lazy({"type": "http", "path": f"/{i}"}, None, None) for i in range(3)))
        await lazy({"type": "http", "path": "/later"}, None, None)

    asyncio.run(requests())
    assert len(built) == 1 and sorted(served) == ["/0", "/1", "/2", "/later"]
