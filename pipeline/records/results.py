"""Run folders: results.json (the single source of truth), metadata.json, logs."""
from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.util.untrusted import clean


class StageStatus(StrEnum):
    """A stage's outcome; the values are what results.json has always held."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"  # an earlier stage failed
    ERROR = "error"  # the infrastructure failed, not the candidate


PASS, FAIL, SKIP = StageStatus.PASS.value, StageStatus.FAIL.value, StageStatus.SKIP.value
STAGES = ("fetch", "patch", "build", "boot", "run")
# Candidate statuses, in pipeline order of the stage that sets them.
CANDIDATE_STATUSES = ("pending", "ok", "identical", "patch-failed", "build-failed", "build-timeout",
                      "boot-failed", "boot-timeout", "workload-failed", "infra-error")
# Not measured, and not a failure: its kernel, command line and workload are its reference's.
IDENTICAL = "identical"


@dataclass(frozen=True)
class RunRecord:
    """One repetition of the workload on one booted test host."""

    round: int
    kind: str  # "counted" or "warmup"
    attempt: int
    finished: str
    host: str
    host_kind: str
    boot_to_ssh_s: float
    console_log: str
    raw: dict[str, Any]
    metrics: dict[str, float]
    argv: list[str] = field(default_factory=list)
    host_load: dict[str, float] | None = None  # machines.load: what other processes used during the run
    censored: bool = False  # stopped at repetitions.censor_factor x its reference: metrics["boot_s"] is "at least"
    censored_workloads: list[str] = field(default_factory=list)  # other workloads stopped so: "at least"
    failed_workloads: dict[str, str] = field(default_factory=dict)  # other workloads that failed in this run

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def stopped(self, metric: str) -> bool:
        """Whether this run's value of `metric` is a lower bound (see metric_censored)."""
        return _stopped(metric, self.censored, self.censored_workloads)


def metric_censored(run: dict[str, Any], metric: str) -> bool:
    """Whether a run's value of `metric` is a lower bound: the flash boot's when the run was censored, an other
    workload's metrics ("<workload>.<metric>") when that workload was."""
    return _stopped(metric, bool(run.get("censored")), run.get("censored_workloads", ()))


# The flash workload's figures that a stopped run still measures exactly: costs per grace period (and per
# update kind) over the updates it made. Every other figure of a stopped run is a lower bound.
RATE_METRICS = frozenset({"gp_ms", "delete_mean_ms", "create_mean_ms"})


def _stopped(metric: str, censored: bool, workloads: Any) -> bool:
    """The one rule: a workload's metric ("<workload>.<metric>") by that workload, the flash boot by the run,
    except its rates (RATE_METRICS)."""
    if "." in metric:
        return metric.split(".", 1)[0] in workloads
    return censored and metric not in RATE_METRICS


