"""lava: test hosts booted by a LAVA lab (lava-server's REST API v0.2), one job per repetition.

A LAVA job boots the candidate's kernel on a device (the `qemu` device type here, a bare-metal x86
device in a lab) with kpipe's own initramfs, runs the repetition's commands in LAVA's test shell and
finishes; kpipe reads the job back: its state and health, LAVA's own error type, and the commands'
output from the job log, where `kpipe-lava-run` writes each base64-encoded between numbered markers.

What a job's end means for kpipe is decided here, on purpose (`outcome`):
- Complete, every command reported: the repetition ran (its figures are judged by the workload's rules);
- Incomplete with a kernel panic or oops seen by LAVA, or no shell after a boot that started: the
  candidate's (a kernel that does not boot);
- Incomplete for an infrastructure, download, connection or timeout reason, or Canceled: the lab's,
  retried like any infrastructure fault;
- a job LAVA refuses (an invalid definition, an unknown device type): a stop, with LAVA's message.
The job state alone is never the test's result (a Complete job whose command did not report is a
lost repetition, not a pass).
"""
from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml

from pipeline.errors import InfraError, UserError


class LavaUnreachable(InfraError):
    """The LAVA server did not answer (after the retries): the lab's fault."""


class LavaRefused(UserError):
    """LAVA rejected the job definition or a setting (a 4xx answer): retrying cannot help."""


@dataclass(frozen=True)
class LavaSettings:
    """Where the lab is and what to ask of it (pipeline.yaml's `lava:`)."""

    url: str = "http://127.0.0.1"
    token_file: str = "/var/lib/kpipe-lava/token"
    device_type: str = "qemu"
    tags: tuple[str, ...] = ()
    priority: str = "medium"
    job_timeout_min: int = 30
    poll_s: float = 2.0
    # Where the lab's workers fetch kernel and initramfs: "" is file:// (a worker on this machine); a lab
    # elsewhere gets http(s)://<this machine>:<port>, the store served by `kpipe serve --directory
    # <cache>/lava-artifacts --bind <address>` (paths <sha256>/<name>, checked by LAVA's sha256sum).
    artifact_url: str = ""


@dataclass(frozen=True)
class CommandOutput:
    """One command of the job, as kpipe-lava-run reported it."""

    stdout: str
    stderr: str
    exited: int


@dataclass(frozen=True)
class JobReport:
    """A finished job: LAVA's verdict on it and what its commands reported."""

    job_id: int
    state: str
    health: str
    device: str
    error_type: str = ""
    error_msg: str = ""
    commands: dict[int, CommandOutput] = field(default_factory=dict)
    kernel_problem: str = ""  # a panic/oops line LAVA or the console showed
    boot_s: float = 0.0  # LAVA's boot action, from power-on to the shell prompt
    console: str = ""  # the device's console, as the job log recorded it
    log_cut_at: int = 0  # > 0: the job log was longer than this many bytes and was read only so far
    queued_s: float = 0.0  # submitted to started on a device (LAVA's submit_time, start_time)
    job_s: float = 0.0  # started to ended: the device's whole time for the job (start_time, end_time)

    def timing(self) -> dict[str, Any]:
        """The job's record for the repetition it ran: id, device, queue and device times, LAVA's boot."""
        return {"runtime": "lava", "id": self.job_id, "device": self.device, "queued_s": round(self.queued_s, 2),
                "job_s": round(self.job_s, 2), "boot_to_shell_s": round(self.boot_s, 2)}


# A job log is the device's whole console: a kernel that floods it (a warning in a loop) must not take
# this machine's memory with it. What is over the limit is not read, and the job says so.
LOG_LIMIT = 64 << 20
ANSWER_LIMIT = 16 << 20


