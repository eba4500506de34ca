"""The one wrapper that runs every local external command."""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import InfraError, PipelineError

log = logging.getLogger(__name__)


@dataclass
class CommandResult:
    argv: list[str]
    returncode: int
    output: str  # stdout and stderr interleaved

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


class CommandTimeout(InfraError):
    """The command ran past its timeout; it and every process in its group were killed."""

    def __init__(self, result: CommandResult, timeout: float):
        self.result = result
        super().__init__(f"command still running after {timeout:.0f} s, killed: {shlex.join(result.argv)}\n"
                         f"{result.tail(20)}")


class CommandFailed(PipelineError):
    def __init__(self, result: CommandResult):
        self.result = result
        super().__init__(f"command failed with exit code {result.returncode}: "
                         f"{shlex.join(result.argv)}\n{result.tail(20)}")


def run(argv: Sequence[str | os.PathLike], *, cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None, log_file: Path | IO[str] | None = None,
        check: bool = True, timeout: float | None = None, input_text: str | None = None,
        stdin_file: Path | None = None) -> CommandResult:
    """Run argv (never through a shell), stream its output to log_file, return the result.

    stdin is closed unless input_text (or stdin_file, read as bytes) is given; env entries are added
    to os.environ.
    """
    args = [str(a) for a in argv]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    log.debug("run: %s (cwd=%s)", shlex.join(args), cwd or ".")
    own = None
    sink: IO[str] | None
    if isinstance(log_file, Path):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        own = sink = open(log_file, "a", encoding="utf-8")
    else:
        sink = log_file
    chunks: list[str] = []
    try:
        if sink:
            sink.write(f"$ {shlex.join(args)}\n")
            sink.flush()
        # Own process group, so an interruption can stop make and every compiler under it.
        stdin: IO[bytes] | int = subprocess.PIPE if input_text is not None else subprocess.DEVNULL
        if stdin_file is not None:
            stdin = open(stdin_file, "rb")  # noqa: SIM115 (closed below, once the child has it)
        proc = subprocess.Popen(args, cwd=cwd, env=full_env, text=True, errors="replace", stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        if not isinstance(stdin, int):
            stdin.close()
        if input_text is not None:
            assert proc.stdin
            proc.stdin.write(input_text)
            proc.stdin.close()
        assert proc.stdout
        stdout = proc.stdout

        def pump() -> None:  # a thread, so the timeout holds even while the output stays open
            for line in stdout:
                chunks.append(line)
                if sink:
                    sink.write(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
            reader.join()
        except BaseException as exc:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            reader.join(5)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise CommandTimeout(CommandResult(args, -9, "".join(chunks)), timeout or 0) from None
            raise
    finally:
        if own:
            own.close()
    result = CommandResult(args, proc.returncode, "".join(chunks))
    if check and result.returncode != 0:
        raise CommandFailed(result)
    return result