@dataclass(frozen=True)
class RetryRecord:
    """A failed attempt: retried (infrastructure) or final (the candidate's)."""

    attempt: str
    status: str
    message: str
    excerpt: str = ""
    at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "status": self.status, "message": clean(self.message)[:500],
                "excerpt": clean(self.excerpt)[-3000:], "at": self.at or _now()}


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so a reader sees the old file or the new one, never a part of one (a full
    disk leaves the old page in place and raises)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(folder: Path) -> None:
    """Temporary files a killed writer left (`.<name>.XXXX`); only one writer holds a run folder."""
    for p in folder.glob(".*.json.*"):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a power cut
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def new_run_id() -> str:
    """A run id: the UTC time to the second and 4 random hex digits."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


class RunFolder:
    """One run's folder; every stage records into `self.results` and calls `save()`."""

    def __init__(self, path: Path, results: dict[str, Any]):
        self.path = path
        self.results = results
        self._lock = threading.Lock()

    @classmethod
    def create(cls, runs_dir: Path, run_id: str | None = None) -> RunFolder:
        run_id = run_id or new_run_id()
        path = runs_dir / run_id
        (path / "logs").mkdir(parents=True, exist_ok=False)
        folder = cls(path, {"run_id": run_id, "started": _now(), "finished": None,
                            "status": "running", "candidates": {}})
        folder.save()
        return folder

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        remove_stale_temp_files(path)
        return cls(path, read_results(path))

    @property
    def run_id(self) -> str:
        return str(self.results["run_id"])

    def log_path(self, candidate: str, name: str) -> Path:
        p = self.path / "logs" / candidate / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def relative(self, p: Path) -> str:
        return str(p.relative_to(self.path))

    def candidate(self, name: str) -> dict[str, Any]:
        return self.results["candidates"].setdefault(
            name, {"name": name, "status": "pending", "stages": {}, "runs": [], "warmup_runs": []})

    def record_stage(self, candidate: str, stage: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.candidate(candidate)["stages"][stage] = data
            self.save()

    def add_run(self, candidate: str, run: RunRecord) -> None:
        """Record a repetition; the candidate is "ok" from its first one on."""
        with self._lock:
            c = self.candidate(candidate)
            c["runs" if run.kind == "counted" else "warmup_runs"].append(run.as_dict())
            if c["status"] == "pending":
                c["status"] = "ok"
            self.save()

    def add_retry(self, candidate: str, retry: RetryRecord) -> None:
        with self._lock:
            self.candidate(candidate).setdefault("retries", []).append(retry.as_dict())
            self.save()

    def fail(self, candidate: str, stage: str, status: str, message: str, excerpt: str,
             extra: dict[str, Any] | None = None) -> None:
        """The candidate ends at `stage` with `status`; every later stage is recorded as skipped."""
        assert status in CANDIDATE_STATUSES, status
        with self._lock:
            c = self.candidate(candidate)
            message, excerpt = clean(message), clean(excerpt)  # what a build or a test host printed
            c["stages"][stage] = {"status": FAIL, "message": message, "excerpt": excerpt[-6000:], **(extra or {})}
            for later in STAGES[STAGES.index(stage) + 1:]:
                c["stages"].setdefault(later, {"status": SKIP, "message": f"{stage} failed"})
            c["status"] = status
            c["status_detail"] = message.splitlines()[0][:300] if message else ""
            self.save()

    def update_stage(self, candidate: str, stage: str, **values: Any) -> None:
        with self._lock:
            self.candidate(candidate)["stages"].setdefault(stage, {}).update(values)
            self.save()

    def update_candidate(self, candidate: str, **values: Any) -> None:
        with self._lock:
            self.candidate(candidate).update(values)
            self.save()

    def update(self, **values: Any) -> None:
        with self._lock:
            self.results.update(values)
            self.save()

    def rounds_done(self, candidate: str) -> set[int]:
        c = self.candidate(candidate)
        return {int(x["round"]) for x in c.get("runs", []) + c.get("warmup_runs", [])}

    def counted_values(self, candidate: str, metric: str) -> list[float]:
        return [float(r["metrics"][metric]) for r in self.candidate(candidate)["runs"] if metric in r["metrics"]]

    def workload_failures(self, candidate: str, workload: str) -> int:
        """How many of the candidate's runs (warm-up included) saw workload `workload` fail."""
        c = self.candidate(candidate)
        return sum(workload in r.get("failed_workloads", {}) for r in c.get("runs", []) + c.get("warmup_runs", []))

    def set_status(self, candidate: str, status: str, detail: str = "") -> None:
        assert status in CANDIDATE_STATUSES, status
        with self._lock:
            c = self.candidate(candidate)
            c["status"] = status
            if detail:
                c["status_detail"] = detail
            self.save()

    def save(self) -> None:
        write_json_atomic(self.path / "results.json", self.results)

    def write_metadata(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.path / "metadata.json", data)


def read_results(run_dir: Path) -> dict[str, Any]:
    """A run's results.json, or a UserError that says what is wrong with it (never a traceback)."""
    path = run_dir / "results.json"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{path} is not readable JSON ({str(exc)[:200]}); truncated or edited? "
                        "A run writes it atomically, so this copy did not come from kpipe whole") from None
    if not isinstance(data, dict) or not isinstance(data.get("candidates", {}), dict):
        raise UserError(f"{path} does not hold a kpipe run (no 'candidates' mapping)")
    return data


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


now_iso = _now
