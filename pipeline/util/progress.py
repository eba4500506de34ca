"""Progress lines on the terminal: stage, candidate, repetition and an ETA."""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from pipeline.util.untrusted import one_line


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """What a run prints while it works: one line per event and a heartbeat, never silent long."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        # On a terminal a heartbeat redraws one line in place (with a bar where the total is known); in a
        # log or a pipe every heartbeat is a plain line of its own.
        self.live = _is_terminal(self.stream) if live is None else live
        self._open = False  # a heartbeat line is on the terminal without its newline
        self.start = time.monotonic()
        self.total_steps = 0
        self.done_steps = 0
        self._step_times: list[float] = []
        self.workers = 1  # steps that run at once (test machines in the pool)
        self._lock = threading.Lock()

    def say(self, stage: str, candidate: str, message: str, transient: bool = False) -> None:
        """One progress line; `transient` (a heartbeat) is redrawn in place on a terminal."""
        if self.quiet:
            return
        elapsed = time.monotonic() - self.start
        eta = ""
        if self._step_times and self.total_steps > self.done_steps:
            per = sum(self._step_times) / len(self._step_times)
            eta = f" | ETA {_fmt(per * (self.total_steps - self.done_steps) / max(1, self.workers))}"
        step = f" [{self.done_steps}/{self.total_steps}]" if self.total_steps else ""
        # Messages quote builds and test hosts: never an escape sequence on the terminal.
        if self.live and transient:  # one terminal line, redrawn: no column padding, cut to the width
            line = f"[{_fmt(elapsed):>7}]{step} {stage} {one_line(candidate, 28)}: {one_line(message, 400)}{eta}"
        else:
            line = f"[{_fmt(elapsed):>7}]{step} {stage:<8} {one_line(candidate, 28):<28} {one_line(message, 400)}{eta}"
        with self._lock:
            if self.live and (transient or self._open):
                self.stream.write("\r\x1b[K")  # back over the heartbeat line this replaces
            if self.live and transient:
                self.stream.write(line[:_width(self.stream) - 1])
            else:
                self.stream.write(line + "\n")
            self._open = self.live and transient
            self.stream.flush()

    def plan(self, steps: int) -> None:
        self.total_steps = steps

    def step_done(self, seconds: float) -> None:
        with self._lock:
            self.done_steps += 1
            self._step_times.append(seconds)

    @contextmanager
    def heartbeat(self, stage: str, candidate: str, what: str, every_s: float = 8.0,
                  detail: Callable[[], str] | None = None) -> Iterator[None]:
        """While the body runs, a line every `every_s` seconds saying it still runs (and `detail()`, e.g.
        objects compiled out of the expected total): never silent while a long step works."""
        done = threading.Event()
        start = time.monotonic()

        def beat() -> None:
            while not done.wait(every_s):
                extra = ""
                if detail is not None:
                    try:
                        extra = detail()
                    except Exception:  # noqa: BLE001 - a progress line must never break the step
                        extra = ""
                line = f"{what}: {_fmt(time.monotonic() - start)}" + (f", {extra}" if extra else "")
                self.say(stage, candidate, line, transient=True)

        thread = threading.Thread(target=beat, daemon=True)
        if not self.quiet:
            thread.start()
        try:
            yield
        finally:
            done.set()
            if thread.is_alive():
                thread.join(1)


class BuildCounter:
    """Counts what kbuild prints as it compiles ("  CC      kernel/rcu/srcutree.o"), against the total a
    previous build of the same config from an empty directory compiled, for progress lines with an ETA."""

    _WORDS = ("CC", "AS", "LD", "AR", "HOSTCC", "HOSTLD", "OBJCOPY", "GEN", "CPP", "SYSHDR", "SYSTBL",
              "WRAP", "UPD", "MKELF", "ZOFFSET", "VOFFSET", "RELOCS", "BUILD", "XZKERN", "GZIP", "LDS")

    def __init__(self, expected: int = 0, expected_s: float = 0.0):
        self.expected, self.expected_s = expected, expected_s
        self.count = 0
        self.start = time.monotonic()

    def line(self, text: str) -> None:
        word = text.split(None, 1)[0] if text[:2] == "  " and text.strip() else ""
        if word in self._WORDS:
            self.count += 1

    def plan(self) -> str:
        """' (about N steps from empty)' when the total is known, else ''."""
        return f" (about {self.expected} steps from empty)" if self.expected > 0 else ""

    def detail(self, bar: bool = False) -> str:
        """'N of about M steps (P%), ETA T', with a bar in front when asked; 'N steps so far' without a total."""
        if self.expected <= 0 or self.count > self.expected * 1.2:
            return f"{self.count} steps so far"
        frac = min(1.0, self.count / self.expected)
        elapsed = time.monotonic() - self.start
        eta = elapsed * (1 - frac) / frac if frac > 0.02 else max(0.0, self.expected_s - elapsed)
        if bar:  # a terminal line: short enough for 80 columns
            drawn = f"[{'#' * round(10 * frac):.<10}]"
            return f"{drawn} {self.count}/{self.expected} steps ({100 * frac:.0f}%), ETA {_fmt(eta)}"
        return f"{self.count} of about {self.expected} steps ({100 * frac:.0f}%), ETA {_fmt(eta)}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _width(stream: TextIO) -> int:
    """The terminal's width (80 when it cannot be read): a redrawn line must not wrap."""
    try:
        return max(40, os.get_terminal_size(stream.fileno()).columns)
    except (AttributeError, ValueError, OSError):
        return 80
