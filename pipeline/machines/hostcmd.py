"""hostcmd: commands and uploads into a booted test host, bounded in time and in what is kept.

The test host runs the candidate's kernel, so what comes back over its SSH channel is untrusted: a
kernel can stream gigabytes or never close the channel. Output is read straight off the paramiko
channel, the last `max_bytes` of each stream kept (a note says how much was dropped); a command that
runs past its timeout is closed and raised as `RemoteTimeout` (an infrastructure fault, retried, and
reported as a hang when it keeps happening). Uploads go over SFTP with a channel timeout.
"""
from __future__ import annotations

import select
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from pipeline.errors import InfraError

MAX_OUTPUT_BYTES = 4 * 1024 * 1024  # the VMM's JSON is about 20 KB; selftests print a few lines


class RemoteTimeout(InfraError):
    """A command in the test host ran past its timeout (the channel was closed)."""

    def __init__(self, command: str, timeout: float, output: str):
        self.command = command
        self.timeout = timeout
        self.output = output
        super().__init__(f"command in the test host still running after {timeout:.0f} s: {command[:200]}")


@dataclass(frozen=True)
class RemoteResult:
    """What a test-host command left: exit status, its streams (tails), how many bytes were dropped."""

    command: str
    exited: int
    stdout: str
    stderr: str
    dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.exited == 0


class _Tail:
    def __init__(self, limit: int):
        self.limit, self.data, self.dropped = limit, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            cut = len(self.data) - self.limit
            self.dropped += cut
            del self.data[:cut]

    def text(self) -> str:
        note = f"[kpipe: {self.dropped} earlier bytes of this output dropped]\n" if self.dropped else ""
        return note + self.data.decode("utf-8", errors="replace")


class ChannelNotOpened(InfraError):
    """The SSH transport would not open a session (the link dropped): the command never started."""


class LinkLost(InfraError):
    """The SSH link failed while a command or an upload was under way: it may or may not have run."""


# What a broken SSH link raises below us (socket errors are OSErrors); converted to LinkLost at this
# boundary for the test host's link, and named here for the layers that meet it elsewhere (a pool host).
LINK_FAULTS: tuple[type[BaseException], ...] = (OSError, EOFError, paramiko.SSHException)


def _lost(what: str, exc: BaseException) -> LinkLost:
    return LinkLost(f"the SSH link to the test host failed during {what}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}")


def run_command(transport: paramiko.Transport, command: str, timeout: float | None,
                max_bytes: int = MAX_OUTPUT_BYTES) -> RemoteResult:
    """Run `command` (already shell-quoted) in a new session on `transport`; stdin is closed at once."""
    deadline = time.monotonic() + (timeout if timeout is not None else 24 * 3600)
    try:
        chan = transport.open_session(timeout=30)
    except paramiko.SSHException as exc:  # nothing ran: the caller may reconnect and run it again
        raise ChannelNotOpened(f"cannot open an SSH session on the test host: {exc}") from exc
    try:
        return _drain(chan, command, deadline, timeout, max_bytes)
    except LINK_FAULTS as exc:
        raise _lost("a command", exc) from exc
    finally:
        chan.close()


def _drain(chan: paramiko.Channel, command: str, deadline: float, timeout: float | None,
           max_bytes: int) -> RemoteResult:
    chan.exec_command(command)
    chan.shutdown_write()
    out, err = _Tail(max_bytes), _Tail(max_bytes)
    quiet_since: float | None = None  # when the exit status came and no data has come since
    while True:
        got = False
        while chan.recv_ready():
            out.add(chan.recv(65536))
            got = True
        while chan.recv_stderr_ready():
            err.add(chan.recv_stderr(65536))
            got = True
        if chan.closed or (chan.eof_received and chan.exit_status_ready()):
            break
        now = time.monotonic()
        if chan.exit_status_ready():
            # sshd may send the exit status before the last of the output: read on until the end of
            # the stream, or until it has been quiet for a second (a background child left holding
            # the channel open must not keep us here).
            if got or quiet_since is None:
                quiet_since = now
            elif now - quiet_since > 1.0:
                break
        left = deadline - now
        if left <= 0:
            raise RemoteTimeout(command, timeout or 0, out.text()[-3000:] + err.text()[-2000:])
        select.select([chan], [], [], min(left, 0.2))
    status = chan.recv_exit_status() if chan.exit_status_ready() else -1
    return RemoteResult(command, status, out.text(), err.text(), out.dropped + err.dropped)


def put_file(client: paramiko.SSHClient, local: str, remote: str, timeout: float = 120) -> None:
    """Upload over SFTP; a test host that stalls the transfer raises (socket.timeout, an OSError)."""
    try:
        sftp = client.open_sftp()
        try:
            channel = sftp.get_channel()
            assert channel is not None
            channel.settimeout(timeout)
            sftp.put(local, remote)
        finally:
            sftp.close()
    except LINK_FAULTS as exc:
        raise _lost(f"an upload of {Path(local).name}", exc) from exc
