"""The local metadata DB (localdb/): a real PostgreSQL from the wheel, private to its home, kept across restarts."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from localdb import SOCKET_PATH_LIMIT, LocalDB, LocalDBError, _private_dir
from localaws.stack import REPO


def localdb(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localdb", "--home", str(home), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "airflow"
    yield home
    LocalDB(home).stop()


def test_the_database_starts_private_answers_on_its_socket_only_and_keeps_its_data_across_restarts(home):
    started = localdb(home, "start")
    assert started.returncode == 0, started.stderr
    db = LocalDB(home)
    assert localdb(home, "url").stdout.strip() == db.url() == f"postgresql+psycopg2://airflow@/airflow?host={home}/postgres/run"
    for folder in (home, db.root, db.data, db.socket_dir):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    socket = db.socket_dir / ".s.PGSQL.5432"
    assert stat.S_ISSOCK(socket.stat().st_mode) and stat.S_IMODE(socket.stat().st_mode) & 0o077 == 0
    pid = db.server_pid()
    # no TCP listener: nothing but this user's processes can reach it
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=60).stdout
    assert f"pid={pid}," not in listening
    with psycopg2.connect(host=str(db.socket_dir), user="airflow", dbname="airflow") as connection:
        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE kept (value text)")
            cursor.execute("INSERT INTO kept VALUES ('across restarts')")
    assert localdb(home, "start").stdout.startswith("local database: PostgreSQL already running")
    assert localdb(home, "stop").stdout.strip() == "local database stopped"
    assert db.server_pid() is None and localdb(home, "status").returncode == 1

    assert localdb(home, "start").returncode == 0
    assert db.server_pid() != pid
    with psycopg2.connect(host=str(db.socket_dir), user="airflow", dbname="airflow") as connection:
        with connection.cursor() as cursor:
            cursor.execute("SELECT value FROM kept")
            assert cursor.fetchall() == [("across restarts",)]
    assert localdb(home, "status").returncode == 0


def test_a_home_too_deep_for_a_unix_socket_gets_a_private_socket_folder_in_the_temp_dir(tmp_path):
    home = tmp_path / ("deep-" * 20) / "airflow"
    db = LocalDB(home)
    assert len(str(home / "postgres" / "run" / ".s.PGSQL.5432")) > SOCKET_PATH_LIMIT
    assert db.socket_dir.parent == Path(os.environ.get("TMPDIR", "/tmp")) and len(str(db.socket_dir)) < 80
    try:
        assert localdb(home, "start").returncode == 0
        assert stat.S_IMODE(db.socket_dir.stat().st_mode) == 0o700
        assert db.answers()
    finally:
        db.stop()
        subprocess.run(["rm", "-rf", str(db.socket_dir)], check=False, timeout=60)


def test_a_link_planted_as_the_socket_folder_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    planted = tmp_path / "run"
    planted.symlink_to(target)
    with pytest.raises(LocalDBError, match="not a folder of this user's"):
        _private_dir(planted)
