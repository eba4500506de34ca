"""boot: start a kernel under QEMU as a test host and log in to it over SSH (fabric).

Ready means an SSH login works and the host key is the one we generated.
A panic/oops/BUG on the console ends the boot as `boot-failed`; no login
within the timeout as `boot-timeout`. QEMU is always terminated.
"""
from __future__ import annotations

import logging
import re
import shlex
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import fabric
import jinja2
import paramiko

from pipeline.config import TestHost
from pipeline.errors import InfraError, UserError
from pipeline.machines.accel import Accelerator
from pipeline.machines.executor import QEMU_FILE_LIMIT_BYTES, Executor, Process
from pipeline.machines.hostcmd import (
    LINK_FAULTS,
    MAX_OUTPUT_BYTES,
    ChannelNotOpened,
    RemoteResult,
    put_file,
    run_command,
)
from pipeline.stages.build import BuildArtifacts
from pipeline.stages.initramfs import Initramfs, with_own_host_key

log = logging.getLogger(__name__)

PANIC_RE = re.compile(r"(Kernel panic - not syncing|BUG: |Oops: |general protection fault|"
                      r"Unable to handle kernel|kernel BUG at|rcu_sched self-detected stall|"
                      r"rcu: INFO: rcu_sched detected stalls)")


QEMU_ERROR_RE = re.compile(r"^qemu-system-\S+: .*$", re.M)
MAX_RECONNECTS = 2  # logins again per booted test host after the SSH link dropped
CONSOLE_WINDOW = 256 * 1024  # what the boot loop keeps and scans of the console: its newest part
CONSOLE_FLOOD_BYTES = 64 * 1024 * 1024  # no kernel prints this much before its SSH server is up


class QemuFailed(InfraError):
    """QEMU itself failed (not the kernel it ran): retried as an infrastructure fault."""

    def __init__(self, message: str, excerpt: str):
        self.excerpt = excerpt
        super().__init__(f"{message}\n{excerpt}")


class BootFailed(UserError):
    """The kernel panicked, flooded its console or never let us log in: the candidate's (a boot timeout is
    retried first, as a stuck nested vCPU can cause one)."""

    def __init__(self, status: str, message: str, excerpt: str):
        self.status = status
        self.excerpt = excerpt
        super().__init__(f"{message}\n{excerpt}")


