"""Load pipeline.yaml once into typed, frozen objects.

Every error names the key path and the line it came from, e.g.
``candidates[2].changes[0].patch: patches/x.patch does not exist (pipeline.yaml:31)``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.candidates import CMDLINE_PARAM_RE, Candidate, Tree, load_candidates, load_trees
from pipeline.machines.accel import CHOICES as ACCELERATORS
from pipeline.machines.lava import LavaSettings
from pipeline.machines.spec import LOCAL_HOST, HostSpec, hosts_from_yaml, load_hosts
from pipeline.util.yamlreader import read_yaml
from pipeline.workloads.flash import Workload, load_workload
from pipeline.workloads.kinds import load_workloads


@dataclass(frozen=True)
class KernelConfig:
    """The kernel configuration: a make target to start from and fragments merged over it in order."""

    base: str = "tinyconfig"
    fragments: tuple[Path, ...] = ()
    make_jobs: int = 0  # 0: number of CPUs
    sandbox: bool = True  # build confined (bubblewrap); `triage` always does
    build_timeout_s: int = 3600


@dataclass(frozen=True)
class TestHost:
    """The QEMU test host: CPUs, memory, accelerator, command template and time limits."""

    qemu_template: Path
    initramfs_recipe: Path
    cpus: int = 2
    memory_mb: int = 1024
    accelerator: str = "auto"
    cmdline: str = "console=ttyS0"
    boot_timeout_s: int = 180




@dataclass(frozen=True)
class Repetitions:
    """How many runs, interleaved how, stopped when (sequential looks, budget, censoring, retries)."""

    warmup: int = 1
    counted: int = 5
    max_counted: int = 5
    target_ci_pct: float = 0.0  # 0: no adaptive repetitions by interval width
    # The sequential rule (pipeline/report/sequential.py): up to `looks` looks at every comparison that
    # decides the exit code, the first after `counted` rounds; each later look adds a run where it narrows
    # an undecided comparison most per second, within `budget_s` seconds of test-host time in all and
    # `max_counted` runs a candidate.  1: a fixed count.
    looks: int = 1
    budget_s: float = 0.0
    # > 0: a run stops once it has taken this many times its reference's median boot, and counts as
    # "at least" that (a censored run: only a slowdown can be read from it, and no host CPU). 0: never.
    censor_factor: float = 0.0
    # A run stopped so skips the other workloads too: its answer is known. Set by triage (whose reply is read
    # from the flash boot), never by a config; the default evaluation keeps them (a firmware boot's loss).
    skip_others_when_censored: bool = False
    retries: int = 2
    # A run during which other processes on this machine used more than this many CPUs (averaged over the
    # run) was disturbed: an infrastructure fault, retried and listed with the load. 0: never.
    max_foreign_cpus: float = 0.75
    # The same for steal: CPU time this machine's hypervisor gave to other guests during the run. 0: never.
    max_steal_cpus: float = 0.5


@dataclass(frozen=True)
class ReportSettings:
    """The verdict rule's settings and where reports go (alpha, minimum effect, base URL, From:)."""

    dir: Path = Path("reports")
    base_url: str = ""
    alpha: float = 0.05
    min_effect_pct: float = 5.0
    compare_across_kinds: bool = False  # compare runs made on hosts of different kinds
    reply_from: str = ""  # From: of triage replies; "" means $KPIPE_FROM, then git's user.name/user.email


