"""Run folders: results.json (the single source of truth), metadata.json, logs."""
from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any

# Stage statuses, and candidate statuses in pipeline order of the stage that sets them.
PASS, FAIL, SKIP = "pass", "fail", "skip"  # SKIP: an earlier stage failed
STAGES = ("fetch", "patch", "build", "boot", "run")
CANDIDATE_STATUSES = ("pending", "ok", "patch-failed", "build-failed", "boot-failed", "boot-timeout",
                      "workload-failed", "infra-error")


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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def new_run_id() -> str:
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
        return cls(path, json.loads((path / "results.json").read_text(encoding="utf-8")))

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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


now_iso = _now