def render_qemu_command(template: Path, **values: object) -> list[str]:
    """The QEMU argv from the command template, every value given, nothing from a patch in it."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.filters["shquote"] = lambda v: shlex.quote(str(v))
    text = env.from_string(template.read_text()).render(**values)
    argv: list[str] = []
    for line in text.splitlines():
        argv.extend(shlex.split(line))
    return argv


@dataclass
class BootedHost:
    """A test host that answered over SSH: run commands in it, upload files, log in again if the link drops."""

    connection: fabric.Connection
    process: Process
    console_log: Path
    ssh_port: int
    accelerator: str
    boot_seconds: float
    kernel_release: str
    info: dict = field(default_factory=dict)
    # Logs in again when the SSH link drops between commands (a test host that runs on): at most
    # MAX_RECONNECTS times, and never in the middle of a command.
    reconnect: Callable[[], fabric.Connection] | None = field(default=None, repr=False)
    reconnects: int = 0

    def _transport(self) -> paramiko.Transport:
        transport = self.connection.client.get_transport()
        if transport is None or not transport.is_active():
            self._reopen("the SSH link to the test host is closed")
            transport = self.connection.client.get_transport()
        assert transport is not None
        return transport

    def _reopen(self, why: str) -> None:
        if self.reconnect is None or self.reconnects >= MAX_RECONNECTS:
            raise InfraError(why)
        log.info("%s: logging in again", why)
        try:
            fresh = self.reconnect()
        except LINK_FAULTS as exc:
            raise InfraError(f"{why}; logging in again failed: {type(exc).__name__}: {exc}") from exc
        old, self.connection = self.connection, fresh
        self.reconnects += 1
        try:
            old.close()
        except Exception:  # noqa: BLE001 - the old link is gone either way
            pass

    def run(self, command: list[str], timeout: float | None = None, max_bytes: int = MAX_OUTPUT_BYTES) -> RemoteResult:
        """Run a command in the test host (every word shell-quoted), keeping at most `max_bytes` of each
        stream; past `timeout` raises RemoteTimeout."""
        try:
            return run_command(self._transport(), shlex.join(command), timeout, max_bytes)
        except ChannelNotOpened as exc:  # the command never started: safe to run once more
            self._reopen(str(exc))
            return run_command(self._transport(), shlex.join(command), timeout, max_bytes)

    def put(self, local: str, remote: str, timeout: float = 120) -> None:
        """Upload a file into the test host over SFTP, with a timeout."""
        self._transport()
        put_file(self.connection.client, local, remote, timeout)


def _connect(port: int, initramfs: Initramfs, gateway: fabric.Connection | None = None) -> fabric.Connection:
    conn = fabric.Connection("127.0.0.1", port=port, user="root", connect_timeout=5, gateway=gateway,
                             connect_kwargs={"key_filename": str(initramfs.keys.client_key),
                                             "look_for_keys": False, "allow_agent": False,
                                             "banner_timeout": 15, "auth_timeout": 15})
    conn.open()
    transport = conn.client.get_transport()
    assert transport is not None
    key = transport.get_remote_server_key()
    seen = f"{key.get_name()} {key.get_base64()}"
    if seen != initramfs.keys.host_pub:
        conn.close()
        raise InfraError(f"test host on port {port} presented host key {seen[:40]}..., not ours")
    return conn


class _ConsoleTail:
    """The console log read incrementally: each poll reads only what is new (at most 1 MiB) and keeps the
    newest CONSOLE_WINDOW characters, so the cost of a poll does not grow with the log."""

    def __init__(self, executor: Executor, path: str):
        self.executor, self.path, self.offset, self.window = executor, path, 0, ""

    def read(self) -> str:
        chunk = self.executor.read_bytes(self.path, self.offset, 1 << 20)
        self.offset += len(chunk)
        if chunk:
            self.window = (self.window + chunk.decode("utf-8", errors="replace"))[-CONSOLE_WINDOW:]
        return self.window


def _console_excerpt(text: str, match: re.Match | None = None, lines: int = 40) -> str:
    all_lines = text.splitlines()
    if match:
        idx = text[: match.start()].count("\n")
        return "\n".join(all_lines[max(0, idx - 5): idx + lines])
    return "\n".join(all_lines[-lines:])


@contextmanager
def boot_test_host(executor: Executor, artifacts: BuildArtifacts, initramfs: Initramfs, host: TestHost,
                   extra_cmdline: tuple[str, ...], run_dir: Path, name: str,
                   accelerator: Accelerator) -> Iterator[BootedHost]:
    """Boot, wait for SSH, yield the host; QEMU is terminated on every way out.

    The executor decides where QEMU runs; logs end up in `run_dir` either way.
    """
    qemu = executor.qemu_binary()
    run_dir.mkdir(parents=True, exist_ok=True)
    console_log = run_dir / f"{name}.console.log"
    qemu_log = run_dir / f"{name}.qemu.log"
    for p in (console_log, qemu_log):
        p.unlink(missing_ok=True)
    console_at = executor.log_path(console_log)
    if artifacts.image_sha256:
        initramfs = with_own_host_key(initramfs, artifacts.image_sha256)
    port = executor.free_port()
    accel_name, accel_args = accelerator.name, accelerator.args
    # random.trust_cpu=on: the test host's CRNG is seeded from the (emulated) CPU's RDRAND at boot
    # instead of about 1.4 s after /init, which dropbear's first getrandom() otherwise waits for. A
    # throwaway test host needs no better randomness, and the measurement does not use any.
    cmdline = " ".join([host.cmdline, "panic=-1", "oops=panic", "random.trust_cpu=on", *extra_cmdline])
    argv = render_qemu_command(host.qemu_template, qemu=qemu, accel_args=accel_args, cpus=host.cpus,
                               memory_mb=host.memory_mb, kernel=executor.path_for(artifacts.bzimage),
                               initrd=executor.path_for(initramfs.path), cmdline=cmdline, ssh_port=port,
                               console_log=console_at, pidfile=executor.log_path(run_dir / f"{name}.pid"))
    start = time.monotonic()
    proc = executor.spawn(argv, qemu_log)
    conn = None
    booted: BootedHost | None = None
    console_tail = _ConsoleTail(executor, console_at)
    try:
        deadline = start + host.boot_timeout_s
        ready_seen = False
        while True:
            console = console_tail.read()
            m = PANIC_RE.search(console)
            if m:
                time.sleep(1.0)  # let the rest of the oops reach the log
                console = console_tail.read()
                raise BootFailed("boot-failed", f"kernel reported '{m.group(1).strip()}' during boot",
                                 _console_excerpt(console, PANIC_RE.search(console)))
            if console_tail.offset > CONSOLE_FLOOD_BYTES:
                raise BootFailed("boot-failed", f"the kernel wrote more than {CONSOLE_FLOOD_BYTES >> 20} MiB to its "
                                 f"console before its SSH server came up (a console flood)",
                                 _console_excerpt(console, lines=20))
            if not proc.alive():
                qlog = executor.read_text(executor.log_path(qemu_log))
                excerpt = _console_excerpt(console, lines=30) + "\n--- qemu ---\n" + qlog[-2000:]
                status = proc.terminate(grace_s=0.1)  # already gone: collects its exit status
                if status in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ):
                    raise BootFailed("boot-failed", f"the kernel flooded its console past "
                                     f"{QEMU_FILE_LIMIT_BYTES >> 20} MiB during boot; QEMU was stopped", excerpt)
                if status == 0:
                    # A clean exit under -no-reboot: the guest reset (a triple fault) or powered off.
                    raise BootFailed("boot-failed", "the test host reset or powered off during boot "
                                     "(QEMU exited with status 0)", excerpt)
                # QEMU itself failed or was killed (a port taken meanwhile, a missing file, a signal): not the
                # kernel's doing, so it is retried like any infrastructure fault.
                qemu_error = QEMU_ERROR_RE.search(qlog)
                raise QemuFailed(f"QEMU exited during boot (status {status})"
                                 + (f": {qemu_error.group(0)[:200]}" if qemu_error else ""), excerpt)
            ready_seen = ready_seen or initramfs.ready_marker in console
            if ready_seen:
                try:
                    conn = _connect(port, initramfs, executor.gateway())
                    break
                except (OSError, paramiko.SSHException, EOFError) as exc:
                    log.debug("ssh not ready: %s", exc)
            if time.monotonic() > deadline:
                raise BootFailed("boot-timeout", f"no SSH login within {host.boot_timeout_s} s "
                                 f"(ready marker {'seen' if ready_seen else 'not seen'} on the console)",
                                 _console_excerpt(console, lines=30))
            time.sleep(getattr(executor, "poll_s", 0.25))
        booted = BootedHost(conn, proc, console_log, port, accel_name, time.monotonic() - start,
                            artifacts.kernel_release, {"executor": executor.name},
                            reconnect=lambda: _connect(port, initramfs, executor.gateway()))
        uname = booted.run(["uname", "-r"], timeout=60)
        booted.info["uname_r"] = uname.stdout.strip()
        yield booted
    finally:
        if booted is not None and booted.connection is not conn:  # it logged in again: close that link too
            try:
                booted.connection.close()
            except Exception:  # noqa: BLE001
                pass
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a dead link must not hide the real error
                pass
        proc.terminate()
        executor.collect(console_at, console_log)
        executor.collect(executor.log_path(qemu_log), qemu_log)
        # On the way out of a boot that got as far as the workload: a console that hit QEMU's file-size
        # limit means the kernel flooded it (and QEMU was stopped), which is the candidate's doing.
        flooded = console_log.exists() and console_log.stat().st_size >= QEMU_FILE_LIMIT_BYTES - 4096
        if flooded and conn is not None:
            raise BootFailed("boot-failed", f"the kernel flooded its console past {QEMU_FILE_LIMIT_BYTES >> 20} MiB "
                             f"and its test host was stopped", "")
