"""sandbox: run a build step of untrusted source confined with bubblewrap.

A patch's Makefiles, Kconfig and scripts run during the build. Confined, they
run as an unprivileged user (a dedicated system user when the pipeline is
root), without network (an empty network namespace), with the whole
filesystem read-only except the build directory and the ccache directory,
with /tmp, /run and the home directory replaced by empty ones, in their own
PID namespace (they die with the pipeline), under a per-process memory limit
and a process-count limit; the time limit is the caller's timeout.

Inside, the source is always at /tmp/kpipe/src and the build directory at
/tmp/kpipe/src/build, so the kernel sees the same paths whichever slot it is
built in (reproducible objects, ccache hits across slots).
"""
from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import InfraError

BUILD_USER = "kpipe-build"
INSIDE_SRC = Path("/tmp/kpipe/src")
INSIDE_CCACHE = Path("/tmp/kpipe/ccache")
MEMORY_LIMIT_BYTES = 6 * 1024**3  # address space per process; the vmlinux link needs about 1 GiB
MAX_PROCESSES = 4096
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
OWNER_STAMP = ".kpipe-owner"


class SandboxUnavailable(InfraError):
    """bubblewrap is missing or cannot create its namespaces here."""


@dataclass(frozen=True)
class Sandbox:
    """Where a confined build sees its source, build directory and ccache."""

    src: Path
    build: Path
    ccache: Path

    def wrap(self, argv: list[str], env: dict[str, str]) -> list[str]:
        """The argv that runs `argv` confined, with exactly `env` (plus PATH, HOME, TMPDIR)."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap); builds of "
                                     "patches run confined. Set kernel.sandbox: false only for patches you trust.")
        root = os.geteuid() == 0
        out = [bwrap, "--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc",
               "--unshare-uts", "--hostname", "kpipe-build", "--unshare-cgroup-try"]
        if not root:
            out.append("--unshare-user")
        out += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp",
                "--tmpfs", "/run"]
        home = Path.home()
        if not root and home != Path("/") and home.exists():
            out += ["--tmpfs", str(home)]
        out += ["--perms", "0755", "--dir", str(INSIDE_SRC.parent),
                "--ro-bind", str(self.src), str(INSIDE_SRC), "--bind", str(self.build), str(INSIDE_SRC / "build"),
                "--bind", str(self.ccache), str(INSIDE_CCACHE), "--chdir", str(INSIDE_SRC / "build"), "--clearenv"]
        for k, v in {"PATH": SAFE_PATH, "HOME": "/tmp", "TMPDIR": "/tmp", **env}.items():
            out += ["--setenv", k, v]
        out.append("--")
        if root:
            user = build_user()
            out += ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                    "--inh-caps=-all", "--no-new-privs", "--"]
        out += ["prlimit", f"--as={MEMORY_LIMIT_BYTES}", f"--nproc={MAX_PROCESSES}", "--", *argv]
        return out

    def prepare(self) -> None:
        """Make the build and ccache directories writable by the user the build runs as."""
        self.build.mkdir(parents=True, exist_ok=True)
        self.ccache.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        user = build_user()
        for d in (self.build, self.ccache):
            stamp = d / OWNER_STAMP  # removed by an unconfined build, which writes as root
            if not stamp.exists() or stamp.read_text().strip() != str(user.pw_uid):
                _chown_tree(d, user.pw_uid, user.pw_gid)
                d.chmod(0o755)
                stamp.write_text(f"{user.pw_uid}\n")


def forget_owner(*dirs: Path) -> None:
    """An unconfined build is about to write in these directories as the pipeline's user."""
    for d in dirs:
        (d / OWNER_STAMP).unlink(missing_ok=True)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def build_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(BUILD_USER)
    except KeyError:
        raise SandboxUnavailable(f"the pipeline runs as root and the unprivileged user {BUILD_USER!r} that "
                                 f"confined builds run as does not exist: run ./setup.sh, or "
                                 f"useradd --system --no-create-home --shell /usr/sbin/nologin {BUILD_USER}") from None


def self_check(scratch: Path) -> str:
    """Run a probe confined and return '' when the sandbox holds, else what is wrong: the probe must be
    unprivileged, reach no network, and fail to write outside its build directory while writing inside."""
    from .proc import run

    box = Sandbox(scratch / "src", scratch / "src" / "build", scratch / "ccache")
    box.src.mkdir(parents=True, exist_ok=True)
    box.prepare()
    probe = ("import os, socket\n"
             "out = ['uid=%d' % os.getuid()]\n"
             "try:\n socket.create_connection(('127.0.0.1', 22), 2); out.append('net=open')\n"
             "except OSError: out.append('net=closed')\n"
             "try:\n open('/var/tmp/kpipe-sandbox-probe', 'w'); out.append('outside=writable')\n"
             "except OSError: out.append('outside=refused')\n"
             "open('probe', 'w').write('ok'); out.append('build=writable')\n"
             "print(' '.join(out))\n")
    try:
        res = run(box.wrap(["python3", "-c", probe], {}), timeout=60, check=False)
    except SandboxUnavailable as exc:
        return str(exc)
    if res.returncode != 0:
        return f"bubblewrap could not start a confined build: {res.tail(5)}"
    words = dict(w.split("=", 1) for w in res.output.split() if "=" in w)
    wrong = []
    if words.get("uid") == "0":
        wrong.append("the build runs as root")
    if words.get("net") != "closed":
        wrong.append("the build reaches the network")
    if words.get("outside") != "refused":
        wrong.append("the build can write outside its build directory")
    if words.get("build") != "writable":
        wrong.append("the build cannot write its build directory")
    return "; ".join(wrong)
