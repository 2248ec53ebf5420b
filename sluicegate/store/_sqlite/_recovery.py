"""Instances and recovery: a file store's instance lock file, telling a dead instance from a
live one, and the unfinished responses a dead one left."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable

#: What an instance ID looks like (``uuid4().hex``); anything else in the column is not a
#: running store's (and never becomes a file name).
_INSTANCE_ID: Final = re.compile(r"[0-9a-f]{32}")

# --- instances (file stores) -----------------------------------------------------------------


@attrs.define(eq=False)
class _InstanceLock:
    """A held ``flock`` on an instance's lock file: this store's own, or a dead instance's that
    recovery took over."""

    path: str
    fd: int

    def release(self, *, unlink: bool) -> None:
        try:
            if unlink:
                # Unlinked while still locked: nobody can take a lock on it in between.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        finally:
            os.close(self.fd)


def _lock_path(directory: str, instance: str) -> str:
    return os.path.join(directory, f"{instance}.lock")


def _claim_instance(directory: str, instance: str) -> _InstanceLock:
    """Create this store's lock file, already locked (else recovery could take the lock of a
    file that was just created, and delete it)."""
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{instance}.tmp")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = _lock_path(directory, instance)
        os.rename(temporary, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return _InstanceLock(path, fd)


def _probe_instance(directory: str, instance: str | None) -> tuple[bool, _InstanceLock | None]:
    """Whether ``instance`` is dead, and the lock this call took on its file if it has one (held
    until its responses are recovered, so no other store recovers them at the same time)."""
    if instance is None or not _INSTANCE_ID.fullmatch(instance):
        return True, None
    path = _lock_path(directory, instance)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a live store holds it (or another recovery does)
        os.close(fd)
        return False, None
    except BaseException:
        os.close(fd)
        raise
    return True, _InstanceLock(path, fd)


def _find_dead_instances(
    directory: str | None, own: str, instances: Iterable[str | None]
) -> tuple[set[str | None], list[_InstanceLock]]:
    """Which of ``instances`` are dead, and the locks taken on their files. Lock files of other
    dead instances (that left nothing unfinished) are deleted on the way."""
    others = set(instances) - {own}
    if directory is None:  # in memory: no other store can see this database
        return others, []
    dead: set[str | None] = set()
    held: list[_InstanceLock] = []
    try:
        for instance in others:
            is_dead, lock = _probe_instance(directory, instance)
            if is_dead:
                dead.add(instance)
            if lock is not None:
                held.append(lock)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            names = []
        for name in names:
            instance = name.removesuffix(".lock")
            if name == instance or instance == own or instance in others:
                continue
            _, lock = _probe_instance(directory, instance)
            if lock is not None:
                lock.release(unlink=True)
    except BaseException:
        _release_all(held, unlink=False)
        raise
    return dead, held


def _release_all(locks: Iterable[_InstanceLock], *, unlink: bool) -> None:
    for lock in locks:
        lock.release(unlink=unlink)


def _read_unfinished(db: sqlite3.Connection) -> list[tuple[str, str | None]]:
    """The unfinished responses and the instance that accepted each, oldest first."""
    # Literal statuses, as in the partial index ``responses_unfinished`` (bound parameters
    # would keep the planner from using it).
    rows = db.execute(
        "SELECT id, instance FROM responses WHERE status IN ('queued', 'in_progress')"
        " ORDER BY created_at"
    )
    return [(rid, instance) for rid, instance in rows]
