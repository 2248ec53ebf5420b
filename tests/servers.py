"""Real PostgreSQL and Redis servers for the tests that need them, on loopback only.

Each is a private server the suite starts itself (Debian's ``postgresql`` and ``redis-server``
packages, which ``.ci/run`` installs), in a temporary directory, on a port it found free, and
awaited by readiness (``pg_ctl -w``; Redis answering ``PING``). A test that stops or restarts a
server to inject a fault starts one of its own (:func:`start_postgres`, :func:`start_redis`);
the others share one per session, each test on a fresh database (PostgreSQL) or a flushed one
(Redis).

The PostgreSQL cluster is started by ``benchmarks/_postgres.py``, which the benchmarks measure on
too (they with ``fsync`` on, the tests with it off). Without the binaries the tests that need
them skip, except where ``SLUICEGATE_REQUIRE_SERVERS`` is set (``.ci/run`` sets it): there a
missing server fails them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

# The private PostgreSQL cluster is the benchmarks' too (they measure on one, with fsync on).
from benchmarks._postgres import READY_TIMEOUT as READY_TIMEOUT
from benchmarks._postgres import REQUIRE_ENV as REQUIRE_ENV
from benchmarks._postgres import PostgresServer as PostgresServer
from benchmarks._postgres import free_port as free_port
from benchmarks._postgres import postgres_bin, run_postgres


def _missing(what: str) -> None:
    message = f"{what} is not installed (Debian: apt-get install postgresql redis-server)"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(message)
    pytest.skip(message)


# --- PostgreSQL ------------------------------------------------------------------------------


@contextlib.contextmanager
def start_postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for one test (or session); removed afterwards."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        _missing("PostgreSQL")
        raise AssertionError("unreachable")
    with run_postgres(bin_dir) as server:
        yield server


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
