"""lava_runtime: the LAVA runtime. A repetition is one LAVA job; the measuring rules (interleaving,
retries, resume, what is the candidate's fault) stay RepetitionRunner's, which calls `session` where
the local and SSH-pool runtimes boot QEMU.

A session submits the job with every command the repetition runs (uname, then the flash VMM), waits
for it and yields a host whose `run` answers those commands from the job's log: the workload's parser
and rules read it exactly as they read an SSH session. The job id is recorded under the candidate's
`lava_jobs` stage before the wait, so `--resume` after an interruption polls that job instead of
submitting another.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import InfraError
from pipeline.machines.accel import Accelerator
from pipeline.machines.hostcmd import RemoteResult
from pipeline.machines.lava import JobReport, LavaClient, LavaRefused, LavaSettings, outcome
from pipeline.machines.lava_job import job_definition, lava_initramfs, publish, sha256_of
from pipeline.machines.pool import OK, PoolHost
from pipeline.machines.spec import HostSpec
from pipeline.records.results import RunFolder
from pipeline.stages.boot import BootFailed
from pipeline.workloads.flash import REMOTE_VMM


class LavaLabFault(InfraError):
    """The lab ended the job for a reason of its own (download, connection, device, timeout): retried."""


class LavaExecutor:
    """The pool host's executor under LAVA: the lab answers for its devices; nothing runs here."""

    def __init__(self, client: LavaClient):
        self.client = client

    @property
    def name(self) -> str:
        return "lava"

    def healthy(self) -> tuple[bool, str]:
        return self.client.healthy()

    def probe(self) -> dict[str, str]:
        ok, version = self.client.healthy()
        return {"lava_version": version if ok else "", "cpus": "", "cpu_model": f"LAVA device type "
                f"{self.client.settings.device_type}"}

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def _nothing_here(self, *_: Any) -> Any:
        raise InfraError("under the lava runtime nothing runs on this machine: LAVA boots the test hosts")

    spawn = free_port = path_for = log_path = collect = read_text = read_bytes = qemu_binary = _nothing_here

    def gateway(self) -> None:
        return None


def lava_pool(cfg: Config) -> list[PoolHost]:
    """The lab as the pool: one host whose jobs LAVA schedules on the device type's devices."""
    s: LavaSettings = cfg.lava
    client = lava_pool_client(cfg)
    ex = LavaExecutor(client)
    ok, why = client.healthy()
    kind = f"lava:{s.device_type}" + (f"[{','.join(s.tags)}]" if s.tags else "")
    host = PoolHost(HostSpec(name="lava", host=s.url), ex, OK if ok else "unreachable", "" if ok else why,
                    ex.probe() if ok else {}, Accelerator("lava", "", f"LAVA {why} at {s.url}, device type "
                                                                   f"{s.device_type}"), kind)
    return [host]


@dataclass
class LavaHost:
    """A finished job seen as a booted test host: `run` answers the commands the job ran."""

    report: JobReport
    commands: list[list[str]]
    console_log: Path
    vmm_sha256: str
    boot_seconds: float = 0.0
    accelerator: str = "lava"
    info: dict[str, Any] = field(default_factory=dict)
    process: None = None

    def run(self, command: list[str], timeout: float | None = None, max_bytes: int = 0) -> RemoteResult:
        if command[:2] == ["chmod", "755"] and command[2:] == [REMOTE_VMM]:
            return RemoteResult(" ".join(command), 0, "", "")  # executable in the initramfs already
        for i, argv in enumerate(self.commands):
            if argv == command and i in self.report.commands:
                out = self.report.commands[i]
                return RemoteResult(" ".join(command), out.exited, out.stdout, out.stderr)
        raise InfraError(f"LAVA job {self.report.job_id} did not run {' '.join(command)[:200]}")

    def put(self, local: str, remote: str, timeout: float = 120) -> None:
        if remote != REMOTE_VMM or sha256_of(Path(local)) != self.vmm_sha256:
            raise InfraError(f"the LAVA initramfs carries only the flash VMM it was built with, not {local}")


