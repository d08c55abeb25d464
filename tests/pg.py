"""A real PostgreSQL for tests. conftest.py registers the fixture `pg_url`: a fresh, empty database per test module
("postgresql+psycopg://..."), dropped afterwards.

Which server:
  1. $COGKIT_TEST_PG_URL, if set (a server where the user may CREATE DATABASE);
  2. a running local one at 127.0.0.1:5432 that lets `postgres` in without a
     password (trust, or PGPASSWORD/.pgpass);
  3. else a private cluster, started once per test session: initdb + pg_ctl
     (as the postgres user when we are root) in a temp dir, listening on a free
     port on 127.0.0.1 only, trust auth, fsync off; stopped and removed at exit.
     Chosen over pg_ctlcluster/pg_createcluster, which would register a cluster
     in /etc/postgresql and outlive the test run.
PostgreSQL not installed -> the tests FAIL (not skip): apt-get install postgresql.
"""
from __future__ import annotations

import atexit
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.net import free_port

# "postgresql://user@host:port" with no database: one server per test run. That holds because this
# module is imported under one name only (tests.pg, through conftest.py), never also as `pg`.
_server: str | None = None


def _connectable(url: str) -> bool:
    import psycopg
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    initdb = found[-1] if found else shutil.which("initdb")
    if not initdb:
        pytest.fail("PostgreSQL is not installed; these tests need a real one: "
                    "apt-get install postgresql (scripts/install does it)", pytrace=False)
    return Path(initdb).resolve().parent


def _start_private_cluster() -> str:
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="cogkit-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "log"

    def run(*args: str) -> None:
        result = subprocess.run(as_postgres + list(args), capture_output=True, text=True)
        if result.returncode != 0:
            logged = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}{logged}")

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
    for attempt in range(3):  # the free port may be taken between choosing and binding
        port = free_port()
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        try:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start")
            break
        except RuntimeError:
            if attempt == 2:
                raise

    def stop() -> None:
        subprocess.run(as_postgres + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql://postgres@127.0.0.1:{port}"


def server_url() -> str:
    """Base URL of a PostgreSQL server we may create databases on (found or started once)."""
    global _server
    if _server is None:
        env = os.environ.get("COGKIT_TEST_PG_URL", "").strip()
        if env:
            from sqlalchemy.engine import make_url
            _server = make_url(env).set(drivername="postgresql", database=None).render_as_string(hide_password=False)
        else:
            _bin_dir()  # fail early, with the install hint, when PostgreSQL is missing
            local = "postgresql://postgres@127.0.0.1:5432"
            _server = local if _connectable(local + "/postgres") else _start_private_cluster()
    return _server


def create_database() -> str:
    """A fresh empty database; returns its SQLAlchemy URL (postgresql+psycopg://...)."""
    import psycopg
    base = server_url()
    name = f"cogkit_test_{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(base + "/postgres", autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    return base.replace("postgresql://", "postgresql+psycopg://", 1) + "/" + name


def drop_database(url: str) -> None:
    import psycopg
    base, name = url.replace("postgresql+psycopg://", "postgresql://", 1).rsplit("/", 1)
    with psycopg.connect(base + "/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def pg_url():
    url = create_database()
    yield url
    drop_database(url)


# The same tests on both stores: an SQLite file and the PostgreSQL database above.
@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gw.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url: str):
    from server.store import Store

    s = Store(store_url)
    yield s
    s.close()
