"""A throwaway PostgreSQL server for the store tests, and a fixture that runs a test on each backend.

Load it with ``pytest_plugins = ["tests.pg"]`` in a test module. ``store_url`` gives a fresh, empty
store URL per test, once for SQLite and once for PostgreSQL; ``pg_url`` gives a fresh PostgreSQL
database. The server is started once per session (``initdb`` into a temporary directory, then
``pg_ctl start`` on a free loopback port, unix socket in the same directory) and stopped at the end.

PostgreSQL refuses to run as root, so as root (CI containers) it runs as the ``postgres`` user the
Debian package creates, or else as ``nobody``. Without the binaries or psycopg the PostgreSQL cases
skip with the reason; set ``LMREC_REQUIRE_POSTGRES=1`` (CI does) to make that a failure instead.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BINARIES = ("initdb", "pg_ctl", "postgres")
REQUIRE_ENV = "LMREC_REQUIRE_POSTGRES"


def find_bin_dir() -> Path | None:
    """A directory holding initdb, pg_ctl and postgres: $PATH, /usr/local/bin, then Debian's layout."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates.append(Path("/usr/local/bin"))
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(d) for d in debian), key=_version, reverse=True)  # newest first
    for directory in candidates:
        if all(os.access(directory / b, os.X_OK) for b in BINARIES):
            return directory
    return None


def _version(bin_dir: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in bin_dir.parent.name.split(".") if p.isdigit())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """One running server in ``root`` (data, socket, log), owned by ``owner`` when we are root."""

    bin_dir: Path
    root: Path
    port: int
    owner: pwd.struct_passwd | None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        kw: dict[str, Any] = {}
        if self.owner is not None:  # drop root for the server's programs (Python does the setuid)
            kw = {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )

    def start(self) -> None:
        data = str(self.root / "data")
        out = self._run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
        if out.returncode:
            raise RuntimeError(f"initdb failed:\n{out.stdout}\n{out.stderr}")
        # fsync off: these tests kill clients and services, never the database server itself.
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c full_page_writes=off"
        out = self._run("pg_ctl", "-D", data, "-l", str(self.root / "log"), "-o", options, "-w", "-t", "60", "start")
        if out.returncode:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{out.stdout}\n{out.stderr}\n{log[-2000:]}")

    def stop(self) -> None:
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop", timeout=30)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        """The URL of a fresh, empty database on this server."""
        import psycopg

        name = f"t{next(_counter)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + f"/{name}"


_counter = itertools.count()


def _unprivileged_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def start_server() -> PostgresServer:
    """Start a server or raise ``LookupError`` saying why there can be none here."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise LookupError("psycopg is not installed: pip install 'lmrec[postgres]'") from None
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise LookupError("no PostgreSQL server binaries (initdb, pg_ctl, postgres): run scripts/ci_postgres.sh")
    owner = None
    if os.geteuid() == 0:
        owner = _unprivileged_user()
        if owner is None:
            raise LookupError("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")
    # Not under pytest's tmp dir: that is private to root, and the server's user must reach its files.
    root = Path(tempfile.mkdtemp(prefix="lmrec-pg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    for attempt in range(3):  # the free port may be taken between choosing it and binding it
        server = PostgresServer(bin_dir, root, free_port(), owner)
        try:
            server.start()
            return server
        except RuntimeError:
            shutil.rmtree(root / "data", ignore_errors=True)
            if attempt == 2:
                shutil.rmtree(root, ignore_errors=True)
                raise
    raise AssertionError("unreachable")


_server: PostgresServer | None = None
_failure: str | None = None


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> PostgresServer:
    """The session's PostgreSQL server, started on first use and stopped when the session ends."""
    global _server, _failure
    if _server is None and _failure is None:
        try:
            _server = start_server()
            request.config.add_cleanup(_server.stop)
        except LookupError as why:
            _failure = str(why)
    if _server is None:
        assert _failure is not None
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL is required ({REQUIRE_ENV}=1) but {_failure}")
        pytest.skip(_failure)
    return _server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
    else:
        yield request.getfixturevalue("pg_url")
