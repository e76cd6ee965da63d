"""One process writes a run directory at a time: a lock file naming the writer's host and pid,
created exclusively, removed when the run ends. A lock left by a process that is gone (same
host, pid not running) is taken over with one line."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from distributed_o2o.errors import UserError

LOCK_FILE = ".o2o.lock"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _owner(lock: Path) -> tuple[str, int] | None:
    """(host, pid) written in a lock file; None if it is unreadable (its writer died writing it)."""
    try:
        host, pid = lock.read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


@contextmanager
def run_lock(run_path: Path, warn: Callable[[str], None]) -> Iterator[None]:
    lock, host = run_path / LOCK_FILE, socket.gethostname()
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            owner = _owner(lock)
            if owner is not None and (owner[0] != host or _running(owner[1])):
                raise UserError(f"run '{run_path}' is being written by process {owner[1]} on {owner[0]}: wait for it to "
                                f"end, or pass another --out (if that process is gone, delete {lock})") from None
            warn(f"taking over the lock of run '{run_path}' from {'a writer' if owner is None else f'process {owner[1]}'} "
                 "that is gone")
            lock.unlink(missing_ok=True)
    with os.fdopen(fd, "w") as f:
        f.write(f"{host} {os.getpid()}\n")
    try:
        yield
    finally:
        try:
            lock.unlink(missing_ok=True)
        except OSError:  # the directory was made read-only: the next writer takes the stale lock over
            pass
