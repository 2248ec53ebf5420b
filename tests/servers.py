"""Real PostgreSQL and Redis servers for the tests that need them, on loopback only.

Each is a private server the suite starts itself (Debian's ``postgresql`` and ``redis-server``
packages, which ``.ci/run`` installs), in a temporary directory, on a port it found free, and
awaited by readiness (``pg_ctl -w``; Redis answering ``PING``). A test that stops or restarts a
server to inject a fault starts one of its own (:func:`start_postgres`, :func:`start_redis`);
the others share one per session, each test on a fresh database (PostgreSQL) or a flushed one
(Redis).

Without the binaries the tests that need them skip, except where
``SLUICEGATE_REQUIRE_SERVERS`` is set (``.ci/run`` sets it): there a missing server fails them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

#: Set by ``.ci/run``: a test that needs a server fails (never skips) without one.
REQUIRE_ENV = "SLUICEGATE_REQUIRE_SERVERS"

#: How long a server may take to become ready before the test fails (a readiness bound on a
#: busy machine, never a timing assertion).
READY_TIMEOUT = 60.0


def _missing(what: str) -> None:
    message = f"{what} is not installed (Debian: apt-get install postgresql redis-server)"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the server binds it next; a start that
    loses the race is retried on another port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres_user() -> list[str]:
    # initdb and postgres refuse to run as root: as root (CI), run them as the postgres user.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


# --- PostgreSQL ------------------------------------------------------------------------------


@attrs.define(eq=False)
class PostgresServer:
    """A private PostgreSQL cluster: ``trust`` authentication on 127.0.0.1 only."""

    bin_dir: Path
    root: Path
    port: int = 0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*_as_postgres_user(), *args], capture_output=True, text=True, check=False
        )

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        done = self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr}")

    def start(self) -> None:
        """Start it (on its old port after a stop; on a free one the first time)."""
        for _ in range(5):
            if not self.port:
                self.port = free_port()
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=on -c max_connections=200"
            )
            done = self._run(
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-o",
                options,
                "-l",
                str(self.root / "server.log"),
                "-t",
                str(int(READY_TIMEOUT)),
                "-w",
                "start",
            )
            if done.returncode == 0:
                return
            self.port = 0  # taken meanwhile: another port
        log = (self.root / "server.log").read_text(errors="replace")
        raise RuntimeError(f"PostgreSQL did not start: {done.stderr}\n{log[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        """Stop it: ``fast`` (clients disconnected) or ``immediate`` (as if killed)."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


@contextlib.contextmanager
def start_postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for one test (or session); removed afterwards."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        _missing("PostgreSQL")
        raise AssertionError("unreachable")
    root = Path(tempfile.mkdtemp(prefix="sluicegate-pg-"))
    server = PostgresServer(bin_dir=bin_dir, root=root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with start_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres_server.create_database()


# --- Redis -----------------------------------------------------------------------------------


@attrs.define(eq=False)
class RedisServer:
    """A private Redis server on 127.0.0.1, nothing persisted."""

    binary: str
    root: Path
    port: int = 0
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (on its old port after a stop; on a free one the first time)."""
        for _ in range(5):
            if not self.port:
                self.port = free_port()
            self._process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.root),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._await_ready():
                return
            self.stop()
            self.port = 0
        raise RuntimeError("Redis did not start")

    def _await_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                return False  # exited: the port was taken
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)  # readiness polling, never a timing assertion
        return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


@contextlib.contextmanager
def start_redis() -> Iterator[RedisServer]:
    """A private Redis server for one test (or session); stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("Redis")
        raise AssertionError("unreachable")
    root = Path(tempfile.mkdtemp(prefix="sluicegate-redis-"))
    server = RedisServer(binary=binary, root=root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_session_server() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture
def redis_server(redis_session_server: RedisServer) -> RedisServer:
    """The session's Redis server, emptied for this test."""
    redis_session_server.flush()
    return redis_session_server


def pause_redis(server: RedisServer) -> None:
    """Freeze the server (SIGSTOP): connections stay open and nothing answers, as with a Redis
    that hangs."""
    assert server._process is not None
    server._process.send_signal(signal.SIGSTOP)


def resume_redis(server: RedisServer) -> None:
    """Undo :func:`pause_redis` (SIGCONT)."""
    assert server._process is not None
    server._process.send_signal(signal.SIGCONT)