class LavaClient:
    """REST API v0.2 calls with a token; 5xx answers and dropped connections are retried."""

    def __init__(self, settings: LavaSettings, token: str, opener: Callable[..., Any] | None = None,
                 sleep: Callable[[float], None] = time.sleep, tries: int = 5):
        self.settings, self.token, self.tries = settings, token, tries
        self._open = opener or urllib.request.urlopen
        self._sleep = sleep

    def call(self, path: str, data: dict[str, Any] | None = None, limit: int = ANSWER_LIMIT) -> Any:
        """GET (or POST `data` as JSON) api/v0.2/<path>; the answer as JSON, or as text (of which at most
        `limit` + 1 bytes are read: a longer text is cut, a longer JSON answer refused)."""
        for attempt in range(self.tries):
            try:
                return self._call(path, data, limit)
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    body = exc.read().decode("utf-8", "replace")[:2000]
                    raise LavaRefused(f"LAVA refused {path} ({exc.code}): {body}") from None
                why = f"HTTP {exc.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            if attempt == self.tries - 1:
                raise LavaUnreachable(f"LAVA at {self.settings.url} did not answer {path}: {why}")
            self._sleep(2.0 * (attempt + 1))
        raise AssertionError("unreachable")

    def _call(self, path: str, data: dict[str, Any] | None, limit: int) -> Any:
        req = urllib.request.Request(f"{self.settings.url.rstrip('/')}/api/v0.2/{path}",
                                     method="POST" if data is not None else "GET",
                                     data=json.dumps(data).encode() if data is not None else None,
                                     headers={"Authorization": f"Token {self.token}",
                                              "Content-Type": "application/json"})
        with self._open(req, timeout=60) as r:
            body = r.read(limit + 1)
            ctype = r.headers.get("Content-Type", "")
        if "json" in ctype:
            if len(body) > limit:
                raise LavaRefused(f"LAVA's answer to {path} passed {limit >> 20} MiB: not read")
            return json.loads(body)
        return body.decode("utf-8", "replace")

    def submit(self, definition: str) -> int:
        """Submit one job; its id."""
        answer = self.call("jobs/", {"definition": definition})
        ids = answer.get("job_ids") if isinstance(answer, dict) else None
        if not ids:
            raise LavaRefused(f"LAVA accepted the job but gave no id: {str(answer)[:300]}")
        return int(ids[0])

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self.call(f"jobs/{job_id}/"))

    def wait(self, job_id: int, stop: Callable[[], bool] = lambda: False, limit_s: float = 7200) -> dict[str, Any]:
        """Poll a job until it is Finished (or `stop()`, or the limit: LavaUnreachable)."""
        t0 = time.monotonic()
        while True:
            info = self.job(job_id)
            if info.get("state") == "Finished" or stop():
                return info
            if time.monotonic() - t0 > limit_s:
                raise LavaUnreachable(f"LAVA job {job_id} did not finish in {limit_s:.0f} s (state "
                                      f"{info.get('state')})")
            self._sleep(self.settings.poll_s)

    def cancel(self, job_id: int) -> None:
        try:
            self.call(f"jobs/{job_id}/cancel/")
        except (LavaRefused, LavaUnreachable):
            pass

    def healthy(self) -> tuple[bool, str]:
        try:
            return True, str(self.call("system/version/").get("version", "?"))
        except (LavaRefused, LavaUnreachable) as exc:
            return False, str(exc)

    def report(self, job_id: int, info: dict[str, Any] | None = None) -> JobReport:
        """A finished job read back: state, health, error, every command's output, the boot time."""
        info = info or self.job(job_id)
        log = self.call(f"jobs/{job_id}/logs/", limit=LOG_LIMIT)
        tests = self.call(f"jobs/{job_id}/tests/?limit=500")
        return parse_job(job_id, info, log if isinstance(log, str) else "", tests.get("results", []))



_PANIC = re.compile(r"(Kernel panic - not syncing.*|BUG: .*|Oops: .*|general protection fault.*)")


