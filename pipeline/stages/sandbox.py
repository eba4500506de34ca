"""sandbox: run a build step of untrusted source confined with bubblewrap.

A patch's Makefiles, Kconfig and scripts run during the build. Confined, they
run as an unprivileged user (a dedicated system user when the pipeline is
root), without network (an empty network namespace), in their own PID
namespace (they die with the pipeline), under a per-process memory limit and
a process-count limit; the time limit is the caller's timeout.

Least visibility: the sandbox's filesystem is built from nothing. It holds
the toolchain (/usr and the few files of /etc the compilers and linker read),
the source being built (read-only), its build directory, the ccache
(read-only unless the build is trusted) and the config fragments
(read-only), with empty /tmp and /run. Homes, the project checkout, /var,
the caches, the runs and every other tree are not there at all; where one of
them lies under /usr it is covered by an empty tmpfs.

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

from pipeline.errors import InfraError

BUILD_USER = "kpipe-build"
INSIDE_SRC = Path("/tmp/kpipe/src")
INSIDE_CCACHE = Path("/tmp/kpipe/ccache")
INSIDE_FRAGMENTS = Path("/tmp/kpipe/fragments")
MEMORY_LIMIT_BYTES = 6 * 1024**3  # address space per process; the vmlinux link needs about 1 GiB
MAX_PROCESSES = 4096
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# What the toolchain reads outside /usr: the dynamic linker's cache and Debian's alternatives (cc, ld...).
TOOLCHAIN_ETC = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/perl")
MERGED_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


class SandboxUnavailable(InfraError):
    """bubblewrap is missing or cannot create its namespaces here."""


@dataclass(frozen=True)
class Sandbox:
    """Where a confined build sees its source, build directory, ccache and config fragments.

    `ccache_writable` is True only for trusted builds (a tree the config names, unpatched): an untrusted
    build reads the shared ccache and adds nothing to it, so it cannot plant an object or a configuration
    that another build would use. `hide` lists paths that must not be visible even where they lie under
    a directory the toolchain needs.
    """

    src: Path
    build: Path
    ccache: Path
    ccache_writable: bool = True
    fragments: Path | None = None
    hide: tuple[Path, ...] = ()

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
        out += ["--ro-bind", "/usr", "/usr"]
        for d in MERGED_DIRS:
            if os.path.islink(d):
                out += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                out += ["--ro-bind", d, d]
        out += ["--perms", "0755", "--dir", "/etc"]  # parents bwrap makes itself are 0700
        for f in TOOLCHAIN_ETC:
            if os.path.exists(f):
                out += ["--ro-bind", f, f]
        out += ["--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp", "--tmpfs", "/run"]
        for h in sorted(set(self.hide) | set(default_hidden())):
            if _under(h, "/usr") and h.is_dir():
                out += ["--tmpfs", str(h)]
        out += ["--perms", "0755", "--dir", str(INSIDE_SRC.parent),
                "--ro-bind", str(self.src), str(INSIDE_SRC), "--bind", str(self.build), str(INSIDE_SRC / "build"),
                "--ro-bind" if not self.ccache_writable else "--bind", str(self.ccache), str(INSIDE_CCACHE)]
        if self.fragments is not None:
            out += ["--ro-bind", str(self.fragments), str(INSIDE_FRAGMENTS)]
        out += ["--remount-ro", "/", "--chdir", str(INSIDE_SRC / "build"), "--clearenv"]
        for k, v in {"PATH": SAFE_PATH, "HOME": "/tmp", "TMPDIR": "/tmp", **env, **self.ccache_env()}.items():
            out += ["--setenv", k, v]
        out.append("--")
        if root:
            user = build_user()
            out += ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                    "--inh-caps=-all", "--no-new-privs", "--"]
        out += ["prlimit", f"--as={MEMORY_LIMIT_BYTES}", f"--nproc={MAX_PROCESSES}", "--", *argv]
        return out

    def ccache_env(self) -> dict[str, str]:
        """ccache's settings inside: its configuration pinned (nothing read from the cache directory),
        and for an untrusted build, hits only: no result, statistic or file is written there."""
        env = {"CCACHE_DIR": str(INSIDE_CCACHE), "CCACHE_CONFIGPATH": "/dev/null"}
        if not self.ccache_writable:
            env.update({"CCACHE_READONLY": "1", "CCACHE_NOSTATS": "1", "CCACHE_TEMPDIR": "/tmp/ccache-tmp"})
        return env

    def prepare(self, build_stamp: Path, ccache_stamp: Path) -> None:
        """Make the build directory (and, for a trusted build, the ccache) writable by the build's user.

        The stamps that say a directory already belongs to that user live outside every directory a
        build can write, so nothing the build left is ever read or written through by root here."""
        self.build.mkdir(parents=True, exist_ok=True)
        self.ccache.mkdir(parents=True, exist_ok=True)
        remove_planted_config(self.ccache)
        if os.geteuid() != 0:
            return
        user = build_user()
        owned = [(self.build, build_stamp)] + ([(self.ccache, ccache_stamp)] if self.ccache_writable else [])
        for d, stamp in owned:
            if not _stamp_says(stamp, user.pw_uid) or os.lstat(d).st_uid != user.pw_uid:
                _chown_tree(d, user.pw_uid, user.pw_gid)
                d.chmod(0o755)
                stamp.write_text(f"{user.pw_uid}\n")


def _stamp_says(stamp: Path, uid: int) -> bool:
    try:
        return stamp.read_text().strip() == str(uid)
    except OSError:
        return False


def _under(path: Path, top: str) -> bool:
    return path == Path(top) or Path(top) in path.parents


def default_hidden() -> tuple[Path, ...]:
    """Paths no build may see even when they lie under /usr: this project's checkout and the home."""
    out = [Path(__file__).resolve().parents[2], Path.home()]
    cache = os.environ.get("KPIPE_CACHE_DIR")
    if cache:
        out.append(Path(cache).resolve())
    return tuple(out)


