"""The booted test host's SSH link: a link that drops between commands is logged into again, a bounded
number of times, and a command is run again only when it never started."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import InfraError
from pipeline.machines.hostcmd import ChannelNotOpened, RemoteResult
from pipeline.stages import boot


class FakeTransport:
    def __init__(self, active: bool = True):
        self.active = active

    def is_active(self) -> bool:
        return self.active


class FakeConnection:
    def __init__(self, transport: FakeTransport):
        self.transport, self.closed = transport, False
        self.client = self

    def get_transport(self) -> FakeTransport:
        return self.transport

    def close(self) -> None:
        self.closed = True


def _host(first: FakeConnection, logins: list[FakeConnection]) -> boot.BootedHost:
    def reconnect() -> Any:
        conn = FakeConnection(FakeTransport())
        logins.append(conn)
        return conn

    return boot.BootedHost(first, None, Path("console.log"), 2222, "tcg", 1.0, "6.1", {},  # type: ignore[arg-type]
                           reconnect=reconnect)


def test_a_session_that_will_not_open_logs_in_again_and_runs_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    first, logins, ran = FakeConnection(FakeTransport()), [], []

    def run_command(transport: Any, command: str, timeout: Any, max_bytes: int) -> RemoteResult:
        if transport is first.transport:
            raise ChannelNotOpened("cannot open an SSH session on the test host: Unable to open channel.")
        ran.append(command)
        return RemoteResult(command, 0, "6.1\n", "")

    monkeypatch.setattr(boot, "run_command", run_command)
    host = _host(first, logins)
    assert host.run(["uname", "-r"]).stdout == "6.1\n"
    assert ran == ["uname -r"] and len(logins) == 1 and first.closed and host.connection is logins[0]


def test_a_closed_link_is_reopened_before_a_command_and_not_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    first, logins = FakeConnection(FakeTransport(active=False)), []
    monkeypatch.setattr(boot, "run_command", lambda t, c, to, mb: RemoteResult(c, 0, "", ""))
    host = _host(first, logins)
    host.run(["true"])
    assert len(logins) == 1
    for conn in logins:  # every new link dies at once too
        conn.transport.active = False
    original = host.reconnect
    assert original is not None
    host.reconnect = lambda: _dead(original())
    with pytest.raises(InfraError, match="closed"):
        for _ in range(boot.MAX_RECONNECTS + 1):
            host.run(["true"])
    assert host.reconnects == boot.MAX_RECONNECTS


def _dead(conn: Any) -> Any:
    conn.transport.active = False
    return conn


def test_a_link_that_breaks_mid_command_is_the_infrastructures_by_type() -> None:
    """Below the boundary paramiko raises EOFError, socket errors and SSHException; above it only
    InfraError (LinkLost) arrives, so the measuring rules read the family from the type."""
    from pipeline.errors import InfraError
    from pipeline.machines.hostcmd import LinkLost, run_command

    class Channel:
        closed = False

        def exec_command(self, command: str) -> None:
            pass

        def shutdown_write(self) -> None:
            pass

        def recv_ready(self) -> bool:
            raise EOFError("the link went away")

        def close(self) -> None:
            self.closed = True

    chan = Channel()

    class Transport:
        def open_session(self, timeout: float) -> Channel:
            return chan

    with pytest.raises(LinkLost, match="EOFError: the link went away") as info:
        run_command(Transport(), "true", timeout=5)  # type: ignore[arg-type]
    assert isinstance(info.value, InfraError) and chan.closed