def parse_job(job_id: int, info: dict[str, Any], log: str, tests: list[dict[str, Any]]) -> JobReport:
    """JobReport from the job's REST record, its log (LAVA's YAML list of {dt, lvl, msg}) and test cases."""
    cut_at = 0
    if len(log) > LOG_LIMIT:  # keep the whole entries before the limit ("- {dt: ..., lvl: ..., msg: ...}")
        cut_at, log = LOG_LIMIT, log[:max(0, log.rfind("\n- ", 0, LOG_LIMIT)) + 1]
    entries = yaml.load(log, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if log.strip() else []
    blocks: dict[tuple[str, int], list[str]] = {}
    rcs: dict[int, int] = {}
    open_block: tuple[str, int] | None = None
    console: list[str] = []
    problem = ""
    for e in entries if isinstance(entries, list) else []:
        if not isinstance(e, dict) or e.get("lvl") != "target" or not isinstance(e.get("msg"), str):
            continue
        line = e["msg"].rstrip("\r")
        console.append(line)
        if not problem and (m := _PANIC.search(line)):
            problem = m.group(1)[:200]
        words = line.split()
        if len(words) == 2 and words[0] in ("KPIPE-OUT-BEGIN", "KPIPE-ERR-BEGIN") and words[1].isdigit():
            open_block = (words[0][6:9], int(words[1]))
            blocks[open_block] = []
        elif len(words) == 2 and words[0] in ("KPIPE-OUT-END", "KPIPE-ERR-END"):
            open_block = None
        elif len(words) == 3 and words[0] == "KPIPE-RC" and words[1].isdigit() and words[2].lstrip("-").isdigit():
            rcs[int(words[1])] = int(words[2])
        elif open_block is not None and re.fullmatch(r"[A-Za-z0-9+/=]*", line):
            blocks[open_block].append(line)
    commands = {n: CommandOutput(_b64(blocks.get(("OUT", n), [])), _b64(blocks.get(("ERR", n), [])), rc)
                for n, rc in rcs.items()}
    boot_s = 0.0
    error_type, error_msg = "", str(info.get("failure_comment") or "")[:500]
    for t in tests:
        meta = t.get("metadata") or {}
        if isinstance(meta, str):
            try:
                meta = yaml.safe_load(meta) or {}
            except yaml.YAMLError:
                meta = {}
        if t.get("name") in ("auto-login-action", "login-action") and isinstance(meta, dict):
            try:
                boot_s = float(meta.get("duration", 0))
            except (TypeError, ValueError):
                pass
        if t.get("name") == "job" and t.get("result") == "fail" and isinstance(meta, dict):
            error_type, error_msg = str(meta.get("error_type", "")), str(meta.get("error_msg", ""))[:500]
        if t.get("name") == "kernel-messages" and t.get("result") == "fail" and not problem:
            problem = "LAVA's kernel-messages check failed (a panic or oops on the console)"
    return JobReport(job_id, str(info.get("state", "")), str(info.get("health", "")),
                     str(info.get("actual_device") or ""), error_type, error_msg, commands, problem, boot_s,
                     "\n".join(console)[-200000:], cut_at, _between(info, "submit_time", "start_time"),
                     _between(info, "start_time", "end_time"))


def _between(info: dict[str, Any], start: str, end: str) -> float:
    """Seconds between two of the job record's ISO times ("2026-12-03T06:12:39.229910Z"); 0 when unknown."""
    try:
        a, b = (datetime.fromisoformat(str(info[k]).replace("Z", "+00:00")) for k in (start, end))
    except (KeyError, ValueError):
        return 0.0
    return max(0.0, (b - a).total_seconds())


def _b64(lines: list[str]) -> str:
    try:
        return base64.b64decode("".join(lines), validate=True).decode("utf-8", "replace")
    except ValueError:
        return ""


def outcome(report: JobReport, expected: int) -> tuple[str, str]:
    """What the job's end means: ("ran", "") when all `expected` commands reported; ("kernel", why) when
    the candidate's kernel panicked or never gave the shell; ("job", why) when LAVA says the definition or
    its artefacts are wrong (error type Job or Configuration: retrying cannot help); ("lab", why) for
    everything else, retried. LAVA files a panic under "Infrastructure: Connection closed", so the
    console is read first."""
    if report.kernel_problem:
        return "kernel", report.kernel_problem
    if report.health == "Complete" and len(report.commands) >= expected:
        return "ran", ""
    if report.log_cut_at:
        return "kernel", (f"LAVA job {report.job_id}: its log passed {report.log_cut_at >> 20} MiB (a console "
                          f"flood) with {len(report.commands)} of {expected} commands reported")
    if report.health == "Canceled":
        return "lab", f"LAVA job {report.job_id} was canceled"
    if report.error_type in ("Job", "Configuration"):
        return "job", f"{report.error_type} error: {report.error_msg}"
    why = report.error_msg or f"job ended {report.health or report.state} with {len(report.commands)} of " \
                              f"{expected} commands reported"
    if "login" in why.lower():
        # The boot reached no shell prompt: on a healthy device, the kernel's (as a local boot timeout is).
        return "kernel", f"LAVA job {report.job_id}: no shell prompt after the boot ({why})"
    return "lab", f"LAVA job {report.job_id} on {report.device or '?'}: {why}"
