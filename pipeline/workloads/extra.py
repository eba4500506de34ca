"""What every workload besides the flash VMM is made of: its settings (ExtraWorkload), the error a
failing or unreadable one raises, and the settings all kinds share (timeout_s, args)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

_ARG_RE = re.compile(r"^[A-Za-z0-9_.,:=+\-/]{1,64}$")


@dataclass(frozen=True)
class ExtraWorkload:
    """A workload besides the flash VMM: its kind, headline metric, arguments and time limit."""

    name: str
    kind: str
    headline: str
    timeout_s: int = 600
    test: str = ""  # kvm-selftest
    args: tuple[str, ...] = ()
    path: Path | None = None  # command
    lower_is_better: bool = True
    # Runs for controls too (role: control). Off by default: a control checks the flash workload's method,
    # and with the kernel and command line of a candidate its other workloads would only repeat that one's.
    controls: bool = False
    # Set per run by the runner (repetitions.censor_factor), never by a config: > 0 stops the workload after
    # this long when its kind can read a lower bound from that (a censored run of this workload).
    censor_s: float = 0.0

    def metric(self, m: str) -> str:
        return f"{self.name}.{m}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "headline": self.metric(self.headline), "test": self.test,
                "args": list(self.args), "path": str(self.path) if self.path else "", "timeout_s": self.timeout_s,
                "controls": self.controls}

    def runs_for(self, role: str) -> bool:
        """Whether a candidate of this role runs it (controls only when `controls: true`)."""
        return self.controls or role != "control"


class WorkloadOutputError(UserError):
    """The workload failed or its output could not be read as metrics (the candidate's, not retried)."""

    def __init__(self, message: str, output: str = ""):
        self.output = output
        super().__init__(message)


def common_settings(r: Any, item: dict, p: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The settings every kind takes (timeout_s, args, controls), checked with key and line."""
    m = r.mapping(item, p, ("kind", "name", "timeout_s", "args", "controls", *allowed))
    kw: dict[str, Any] = {}
    if "controls" in m:
        kw["controls"] = r.typed(m["controls"], f"{p}.controls", bool)
    if "timeout_s" in m:
        kw["timeout_s"] = r.typed(m["timeout_s"], f"{p}.timeout_s", int, lambda x: 1 <= x <= 86400, "1 to 86400")
    if "args" in m:
        args = r.typed(m["args"], f"{p}.args", list)
        kw["args"] = tuple(r.typed(a, f"{p}.args[{j}]", str, lambda x: bool(_ARG_RE.match(x)),
                                   "a word of letters, digits and _.,:=+-/") for j, a in enumerate(args))
    return kw


def finite(v: Any) -> float | None:
    """v as a finite float, or None (a version string, a 400-digit number, NaN: not a metric)."""
    try:
        f = float(v)
    except (ValueError, OverflowError, TypeError):
        return None
    return f if math.isfinite(f) else None
