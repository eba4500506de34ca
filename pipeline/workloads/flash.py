"""flash: the flash-boot workload (vmm/flashvmm.c beside this file) inside a booted test host, and its settings.

The VMM is compiled statically once per source hash, copied into the test
host over SFTP and run over SSH; its JSON is parsed into a `WorkloadResult`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import InfraError, UserError
from pipeline.util.proc import run
from pipeline.util.yamlreader import Reader
from pipeline.workloads.flash_metrics import censored_rates, derive_metrics

SPIN_MODES = ("io", "loop", "cpuid", "fault", "block")
# Where the VMM's threads run in the test host: flash vCPU and readers on
# distinct CPUs, all on one CPU (with the SRCU kworker), or wherever the
# scheduler puts them.
PLACEMENTS = ("apart", "shared", "free")


@dataclass(frozen=True)
class Workload:
    """The flash VMM's settings: cycles, readers, placement, reader blocking and time limit."""

    cycles: int = 6000
    static_slots: int = 0
    spinners: int = 1
    spin_mode: str = "io"
    placement: str = "apart"
    timeout_s: int = 600
    block_ms: float = 2.0        # block reader: how late each of its faults is served
    block_gap_ms: float = 1.0    # block reader: how long a served page stays mapped before it is discarded
    censor_s: float = 0.0  # set per run by the runner (censor_factor), never by a config: stop, read "at least"


def load_workload(r: Reader, data: Any, path: str, base: Workload) -> Workload:
    """Workload settings over `base`; `pin: true|false` is read as placement apart|free."""
    if isinstance(data, dict) and "pin" in data:
        data = dict(data)
        pin = r.typed(data.pop("pin"), f"{path}.pin", bool)
        if "placement" in data:
            raise r.error(f"{path}.pin", "give either placement or the older pin, not both")
        data["placement"] = "apart" if pin else "free"
    converters: dict[str, Callable[[Any, str], Any]] = {
        "cycles": lambda v, p: r.typed(v, p, int, lambda x: 1 <= x <= 1000000, "1 to 1000000"),
        "static_slots": lambda v, p: r.typed(v, p, int, lambda x: 0 <= x <= 32000, "0 to 32000"),
        "spinners": lambda v, p: r.typed(v, p, int, lambda x: 0 <= x <= 16, "0 to 16"),
        "spin_mode": lambda v, p: r.typed(v, p, str, lambda x: x in SPIN_MODES, "one of " + ", ".join(SPIN_MODES)),
        "placement": lambda v, p: r.typed(v, p, str, lambda x: x in PLACEMENTS, "one of " + ", ".join(PLACEMENTS)),
        "timeout_s": lambda v, p: r.typed(v, p, int, lambda x: 1 <= x <= 86400, "1 to 86400"),
        "block_ms": lambda v, p: r.typed(v, p, float, lambda x: 0 <= x <= 1000, "0 to 1000 (ms)"),
        "block_gap_ms": lambda v, p: r.typed(v, p, float, lambda x: 0 <= x <= 1000, "0 to 1000 (ms)"),
    }
    mapping = r.mapping(data, path, (*converters, "pin"))
    return dataclasses.replace(base, **{k: converters[k](v, f"{path}.{k}") for k, v in mapping.items()})


VMM_SOURCE = Path(__file__).parent / "vmm" / "flashvmm.c"
REMOTE_VMM = "/tmp/flashvmm"


@dataclass(frozen=True)
class WorkloadResult:
    """One run of the VMM: its JSON as printed, the metrics derived from it, the command that ran it."""

    raw: dict[str, Any]
    metrics: dict[str, float]
    argv: tuple[str, ...] = ()
    censored: bool = False  # stopped unfinished: metrics["boot_s"] is a lower bound, nothing else measured


class WorkloadFailed(UserError):
    """The VMM ran and reported a failure that is the candidate's (a KVM error, output it cannot read)."""

    def __init__(self, message: str, output: str):
        self.output = output
        super().__init__(f"{message}\n{output[-2000:]}")


class WorkloadLost(InfraError):
    """The run broke in a way a retry may mend (the watchdog of a stuck nested vCPU, output cut short)."""

    def __init__(self, message: str, output: str):
        self.output = output
        super().__init__(f"{message}\n{output[-2000:]}")


class HostLink(Protocol):
    """What a workload needs of a booted test host: run a command (bounded, with a timeout) and upload a file.
    stages.boot's BootedHost is one; a workload never imports the stage that boots it."""

    def run(self, command: list[str], timeout: float | None = None, max_bytes: int = ...) -> Any: ...

    def put(self, local: str, remote: str, timeout: float = ...) -> None: ...


