"""steps: one build step run (confined or not) within a deadline, and the failures it can end in: the
patch's (BuildFailed, build-timeout) or the machine's (BuildInfraFailed: disk full, memory exhausted)."""
from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from pipeline.errors import InfraError, UserError
from pipeline.stages.sandbox import Sandbox
from pipeline.util.proc import CommandResult, CommandTimeout, run

_ERROR_RE = re.compile(r"(error:|Error \d+|undefined reference|\*\*\*)")

class BuildFailed(UserError):
    """The kernel does not build with the candidate's changes (its compiler's words in the excerpt)."""

    def __init__(self, message: str, excerpt: str, status: str = "build-failed"):
        self.excerpt = excerpt
        self.status = status  # build-failed, or build-timeout when it ran past kernel.build_timeout_s
        super().__init__(f"{message}\n{excerpt}")

class BuildInfraFailed(InfraError):
    """The build failed because the machine did (out of disk, out of memory, processes killed): not the
    patch's fault, so never reported as build-failed."""

    status = "infra-error"

    def __init__(self, message: str, excerpt: str):
        self.excerpt = excerpt
        super().__init__(f"{message}\n{excerpt}")

# What a compiler or make prints when the machine, not the source, failed.
_INFRA_RE = re.compile(r"(No space left on device|Disk quota exceeded|Killed signal terminated program|"
                       r"virtual memory exhausted|Cannot allocate memory|out of memory allocating|"
                       r"fork: Resource temporarily unavailable|cannot fork)")

LOW_DISK_BYTES = 512 * 1024**2

def run_step(argv: list[str], box: Sandbox | None, env: dict[str, str], wt: Path, logf: IO[str], deadline: float,
             late: str, on_line: Callable[[str], None] | None = None) -> CommandResult:
    """One build step, confined when `box` is given, within what is left before `deadline`; running past
    it is BuildFailed with status build-timeout and the message `late`. A step that failed because the
    machine did (disk full, memory exhausted, compilers killed) raises BuildInfraFailed instead."""
    left = deadline - time.monotonic()
    try:
        if left <= 0:
            raise CommandTimeout(CommandResult(argv, -9, ""), 0)
        res = run(box.wrap(argv, env) if box else argv, cwd=wt, env=None if box else env, log_file=logf,
                  check=False, timeout=left, keep_lines=5000, on_line=on_line)
    except CommandTimeout as exc:
        raise BuildFailed(late, exc.result.tail(20), "build-timeout") from None
    if res.returncode != 0:
        free = shutil.disk_usage(wt).free
        hit = _INFRA_RE.search(res.output)
        if free < LOW_DISK_BYTES or hit or res.returncode in (-9, 137):
            why = (f"only {free / 1024**2:.0f} MiB free on the build's disk" if free < LOW_DISK_BYTES else
                   f"'{hit.group(1)}'" if hit else "the build was killed (SIGKILL: out of memory?)")
            raise BuildInfraFailed(f"the build failed because the machine did ({why}); not the patch's fault, "
                                   f"free space or memory and run again", error_lines(res, 15))
    return res

def error_lines(res: CommandResult, lines: int = 25) -> str:
    """The lines of a failed build that say what failed, or its tail when none does."""
    errors = [line for line in res.output.splitlines() if _ERROR_RE.search(line)]
    return "\n".join(errors[-lines:]) or res.tail(lines)