@dataclass(frozen=True)
class Config:
    """pipeline.yaml, loaded and checked once: frozen, with every path resolved."""

    source: Path
    root: Path  # directory relative paths are resolved against
    cache_dir: Path
    runs_dir: Path
    trees: dict[str, Tree]
    baseline: str
    candidates: tuple[Candidate, ...]
    kernel: KernelConfig
    test_host: TestHost
    workload: Workload
    repetitions: Repetitions
    report: ReportSettings
    hosts: tuple[HostSpec, ...] = (LOCAL_HOST,)
    workloads: tuple[Any, ...] = ()  # workloads.ExtraWorkload: run after the flash workload
    runtime: str = "local"  # where test hosts run: "local" (this machine and the SSH pool) or "lava"
    lava: LavaSettings = LavaSettings()

    def workload_of(self, cand: Candidate) -> Workload:
        """The workload a candidate runs: its own settings over the config's."""
        return cand.workload or self.workload

    def workloads_for(self, cand: Candidate) -> tuple[Any, ...]:
        """The other workloads a candidate runs (a control only those that say `controls: true`)."""
        return tuple(w for w in self.workloads if w.runs_for(cand.role))

    def candidate(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(name)


def default_cache_dir(setting: str | None, root: Path) -> Path:
    """The cache directory: $KPIPE_CACHE_DIR, else the setting, else ~/.cache/kpipe."""
    env = os.environ.get("KPIPE_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    if setting:
        return (root / os.path.expanduser(setting)).resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "kpipe"


TOP_KEYS = ("cache_dir", "runs_dir", "trees", "baseline", "candidates", "kernel", "test_host",
            "workload", "workloads", "repetitions", "report", "hosts", "runtime", "lava")


def load_config(path: str | Path, hosts_file: str | Path | None = None) -> Config:
    """Read and validate pipeline.yaml; raise ConfigError naming key path and line.

    `hosts_file` (a YAML file with one key, `hosts:`) replaces the config's pool
    of test machines: a lab's inventory kept apart from the evaluation.
    """
    data, r = read_yaml(path, "config file")
    source, root = r.source, r.root
    data = r.mapping(data, "", TOP_KEYS, ("trees", "baseline", "candidates"))

    trees = load_trees(r, data["trees"])
    workload = load_workload(r, data.get("workload"), "workload", Workload())
    candidates = load_candidates(r, data["candidates"], trees, workload)
    baseline = r.typed(data["baseline"], "baseline", str)
    if baseline not in {c.name for c in candidates}:
        raise r.error("baseline", f"'{baseline}' names no candidate; candidates: "
                      f"{', '.join(c.name for c in candidates)}")

    kernel = r.settings(data.get("kernel"), "kernel", KernelConfig, {
        "base": lambda v, p: r.typed(v, p, str, lambda x: x in ("tinyconfig", "defconfig", "allnoconfig"),
                                     "one of tinyconfig, defconfig, allnoconfig"),
        "fragments": lambda v, p: tuple(r.existing_file(f, f"{p}[{i}]")
                                        for i, f in enumerate(r.typed(v, p, list))),
        "make_jobs": lambda v, p: r.typed(v, p, int, lambda x: 0 <= x <= 256, "0 (all CPUs) to 256"),
        "sandbox": lambda v, p: r.typed(v, p, bool),
        "build_timeout_s": lambda v, p: r.typed(v, p, int, lambda x: 60 <= x <= 86400, "60 to 86400"),
    })
    host_data = r.mapping(data.get("test_host"), "test_host",
                          ("qemu_template", "initramfs_recipe", "cpus", "memory_mb", "accelerator",
                           "cmdline", "boot_timeout_s"))
    host_data.setdefault("qemu_template", "vm-templates/qemu/x86_64.cmd.j2")
    host_data.setdefault("initramfs_recipe", "vm-templates/initramfs/recipe.yaml")
    test_host = r.settings(host_data, "test_host", TestHost, {
        "qemu_template": r.existing_file,
        "initramfs_recipe": r.existing_file,
        "cpus": lambda v, p: r.typed(v, p, int, lambda x: 1 <= x <= 8, "1 to 8"),
        "memory_mb": lambda v, p: r.typed(v, p, int, lambda x: 256 <= x <= 16384, "256 to 16384"),
        "accelerator": lambda v, p: r.typed(v, p, str, lambda x: x in ACCELERATORS,
                                            f"valid accelerators: {', '.join(ACCELERATORS)}"),
        "cmdline": lambda v, p: r.typed(v, p, str, lambda x: all(CMDLINE_PARAM_RE.match(w) for w in x.split())
                                        and x.isprintable() and len(x) <= 1024,
                                        "kernel parameters (name or name=value) on one line"),
        "boot_timeout_s": lambda v, p: r.typed(v, p, int, lambda x: 10 <= x <= 3600, "10 to 3600"),
    })
    def cpus_limit(v: Any, p: str) -> float:
        return r.typed(v, p, float, lambda x: 0 <= x <= 1024, "0 (never) to 1024 CPUs")

    reps = r.settings(data.get("repetitions"), "repetitions", Repetitions, {
        "warmup": lambda v, p: r.typed(v, p, int, lambda x: 0 <= x <= 100, "0 to 100"),
        "counted": lambda v, p: r.typed(v, p, int, lambda x: 2 <= x <= 1000, "2 (for statistics) to 1000"),
        "max_counted": lambda v, p: r.typed(v, p, int, lambda x: 1 <= x <= 1000, "1 to 1000"),
        "target_ci_pct": lambda v, p: r.typed(v, p, float, lambda x: 0 <= x <= 1000, "0 to 1000"),
        "looks": lambda v, p: r.typed(v, p, int, lambda x: 1 <= x <= 50, "1 (a fixed count) to 50"),
        "budget_s": lambda v, p: r.typed(v, p, float, lambda x: 0 <= x <= 86400, "0 to 86400 seconds"),
        "censor_factor": lambda v, p: r.typed(v, p, float, lambda x: x == 0 or 1.5 <= x <= 1000,
                                              "0 (never) or 1.5 to 1000"),
        "retries": lambda v, p: r.typed(v, p, int, lambda x: 0 <= x <= 10, "0 to 10"),
        "max_foreign_cpus": cpus_limit,
        "max_steal_cpus": cpus_limit,
    })
    if reps.max_counted < reps.counted:
        reps = dataclasses.replace(reps, max_counted=reps.counted)
    if reps.looks > 1 and reps.target_ci_pct > 0:
        raise r.error("repetitions.looks", "give either looks (the sequential rule) or target_ci_pct, not both")
    if reps.looks > 1 and (reps.max_counted <= reps.counted or reps.budget_s <= 0):
        raise r.error("repetitions.looks", f"looks: {reps.looks} adds runs only with max_counted above counted "
                      f"({reps.max_counted} <= {reps.counted}?) and a budget_s above 0 ({reps.budget_s:g}?)")
    report = r.settings(data.get("report"), "report", ReportSettings, {
        "dir": lambda v, p: (root / r.typed(v, p, str)).resolve(),
        "base_url": lambda v, p: r.typed(v, p, str),
        "alpha": lambda v, p: r.typed(v, p, float, lambda x: 0 < x < 1, "between 0 and 1"),
        "min_effect_pct": lambda v, p: r.typed(v, p, float, lambda x: 0 <= x <= 1000, "0 to 1000"),
        "compare_across_kinds": lambda v, p: r.typed(v, p, bool),
        "reply_from": lambda v, p: r.typed(v, p, str, lambda x: "@" in x and "\n" not in x and "\r" not in x,
                                           "an address such as 'Name <name@example.org>'"),
    })
    if "dir" not in (data.get("report") or {}):
        report = dataclasses.replace(report, dir=(root / "reports").resolve())
    runtime = r.typed(data.get("runtime", "local"), "runtime", str, lambda x: x in ("local", "lava"),
                      "local (this machine and the hosts: pool) or lava")
    def http_url(v: Any, p: str, what: str) -> str:
        return r.typed(v, p, str, lambda x: x.startswith(("http://", "https://")) and x.isprintable()
                       and " " not in x, what)

    lava = r.settings(data.get("lava"), "lava", LavaSettings, {
        "url": lambda v, p: http_url(v, p, "the lab's base URL, http(s)://..."),
        "token_file": lambda v, p: str((root / os.path.expanduser(r.typed(v, p, str))).resolve()),
        "device_type": lambda v, p: r.typed(v, p, str, lambda x: bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", x)),
                                            "a LAVA device type name"),
        "tags": lambda v, p: tuple(r.typed(t, f"{p}[{i}]", str, lambda x: bool(re.fullmatch(r"[\w.-]{1,64}", x)),
                                           "a device tag") for i, t in enumerate(r.typed(v, p, list))),
        "priority": lambda v, p: r.typed(v, p, str, lambda x: x in ("high", "medium", "low"), "high, medium or low"),
        "job_timeout_min": lambda v, p: r.typed(v, p, int, lambda x: 5 <= x <= 1440, "5 to 1440"),
        "artifact_url": lambda v, p: http_url(v, p, "http(s)://host:port of `kpipe serve --directory "
                                                    "<cache>/lava-artifacts`"),
    })
    if runtime == "lava" and "workloads" in data:
        raise r.error("workloads", "the lava runtime runs the flash workload only: drop workloads: or use "
                                   "runtime: local")
    cache_setting = r.typed(data["cache_dir"], "cache_dir", str) if "cache_dir" in data else None
    runs_dir = (root / r.typed(data.get("runs_dir", "runs"), "runs_dir", str)).resolve()
    return Config(source=source, root=root, cache_dir=default_cache_dir(cache_setting, root),
                  runs_dir=runs_dir, trees=trees, baseline=baseline, candidates=candidates,
                  kernel=kernel, test_host=test_host, workload=workload, repetitions=reps,
                  report=report, hosts=hosts_from_yaml(r, data.get("hosts")) if hosts_file is None
                  else load_hosts(hosts_file),
                  workloads=load_workloads(r, data["workloads"]) if "workloads" in data else (),
                  runtime=runtime, lava=lava)
