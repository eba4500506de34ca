"""The one wrapper that runs every local external command."""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.errors import InfraError

log = logging.getLogger(__name__)


# What one command may cost at most, whatever it prints (a build step printing `yes` for an hour):
# the lines kept in memory for the result, and the bytes written to its log.
KEEP_LINES = 20_000
LOG_LIMIT_BYTES = 64 * 1024 * 1024
MAX_LINE = 64 * 1024  # a line without an end is cut here (read in pieces)
DEFAULT_TIMEOUT_S = 3600.0  # every command has one; callers that need longer say so


@dataclass
class CommandResult:
    """A finished command: argv, exit code, its output (bounded) and how long it took."""

    argv: list[str]
    returncode: int
    output: str  # stdout and stderr interleaved; its last KEEP_LINES lines when it printed more
    dropped_lines: int = 0
    warnings: int = 0  # lines containing "warning:" (compilers), counted over the whole output

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


class CommandTimeout(InfraError):
    """The command ran past its timeout; it and every process in its group were killed."""

    def __init__(self, result: CommandResult, timeout: float):
        self.result = result
        super().__init__(f"command still running after {timeout:.0f} s, killed: {shlex.join(result.argv)}\n"
                         f"{result.tail(20)}")


class CommandFailed(InfraError):
    """A command run with check=True exited non-zero: the machinery's, with the output's tail."""

    def __init__(self, result: CommandResult):
        self.result = result
        super().__init__(f"command failed with exit code {result.returncode}: "
                         f"{shlex.join(result.argv)}\n{result.tail(20)}")


def run(argv: Sequence[str | os.PathLike], *, cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None, log_file: Path | IO[str] | None = None,
        check: bool = True, timeout: float | None = DEFAULT_TIMEOUT_S, input_text: str | None = None,
        stdin_file: Path | None = None, keep_lines: int = KEEP_LINES,
        log_limit: int = LOG_LIMIT_BYTES, on_line: Callable[[str], None] | None = None) -> CommandResult:
    """Run argv (never through a shell), stream its output to log_file, return the result.

    stdin is closed unless input_text (or stdin_file, read as bytes) is given; env entries are added
    to os.environ. Memory and log size are bounded: the result keeps the last `keep_lines` lines, the
    log gets at most `log_limit` bytes of this command's output and then a note.
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
    chunks: deque[str] = deque(maxlen=keep_lines)
    counts = {"lines": 0, "warnings": 0, "logged": 0}
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
            for line in iter(lambda: stdout.readline(MAX_LINE), ""):
                chunks.append(line)
                counts["lines"] += 1
                if "warning:" in line:
                    counts["warnings"] += 1
                if on_line is not None:
                    on_line(line)
                if sink and counts["logged"] < log_limit:
                    counts["logged"] += len(line)
                    sink.write(line)
                    if counts["logged"] >= log_limit:
                        sink.write(f"\n[kpipe: log capped at {log_limit} bytes; the rest of this command's "
                                   f"output is not kept]\n")

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
                raise CommandTimeout(CommandResult(args, -9, "".join(chunks), counts["lines"] - len(chunks),
                                                   counts["warnings"]), timeout or 0) from None
            raise
    finally:
        if own:
            own.close()
    result = CommandResult(args, proc.returncode, "".join(chunks), counts["lines"] - len(chunks), counts["warnings"])
    if check and result.returncode != 0:
        raise CommandFailed(result)
    return result
