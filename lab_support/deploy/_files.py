"""The files of a repository that a commit would include, listed with git where possible.

In a git work tree the list is ``git ls-files``: tracked files plus untracked
files that ``.gitignore`` does not exclude, because ``git add .`` would commit
those next. Outside git (or without the ``git`` command) the folder is walked,
skipping virtual environments and caches and applying the root ``.gitignore``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

logger = logging.getLogger(__name__)

GIT_TIMEOUT_S = 30.0
# Folders that never hold project sources; skipped when walking a folder without git.
SKIPPED_FOLDERS = frozenset(
    {".git", ".venv", "venv", "env", "node_modules", "__pycache__", ".ipynb_checkpoints",
     ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox", "site-packages"}
)
# Example files document the variables with placeholder values, so they belong in git.
ENV_EXAMPLE_SUFFIXES = (".example", ".sample", ".template", ".dist")


@dataclass(frozen=True)
class RepositoryFiles:
    """The files to check under ``root``, as POSIX paths relative to it."""

    root: Path
    mode: Literal["git", "walk"]
    files: tuple[str, ...]
    tracked: frozenset[str] = field(default_factory=frozenset)

    def is_ignored(self, relative_path: str) -> bool:
        """Return whether git (or the root ``.gitignore`` outside git) ignores ``relative_path``."""
        if self.mode == "git":
            return _git_ignores(self.root, relative_path)
        return _gitignore_matches(self.root, relative_path)


def find_repository_root(start: str | os.PathLike[str] = ".") -> Path:
    """Return the nearest folder at or above ``start`` with ``.git`` or ``pyproject.toml``, else ``start`` itself."""
    start_path = Path(start).resolve()
    for folder in (start_path, *start_path.parents):
        if (folder / ".git").exists() or (folder / "pyproject.toml").is_file():
            return folder
    return start_path


def is_env_file(relative_path: str) -> bool:
    """Return whether the file is a dotenv file with real values (``.env``, ``.env.local``), not an example."""
    name = PurePosixPath(relative_path).name
    if name != ".env" and not name.startswith(".env."):
        return False
    return not name.endswith(ENV_EXAMPLE_SUFFIXES)


def list_repository_files(root: str | os.PathLike[str]) -> RepositoryFiles:
    """List the files under ``root`` that a commit would include; see the module docstring."""
    root_path = Path(root).resolve()
    if not root_path.is_dir():
        raise FileNotFoundError(f"folder {root_path} not found; pass the repository folder to scan")

    if _in_git_work_tree(root_path):
        tracked = _git_lines(root_path, "ls-files", "-z", "--cached")
        untracked = _git_lines(root_path, "ls-files", "-z", "--others", "--exclude-standard")
        existing = sorted(p for p in set(tracked) | set(untracked) if (root_path / p).is_file())
        return RepositoryFiles(root_path, "git", tuple(existing), frozenset(tracked))

    return RepositoryFiles(root_path, "walk", tuple(_walk(root_path)))


def _in_git_work_tree(root: Path) -> bool:
    if shutil.which("git") is None:
        logger.info("the git command is not installed, so %s is scanned as a plain folder", root)
        return False
    completed = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
        capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False,
    )
    return completed.returncode == 0 and completed.stdout.strip() == "true"


def _git_lines(root: Path, *args: str) -> list[str]:
    completed = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True, timeout=GIT_TIMEOUT_S, check=False,
    )
    if completed.returncode != 0:
        message = completed.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"git {' '.join(args)} failed in {root}: {message}")
    return [entry for entry in completed.stdout.decode("utf-8", errors="surrogateescape").split("\0") if entry]


def _git_ignores(root: Path, relative_path: str) -> bool:
    # --no-index applies the ignore rules alone, even to a file that is already tracked.
    completed = subprocess.run(
        ["git", "-C", str(root), "check-ignore", "-q", "--no-index", relative_path],
        capture_output=True, timeout=GIT_TIMEOUT_S, check=False,
    )
    if completed.returncode not in (0, 1):
        message = completed.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"git check-ignore failed for {relative_path} in {root}: {message}")
    return completed.returncode == 0


def _walk(root: Path) -> list[str]:
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if name not in SKIPPED_FOLDERS)
        for name in sorted(files):
            relative = (Path(folder) / name).relative_to(root).as_posix()
            if not _gitignore_matches(root, relative):
                found.append(relative)
    return found


def _gitignore_patterns(root: Path) -> list[str]:
    gitignore = root / ".gitignore"
    if not gitignore.is_file():
        return []
    lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _gitignore_matches(root: Path, relative_path: str) -> bool:
    """Apply the root ``.gitignore`` to a path, the last matching pattern winning.

    NOTE: this covers the usual forms (``name``, ``*.ext``, ``folder/``,
    ``/anchored``, ``!negated``), not every git rule. Git itself is used
    whenever the folder is a work tree.
    """
    path = PurePosixPath(relative_path)
    path_and_folders = [path, *(parent for parent in path.parents if str(parent) != ".")]
    ignored = False
    for pattern in _gitignore_patterns(root):
        negated = pattern.startswith("!")
        body = (pattern[1:] if negated else pattern).rstrip("/")
        if "/" in body:
            # A pattern with a slash is relative to the .gitignore's folder.
            targets = [str(p) for p in path_and_folders]
            body = body.lstrip("/")
        else:
            targets = [p.name for p in path_and_folders]
        if any(fnmatch.fnmatchcase(target, body) for target in targets):
            ignored = not negated
    return ignored
