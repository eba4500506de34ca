"""Shared fixtures: isolated caches for unit tests, one shared kernel and test host for e2e tests."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the user's real HOME or caches (e2e tests opt into a shared cache explicitly)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("KPIPE_CACHE_DIR", str(home / ".cache" / "kpipe"))
    return home


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    full = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "Test Author", "GIT_AUTHOR_EMAIL": "author@example.org",
            "GIT_COMMITTER_NAME": "Test Author", "GIT_COMMITTER_EMAIL": "author@example.org", **(env or {})}
    return subprocess.run(["git", *args], cwd=cwd, env=full, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def small_repo(tmp_path: Path) -> Path:
    """A small git history: a file to patch, a commit to revert."""
    repo = tmp_path / "src"
    (repo / "kernel" / "rcu").mkdir(parents=True)
    git(tmp_path, "init", "-q", "-b", "master", str(repo))
    (repo / "kernel" / "rcu" / "srcutree.c").write_text("".join(f"line {i}\n" for i in range(1, 41)))
    (repo / "README").write_text("small tree\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    (repo / "kernel" / "rcu" / "srcutree.c").write_text(
        "".join(f"line {i}\n" if i != 20 else "line 20 changed\n" for i in range(1, 41)))
    git(repo, "commit", "-q", "-a", "-m", "change line 20")
    git(repo, "tag", "v1")
    return repo
