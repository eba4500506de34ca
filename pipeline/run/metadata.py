"""metadata.json: what a run ran on and with (versions, hosts, hashes of every input)."""
from __future__ import annotations

import os
import platform
import shutil
import socket
import tempfile
from typing import Any

from pipeline import __version__
from pipeline.config import Config
from pipeline.machines.accel import Accelerator
from pipeline.machines.probe import local_probe
from pipeline.stages.build import compiler_version
from pipeline.stages.fetch import FetchedTree, sha256_file
from pipeline.util.proc import run as run_cmd
from pipeline.workloads.flash import VMM_SOURCE


def collect_metadata(cfg: Config, accel: Accelerator, trees: dict[str, FetchedTree]) -> dict[str, Any]:
    """metadata.json: the machine, tools, accelerator and trees a run used (no local path)."""
    qemu = shutil.which("qemu-system-x86_64")
    qemu_version = run_cmd([qemu, "--version"]).output.splitlines()[0] if qemu else "not installed"
    return {
        "kpipe_version": __version__,
        "config": str(cfg.source),
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(),
                 "python": platform.python_version(), "cpus": os.cpu_count() or 1, "machine": platform.machine()},
        "machine": _machine(),
        "compiler": compiler_version(),
        "qemu": qemu_version,
        "accelerator": {"name": accel.name, "args": accel.args, "reason": accel.reason},
        "test_host": {"cpus": cfg.test_host.cpus, "memory_mb": cfg.test_host.memory_mb,
                      "cmdline": cfg.test_host.cmdline},
        "workload": vars(cfg.workload),
        "candidate_workloads": {c.name: vars(c.workload) for c in cfg.candidates if c.workload},
        "repetitions": vars(cfg.repetitions),
        "trees": {n: {"origin": t.origin, "commit": t.commit} for n, t in trees.items()},
        "inputs": input_hashes(cfg),
    }


def _machine() -> dict[str, str]:
    """The physical machine the test hosts ran on (this one): CPU model, threads, memory, kernel."""
    facts = local_probe(tempfile.gettempdir())
    return {k: facts.get(k, "") for k in ("cpu_model", "cpus", "mem_kb", "kernel", "machine")}


def input_hashes(cfg: Config) -> dict[str, str]:
    """sha256 of every file that decides the outcome, so two runs can be told apart."""
    files = {cfg.source, cfg.test_host.qemu_template, cfg.test_host.initramfs_recipe, VMM_SOURCE,
             *cfg.kernel.fragments}
    for c in cfg.candidates:
        files.update(ch.path for ch in c.changes if ch.path)
    out = {}
    for f in sorted(files):
        try:
            name = str(f.relative_to(cfg.root))
        except ValueError:
            name = str(f)
        out[name] = sha256_file(f)
    return out
