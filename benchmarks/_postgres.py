"""A throwaway PostgreSQL server: a private cluster on loopback, or one the caller names.

Both the benchmarks (recording on PostgreSQL, ``_store.py``; instances sharing a database,
``_instances.py``) and the test suite (``tests/servers.py``) start their private clusters here:
Debian's ``postgresql`` binaries, ``initdb`` in a temporary directory (as the ``postgres`` user
when run as root: initdb and postgres refuse root), ``trust`` authentication on 127.0.0.1 only,
a port found free, and ``pg_ctl -w`` for readiness.

The tests run theirs with ``fsync=off`` (they check behaviour, and a crash of the machine is no
concern of theirs); the benchmarks run with ``fsync`` and ``synchronous_commit`` on, a real
deployment's durability: every commit waits for its WAL to reach the disk.

This module imports neither pytest nor sluicegate, and psycopg only when a database is made:
the test suite loads it in a pytest plugin.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import uuid
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from ._upstream import tree_cpu_seconds

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "DATABASE_URL_ENV",
    "READY_TIMEOUT",
    "REQUIRE_ENV",
    "BenchPostgres",
    "PostgresServer",
    "free_port",
    "open_bench_postgres",
    "postgres_bin",
    "postgres_missing",
    "run_postgres",
]

#: A PostgreSQL server the benchmarks use instead of starting their own (a URL whose user may
#: create databases: each measurement gets a fresh one, dropped afterwards).
DATABASE_URL_ENV: Final = "SLUICEGATE_BENCH_DATABASE_URL"

#: Set by ``.ci/run``, which installs PostgreSQL: a test or a benchmark that needs a server fails
#: without one (never skips).
REQUIRE_ENV: Final = "SLUICEGATE_REQUIRE_SERVERS"

#: How long a server may take to become ready (a readiness bound on a busy machine, never a
#: timing assertion).
READY_TIMEOUT: Final = 60.0


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the server binds it next; a start that
    loses the race is retried on another port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres_user() -> list[str]:
    # initdb and postgres refuse to run as root: as root (CI), run them as the postgres user.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def postgres_bin() -> Path | None:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres`` (the newest Debian version, or
    on ``PATH``); None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


@attrs.define(eq=False)
class PostgresServer:
    """A private PostgreSQL cluster: ``trust`` authentication on 127.0.0.1 only.

    ``fsync``: whether commits wait for the disk (off for tests, on for the benchmarks;
    ``synchronous_commit`` is on either way). ``cpu``: the CPU its processes run on (None:
    wherever this process may run)."""

    bin_dir: Path
    root: Path
    port: int = 0
    fsync: bool = False
    cpu: int | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # Pinned before the exec: pg_ctl's postgres, and every backend it forks, inherit it.
        preexec: Callable[[], None] | None = None
        if self.cpu is not None:
            preexec = partial(os.sched_setaffinity, 0, {self.cpu})
        return subprocess.run(
            [*_as_postgres_user(), *args],
            capture_output=True,
            text=True,
            check=False,
            preexec_fn=preexec,
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
        fsync = "on" if self.fsync else "off"
        for _ in range(5):
            if not self.port:
                self.port = free_port()
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                f"-c fsync={fsync} -c synchronous_commit=on -c max_connections=200"
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
        return _create_database(self.url())

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the server's processes so far (the postmaster, the backends and
        the background processes, those that ended too), from ``/proc``; None without it or
        when the server is not running."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return tree_cpu_seconds(pid)


def _with_database(url: str, name: str) -> str:
    """``url`` (a ``postgresql://`` URL) with its database replaced by ``name``."""
    return urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()


def _create_database(server_url: str) -> str:
    """A new empty database on the server of ``server_url``; its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_database(server_url, name)


def _drop_database(server_url: str, database_url: str) -> None:
    import psycopg

    name = urllib.parse.urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        # FORCE: the store's pool may still be closing its connections.
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def run_postgres(
    bin_dir: Path, *, fsync: bool = False, cpu: int | None = None
) -> Iterator[PostgresServer]:
    """A private PostgreSQL server in a temporary directory, stopped (``immediate``: nothing of
    it is kept) and removed afterwards.

    Raises:
        RuntimeError: initdb failed, or the server did not start (with its log's tail).
    """
    root = Path(tempfile.mkdtemp(prefix="sluicegate-pg-"))
    server = PostgresServer(bin_dir=bin_dir, root=root, fsync=fsync, cpu=cpu)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


# --- for the benchmarks ----------------------------------------------------------------------


@attrs.frozen(kw_only=True, eq=False)
class BenchPostgres:
    """The PostgreSQL server a benchmark measures on: a fresh database for each measurement
    (:meth:`database`), and the server's CPU when it is our private cluster."""

    #: A URL of the server (its maintenance database), for creating and dropping databases.
    url: str
    #: The private cluster; None for a server named by ``SLUICEGATE_BENCH_DATABASE_URL``.
    server: PostgresServer | None
    #: What the server is, printed and stored next to the figures.
    note: str

    def cpu_seconds(self) -> float | None:
        """The server's CPU so far (None: not our cluster, so not ours to read)."""
        return None if self.server is None else self.server.cpu_seconds()

    def create_database(self) -> str:
        """A new empty database; its URL. Blocks (run it in a thread under trio)."""
        return _create_database(self.url)

    def drop_database(self, url: str) -> None:
        """Drop a database :meth:`create_database` made (its connections closed first)."""
        _drop_database(self.url, url)

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A new empty database for the block, dropped after it; its URL."""
        url = self.create_database()
        try:
            yield url
        finally:
            self.drop_database(url)


def postgres_missing() -> str | None:
    """Why the benchmarks cannot measure on PostgreSQL here; None when they can."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install -e '.[dev]' (or the postgres extra)"
    if os.environ.get(DATABASE_URL_ENV) or postgres_bin() is not None:
        return None
    return (
        f"PostgreSQL is not installed (Debian: apt-get install postgresql) and "
        f"{DATABASE_URL_ENV} is not set"
    )


@contextlib.contextmanager
def open_bench_postgres(*, cpu: int | None) -> Iterator[BenchPostgres]:
    """The server named by ``SLUICEGATE_BENCH_DATABASE_URL``, or a private cluster started for
    the block (``fsync`` and ``synchronous_commit`` on, pinned to ``cpu``).

    Raises:
        RuntimeError: PostgreSQL is not installed (see :func:`postgres_missing`), or the
            cluster did not start.
    """
    named = os.environ.get(DATABASE_URL_ENV)
    if named:
        yield BenchPostgres(
            url=named,
            server=None,
            note=f"PostgreSQL at {DATABASE_URL_ENV} (its durability settings; its CPU not read)",
        )
        return
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError(postgres_missing())
    with run_postgres(bin_dir, fsync=True, cpu=cpu) as server:
        where = "not pinned" if cpu is None else f"on CPU {cpu}"
        yield BenchPostgres(
            url=server.url(),
            server=server,
            note=f"private PostgreSQL {bin_dir.parent.name} cluster on loopback, fsync on, "
            f"synchronous_commit on, {where}",
        )
