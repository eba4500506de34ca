"""runtime: where a repetition's test host runs, behind the one call the measuring rules make.

`session(prep, vmm, tag, logdir, commands, pool_host, initramfs)` is a context manager that yields a
booted test host (run, put, boot_seconds, console_log, info, accelerator) for one repetition:
- QemuRuntime: QEMU on this machine or on a pool host over SSH (stages.boot; the boot step is
  injected, so the rules are tested with fakes);
- run.lava_runtime.LavaRuntime: one LAVA job that runs `commands` (known before the session opens).
The rules (RepetitionRunner) never ask which one they have.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from pipeline.config import Config
from pipeline.machines.pool import PoolHost


class Runtime(Protocol):
    """What the measuring rules call for each repetition."""

    def session(self, prep: Any, vmm: Path, tag: str, logdir: Path, commands: list[list[str]],
                pool_host: PoolHost, initramfs: Any) -> AbstractContextManager[Any]: ...


class QemuRuntime:
    """Test hosts as QEMU processes on the pool host's executor (this machine, or one over SSH)."""

    def __init__(self, cfg: Config, boot: Any):
        self.cfg, self.boot = cfg, boot

    def session(self, prep: Any, vmm: Path, tag: str, logdir: Path, commands: list[list[str]],
                pool_host: PoolHost, initramfs: Any) -> AbstractContextManager[Any]:
        """Boot the candidate's kernel there; the commands are run later over SSH, whatever they are."""
        return self.boot(pool_host.executor, prep.artifacts, initramfs, self.cfg.test_host, prep.patched.cmdline,
                         logdir, tag, pool_host.accel)
