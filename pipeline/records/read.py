"""results.json read back into frozen records: what every reader of a run folder sees, whatever the
kpipe version that wrote it (a key an older run lacks reads as its default; keys a reader does not
know are kept in the JSON and ignored here). The JSON shape is results.py's and does not change.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pipeline.records.results import RunRecord


class CandidateStatus(StrEnum):
    """A candidate's outcome, in pipeline order of the stage that sets it (results.CANDIDATE_STATUSES)."""

    PENDING = "pending"
    OK = "ok"
    IDENTICAL = "identical"  # not measured: its kernel, command line and workload are its reference's
    PATCH_FAILED = "patch-failed"
    BUILD_FAILED = "build-failed"
    BUILD_TIMEOUT = "build-timeout"
    BOOT_FAILED = "boot-failed"
    BOOT_TIMEOUT = "boot-timeout"
    WORKLOAD_FAILED = "workload-failed"
    INFRA_ERROR = "infra-error"

    @property
    def failed(self) -> bool:
        """Could not be evaluated (neither measured, nor identical, nor still to come)."""
        return self not in (CandidateStatus.PENDING, CandidateStatus.OK, CandidateStatus.IDENTICAL)

    @classmethod
    def of(cls, value: Any) -> CandidateStatus:
        try:
            return cls(value)
        except ValueError:
            return cls.PENDING  # a status this version does not know reads as not evaluated yet


_RUN_FIELDS = {f.name: f for f in dataclasses.fields(RunRecord)}
_RUN_DEFAULTS: dict[str, Any] = {"round": 0, "kind": "counted", "attempt": 0, "finished": "", "host": "local",
                                 "host_kind": "", "boot_to_ssh_s": 0.0, "console_log": "", "raw": {},
                                 "metrics": {}}


def run_from_json(data: Mapping[str, Any]) -> RunRecord:
    """A repetition as written by RunFolder.add_run (keys it lacks take their defaults)."""
    values = {k: v for k, v in data.items() if k in _RUN_FIELDS}
    for k, v in _RUN_DEFAULTS.items():
        values.setdefault(k, v)
    values["metrics"] = {str(k): float(v) for k, v in dict(values["metrics"] or {}).items()}
    values["host"] = str(values["host"] or "local")
    return RunRecord(**values)


@dataclass(frozen=True)
class CandidateSpec:
    """What the config said of a candidate, as the run recorded it (candidate_specs)."""

    tree: str = ""
    description: str = ""
    changes: tuple[tuple[str, str], ...] = ()  # (kind, value)
    role: str = ""  # "control": a check of the method
    compare_to: str = ""  # "": the baseline
    workload: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CandidateSpec:
        changes = tuple((str(c.get("kind")), str(c.get("value"))) for c in data.get("changes", [])
                        if isinstance(c, Mapping))
        return cls(str(data.get("tree", "")), str(data.get("description", "")), changes,
                   str(data.get("role", "") or ""), str(data.get("compare_to", "") or ""),
                   dict(data.get("workload") or {}))


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's record: its status, its runs, its retries and why its runs stopped."""

    name: str
    status: CandidateStatus = CandidateStatus.PENDING
    status_detail: str = ""
    runs: tuple[RunRecord, ...] = ()
    warmup_runs: tuple[RunRecord, ...] = ()
    retries: tuple[Mapping[str, Any], ...] = ()
    stop_reason: str = ""
    stages: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> CandidateResult:
        return cls(name, CandidateStatus.of(data.get("status", "pending")), str(data.get("status_detail", "")),
                   tuple(run_from_json(r) for r in data.get("runs", [])),
                   tuple(run_from_json(r) for r in data.get("warmup_runs", [])),
                   tuple(data.get("retries", [])), str(data.get("stop_reason", "")), dict(data.get("stages", {})))


@dataclass(frozen=True)
class Settings:
    """The report settings the run was made with (settings): a run re-renders with its own."""

    alpha: float = 0.05
    min_effect_pct: float = 5.0
    looks: int = 1
    censor_factor: float = 0.0
    base_url: str = ""
    compare_across_kinds: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Settings:
        return cls(float(data.get("alpha", 0.05)), float(data.get("min_effect_pct", 5.0)), int(data.get("looks", 1)),
                   float(data.get("censor_factor", 0.0) or 0.0), str(data.get("base_url", "") or ""),
                   bool(data.get("compare_across_kinds", False)))


@dataclass(frozen=True)
class Results:
    """A whole results.json."""

    run_id: str
    baseline: str
    order: tuple[str, ...]
    specs: Mapping[str, CandidateSpec]
    settings: Settings
    candidates: Mapping[str, CandidateResult]
    workloads: tuple[Mapping[str, Any], ...] = ()
    hosts: tuple[Mapping[str, Any], ...] = ()
    sequential: Mapping[str, Any] = field(default_factory=dict)
    status: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Results:
        cands = {str(n): CandidateResult.from_json(str(n), c) for n, c in data.get("candidates", {}).items()}
        return cls(str(data.get("run_id", "")), str(data.get("baseline", "")),
                   tuple(data.get("candidate_order") or cands),
                   {str(n): CandidateSpec.from_json(s) for n, s in data.get("candidate_specs", {}).items()},
                   Settings.from_json(data.get("settings", {})), cands,
                   tuple(w for w in data.get("workloads", []) if isinstance(w, Mapping)),
                   tuple(data.get("hosts", [])), dict(data.get("sequential", {})), str(data.get("status", "")))

    def candidate(self, name: str) -> CandidateResult:
        """The candidate's record; one the run never reached reads as pending with no runs."""
        return self.candidates.get(name) or CandidateResult(name)

    def spec(self, name: str) -> CandidateSpec:
        return self.specs.get(name) or CandidateSpec()

    def reference(self, name: str) -> str:
        """What `name` is compared with: its compare_to, else the baseline."""
        return self.spec(name).compare_to or self.baseline