def build_vmm(cache_dir: Path, log_file: Path | None = None) -> Path:
    """Compile flashvmm statically, cached by the hash of its source."""
    digest = hashlib.sha256(VMM_SOURCE.read_bytes()).hexdigest()[:16]
    out = cache_dir / "tools" / f"flashvmm-{digest}"
    if out.exists():
        return out
    if not shutil.which("gcc"):
        raise InfraError("gcc not found; install it with 'apt-get install build-essential'")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    run(["gcc", "-O2", "-Wall", "-Wextra", "-static", "-pthread", "-o", tmp, VMM_SOURCE], log_file=log_file)
    tmp.replace(out)
    return out


def vmm_argv(binary: str, w: Workload, cpus: int) -> list[str]:
    """The VMM's command line in the test host for these settings on `cpus` CPUs."""
    argv = [binary, "--cycles", str(w.cycles), "--static-slots", str(w.static_slots),
            "--spinners", str(w.spinners), "--spin-mode", w.spin_mode, "--timeout", str(w.timeout_s)]
    if w.censor_s > 0:
        argv += ["--censor-ms", str(max(1, round(w.censor_s * 1000)))]
    if w.spin_mode == "block":
        argv += ["--block-us", str(round(w.block_ms * 1000)), "--block-gap-us", str(round(w.block_gap_ms * 1000))]
    if w.placement == "apart" and cpus >= 2:
        # Flash vCPU and SRCU-reader vCPUs on distinct test-host CPUs: placement
        # otherwise moves totals by up to 4x whatever the kernel.
        argv += ["--flash-cpu", "0", "--spinner-cpu", "1"]
    elif w.placement == "shared":
        # Readers on the updater's CPU, as on a busy host: they preempt it and it them.
        argv += ["--flash-cpu", "0", "--spinner-cpu", "0"]
    return argv


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number the VMM prints")


def parse_output(stdout: str) -> dict[str, Any]:
    """Parse the VMM's JSON document; raise WorkloadFailed if there is none.

    The test host runs the candidate's kernel, so this is untrusted input: NaN and Infinity, nesting deep
    enough to exhaust the parser, numbers too long to convert, a document that is not an object are all
    the candidate's failure (not retried, and never the pool host's)."""
    start = stdout.find("{")
    if start < 0:
        raise WorkloadLost("the workload printed no JSON", stdout)
    try:
        raw = json.loads(stdout[start:], parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise WorkloadLost(f"the workload's JSON is malformed: {exc}", stdout) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise WorkloadFailed(f"the workload's output cannot be read: {type(exc).__name__}: {str(exc)[:200]}",
                             stdout) from None
    if not isinstance(raw, dict):
        raise WorkloadFailed("the workload's JSON is not an object", stdout)
    return raw


def install_vmm(host: HostLink, vmm: Path) -> None:
    """Copy the VMM into the booted test host and make it executable."""
    host.put(str(vmm), REMOTE_VMM)
    res = host.run(["chmod", "755", REMOTE_VMM], timeout=60)
    if not res.ok:
        raise InfraError(f"cannot install the VMM in the test host: {res.stderr}")


def run_workload(host: HostLink, w: Workload, cpus: int) -> WorkloadResult:
    """Run one repetition, or raise WorkloadFailed (the candidate's) or WorkloadLost (a retry may help)."""
    argv = vmm_argv(REMOTE_VMM, w, cpus)
    res = host.run(argv, timeout=w.timeout_s + 60)
    raw = parse_output(res.stdout)
    status = raw.get("status")
    if status == "timeout":
        # FACTS: a nested TCG vCPU can get stuck; an infrastructure failure, retried.
        raise WorkloadLost(f"workload watchdog fired after {raw.get('timeout_s')} s", res.stdout)
    if status == "censored" and w.censor_s > 0:
        at = raw.get("censored_ns")
        if not isinstance(at, int | float) or isinstance(at, bool) or not 0 < at < 1e15:
            raise WorkloadFailed("the workload's censored report gives no time", res.stdout)
        updates = raw.get("updates_done")
        metrics = {"boot_s": at / 1e9, "updates": float(updates) if isinstance(updates, int) else 0.0}
        return WorkloadResult(raw, metrics | censored_rates(raw), tuple(argv), censored=True)
    if status != "ok":
        why = str(raw.get("failure") or raw.get("error"))[:300]
        failed = WorkloadLost if status == "guest-failed" else WorkloadFailed
        raise failed(f"workload reported {str(status)[:40]}: {why}", res.stdout + res.stderr)
    try:
        metrics = derive_metrics(raw)
    except Exception as exc:  # noqa: BLE001 - any shape of hostile output is the candidate's failure
        raise WorkloadFailed(f"the workload's output cannot be read as metrics: {type(exc).__name__}: "
                             f"{str(exc)[:200]}", res.stdout) from None
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        raise WorkloadFailed(f"the workload's output gives non-finite values for {', '.join(bad[:5])}", res.stdout)
    return WorkloadResult(raw, metrics, tuple(argv))
