"""Pool hosts for tests: real OpenSSH sshd daemons on 127.0.0.1 ports, each with its own
host key, authorized key and work directory. `kill()` takes a host down the way a
machine dies: the daemon and every process it started (sessions, QEMU) get SIGKILL,
so open connections drop and new ones are refused."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> str:
    """An ed25519 key pair at path (+ .pub); returns the public key line."""
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kpipe-test", "-f", str(path)],
                       check=True)
    return path.with_suffix(".pub").read_text().strip()


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


class SshdHost:
    def __init__(self, name: str, root: Path, client_pub: str):
        self.name = name
        self.dir = root / name
        self.workdir = self.dir / "work"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host_pub = " ".join(keygen(self.dir / "host_key").split()[:2])
        (self.dir / "authorized_keys").write_text(client_pub + "\n")
        self.port = free_port()
        self.config = self.dir / "sshd_config"
        self.config.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.dir / "host_key"}
AuthorizedKeysFile {self.dir / "authorized_keys"}
PidFile {self.dir / "sshd.pid"}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
AllowTcpForwarding yes
MaxSessions 50
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel VERBOSE
""")
        self.proc: subprocess.Popen | None = None

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_pub}"

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # OpenSSH's privilege separation directory
        log = open(self.dir / "sshd.log", "ab")  # noqa: SIM115 - the daemon keeps it
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    log_text = (self.dir / "sshd.log").read_text()[-2000:]
                    raise RuntimeError(f"sshd {self.name} exited: {log_text}") from None
                time.sleep(0.1)
        raise RuntimeError(f"sshd {self.name} did not listen on {self.port}")

    def kill(self) -> None:
        """The machine dies: the daemon, its sessions and the QEMU they started, all at once."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None

    def yaml(self, client_key: Path, known_hosts: Path) -> str:
        return (f"  - {{name: {self.name}, host: 127.0.0.1, port: {self.port}, user: root, key: {client_key}, "
                f"known_hosts: {known_hosts}, workdir: {self.workdir}, min_free_gb: 0.5}}\n")