class LavaRuntime:
    """Sessions on a LAVA lab for one run."""

    def __init__(self, cfg: Config, folder: RunFolder, stop: threading.Event, client: LavaClient | None = None):
        self.cfg, self.folder, self.stop = cfg, folder, stop
        self.client = client or lava_pool_client(cfg)
        self._lock = threading.Lock()
        self._ramdisk: tuple[str, str] | None = None

    def _artefacts(self, vmm: Path) -> tuple[str, str]:
        with self._lock:
            if self._ramdisk is None:
                self._ramdisk = self._publish(lava_initramfs(vmm, self.cfg.cache_dir))
            return self._ramdisk

    def _publish(self, path: Path) -> tuple[str, str]:
        """(URL, sha256) of an artefact in the cache's store, as the lab's workers fetch it."""
        return publish(path, self.cfg.cache_dir / "lava-artifacts", self.cfg.lava.artifact_url)

    @contextmanager
    def session(self, prep: Any, vmm: Path, tag: str, logdir: Path, commands: list[list[str]],
                pool_host: Any = None, initramfs: Any = None) -> Iterator[LavaHost]:
        """Run one repetition's commands as a LAVA job (or poll the one a resumed run left), then yield it."""
        name = prep.candidate.name
        assert prep.artifacts and prep.patched
        commands = [["uname", "-r"], *commands]
        pending = self.folder.candidate(name)["stages"].get("lava_jobs", {})
        job_id = pending.get(tag)
        if job_id is None:
            ramdisk = self._artefacts(vmm)
            kernel = self._publish(prep.artifacts.bzimage)
            cmdline = " ".join(["console=ttyS0", "panic=-1", "oops=panic", "random.trust_cpu=on",
                                self.cfg.test_host.cmdline, *prep.patched.cmdline]).strip()
            definition = job_definition(self.cfg.lava, run_id=self.folder.run_id, candidate=name, tag=tag,
                                        kernel=kernel, ramdisk=ramdisk, cmdline=cmdline,
                                        cpus=self.cfg.test_host.cpus, memory_mb=self.cfg.test_host.memory_mb,
                                        commands=commands, timeout_s=self.cfg.workload_of(prep.candidate).timeout_s)
            job_id = self.client.submit(definition)
            self.folder.update_stage(name, "lava_jobs", **{tag: job_id})
        info = self.client.wait(job_id, self.stop.is_set, limit_s=self.cfg.lava.job_timeout_min * 60 + 600)
        if info.get("state") != "Finished":  # stopped: the job is not ours to finish
            self.client.cancel(job_id)
        report = self.client.report(job_id, info)
        self.folder.update_stage(name, "lava_jobs", **{tag: None})
        logdir.mkdir(parents=True, exist_ok=True)
        console = logdir / f"{tag}.console.log"
        console.write_text(report.console, encoding="utf-8")
        what, why = outcome(report, len(commands))
        if what == "kernel":
            raise BootFailed("boot-failed", f"LAVA job {job_id}: {why}", report.console[-4000:])
        if what == "job":
            raise LavaRefused(f"LAVA job {job_id}: {why}")
        if what == "lab":
            raise LavaLabFault(why)
        uname = report.commands[0].stdout.strip()
        yield LavaHost(report, commands, console, sha256_of(vmm), report.boot_s, f"lava:{report.device}",
                       {"uname_r": uname, "executor": "lava", "lava_job": str(job_id), "device": report.device,
                        "job": report.timing()})


def lava_pool_client(cfg: Config) -> LavaClient:
    """The REST client of the configured lab, with the token read from lava.token_file."""
    try:
        token = Path(cfg.lava.token_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InfraError(f"lava.token_file {cfg.lava.token_file}: {exc}") from None
    return LavaClient(cfg.lava, token)
