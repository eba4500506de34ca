"""Git invocations that ignore the user's configuration."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.util import proc

# Identity and config isolation for every git command we run.
GIT_ENV = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "kpipe",
    "GIT_AUTHOR_EMAIL": "kpipe@localhost",
    "GIT_COMMITTER_NAME": "kpipe",
    "GIT_COMMITTER_EMAIL": "kpipe@localhost",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/true",
    "GIT_EDITOR": "/bin/true",
    "LC_ALL": "C",
}


def git(args: Sequence[str], cwd: Path, log_file: Path | None = None, check: bool = True,
        env: dict[str, str] | None = None, timeout: float | None = proc.DEFAULT_TIMEOUT_S,
        input_text: str | None = None, stdin_file: Path | None = None) -> proc.CommandResult:
    """Run git without the user's config or hooks (proc.run), logged, with a timeout."""
    merged = dict(GIT_ENV)
    if env:
        merged.update(env)
    return proc.run(["git", "-c", "gc.auto=0", "-c", "core.hooksPath=/dev/null", *args], cwd=cwd,
                    env=merged, log_file=log_file, check=check, timeout=timeout,
                    input_text=input_text, stdin_file=stdin_file)
