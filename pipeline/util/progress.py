"""Progress lines on the terminal: stage, candidate, repetition and an ETA."""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from pipeline.util.untrusted import one_line


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.start = time.monotonic()
        self.total_steps = 0
        self.done_steps = 0
        self._step_times: list[float] = []
        self.workers = 1  # steps that run at once (test machines in the pool)
        self._lock = threading.Lock()

    def say(self, stage: str, candidate: str, message: str) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.start
        eta = ""
        if self._step_times and self.total_steps > self.done_steps:
            per = sum(self._step_times) / len(self._step_times)
            eta = f" | ETA {_fmt(per * (self.total_steps - self.done_steps) / max(1, self.workers))}"
        step = f" [{self.done_steps}/{self.total_steps}]" if self.total_steps else ""
        # Messages quote builds and test hosts: never an escape sequence on the terminal.
        print(f"[{_fmt(elapsed):>7}]{step} {stage:<8} {one_line(candidate, 28):<28} {one_line(message, 400)}{eta}",
              file=self.stream,
              flush=True)

    def plan(self, steps: int) -> None:
        self.total_steps = steps

    def step_done(self, seconds: float) -> None:
        with self._lock:
            self.done_steps += 1
            self._step_times.append(seconds)