def remove_planted_config(ccache: Path) -> None:
    """A ccache.conf in the shared cache directory is never ours (settings come from the environment and
    CCACHE_CONFIGPATH): remove it, whatever it is, without following it."""
    try:
        (ccache / "ccache.conf").unlink()
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(ccache / "ccache.conf")


def forget_owner(*stamps: Path) -> None:
    """An unconfined build is about to write in the directories these stamps describe, as the pipeline's
    user: the next confined build must hand them back to its user."""
    for stamp in stamps:
        stamp.unlink(missing_ok=True)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def build_user() -> pwd.struct_passwd:
    """The unprivileged user untrusted builds run as (kpipe-build), created by setup.sh."""
    try:
        return pwd.getpwnam(BUILD_USER)
    except KeyError:
        raise SandboxUnavailable(f"the pipeline runs as root and the unprivileged user {BUILD_USER!r} that "
                                 f"confined builds run as does not exist: run ./setup.sh, or "
                                 f"useradd --system --no-create-home --shell /usr/sbin/nologin {BUILD_USER}") from None


def self_check(scratch: Path, secrets: tuple[Path, ...] = ()) -> str:
    """Run a probe confined and return '' when the sandbox holds, else what is wrong: the probe must be
    unprivileged, reach no network, fail to write outside its build directory while writing inside, and
    see none of the machine's files it does not need (homes, /var, this checkout, the caches, `secrets`)."""
    from pipeline.util.proc import run

    box = Sandbox(scratch / "src", scratch / "src" / "build", scratch / "ccache", ccache_writable=False)
    box.src.mkdir(parents=True, exist_ok=True)
    box.prepare(scratch / "build.owner", scratch / "ccache.owner")
    hidden = sorted({str(p) for p in (*default_hidden(), Path("/home"), Path("/root"), Path("/var"),
                                      Path("/srv"), Path("/etc/passwd"), Path("/etc/ssh"), *secrets)})
    probe = ("import os, socket, sys\n"
             "out = ['uid=%d' % os.getuid()]\n"
             "try:\n socket.create_connection(('127.0.0.1', 22), 2); out.append('net=open')\n"
             "except OSError: out.append('net=closed')\n"
             "try:\n open('/tmp/kpipe/ccache/probe', 'w'); out.append('ccache=writable')\n"
             "except OSError: out.append('ccache=refused')\n"
             "open('probe', 'w').write('ok'); out.append('build=writable')\n"
             "seen = [p for p in sys.argv[1:] if os.path.exists(p) and (not os.path.isdir(p) or os.listdir(p))]\n"
             "out.append('seen=' + ','.join(seen))\n"
             "print(' '.join(out))\n")
    try:
        res = run(box.wrap(["python3", "-c", probe, *hidden], {}), timeout=60, check=False)
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
    if words.get("ccache") != "refused":
        wrong.append("an untrusted build can write the shared ccache")
    if words.get("build") != "writable":
        wrong.append("the build cannot write its build directory")
    if words.get("seen", "missing"):
        wrong.append(f"the build can see {words.get('seen', '(the probe printed nothing)')}")
    return "; ".join(wrong)
