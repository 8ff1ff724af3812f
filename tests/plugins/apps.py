"""The api-server's app with the run view plugin mounted, and its clients, for the run view's tests."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import pytest


@contextlib.contextmanager
def plugin_clients() -> Iterator[Callable]:
    """`client(user, role="viewer")`: a TestClient of the app with that user's JWT (None: no credentials), under
    tests.plugins.auth_manager.OneDagAuthManager; the app is dropped afterwards."""
    from fastapi.testclient import TestClient

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__CORE__AUTH_MANAGER", "tests.plugins.auth_manager.OneDagAuthManager")
        from airflow.api_fastapi import app as api_app
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        api_app.purge_cached_app()
        app = api_app.create_app("core")
        manager = api_app.get_auth_manager()

        def client(user: str | None, role: str = "viewer") -> TestClient:
            headers = {}
            if user is not None:
                headers["Authorization"] = f"Bearer {manager.generate_jwt(SimpleAuthManagerUser(username=user, role=role))}"
            return TestClient(app, headers=headers)

        try:
            yield client
        finally:
            api_app.purge_cached_app()


def private_data_root(tmp_path_factory, name: str) -> Path:
    """A module's own DATA_ROOT, private as the local stack's."""
    root = tmp_path_factory.mktemp(name) / "data"
    root.mkdir(mode=0o700)
    return root
