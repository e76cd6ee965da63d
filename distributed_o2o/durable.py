"""Writing files safely: outputs checked writable before any work, files flushed to disk before
they are switched in, and checksummed so a damaged one is recognised rather than read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from distributed_o2o.errors import UserError


def check_writable(directory: str | Path, what: str) -> None:
    """Create `directory` and prove a file can be written there, before work that would be lost."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".o2o-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write {what} to '{directory}' ({exc.strerror or exc}): pass a directory you can write to") from None


def sync_file(path: str | Path) -> None:
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: str | Path) -> None:
    """Flush a directory's entries (renames, new files) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_synced(tmp: Path, path: Path) -> None:
    """Switch a completely written `tmp` in as `path`: data on disk first, then the rename."""
    sync_file(tmp)
    tmp.replace(path)
    sync_dir(path.parent)
