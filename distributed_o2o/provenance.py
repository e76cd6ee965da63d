"""What produced a run: package versions and the source's git commit (recorded in summary.json)."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# The libraries whose versions change what a run computes (the simulator's included: the zoo's
# reference returns depend on it).
PACKAGES = ("torch", "ray", "gymnasium", "mujoco", "numpy")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in ("distributed_o2o", *PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(path: Path = Path(__file__).resolve().parent) -> str | None:
    """The commit of the git checkout holding `path` (this package's source by default), with
    "-dirty" when tracked files differ from it; None outside a checkout or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True, timeout=10).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def provenance() -> dict[str, Any]:
    return {"versions": package_versions(), "git_commit": git_commit()}
