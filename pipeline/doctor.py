"""doctor: the tools and files a run needs, each missing one with the command that installs it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.config import load_config
from pipeline.errors import ConfigError

TOOLS = {  # command -> Debian package (setup.sh installs the same list)
    "qemu-system-x86_64": "qemu-system-x86", "gcc": "build-essential", "make": "make", "git": "git",
    "ccache": "ccache", "flex": "flex", "bison": "bison", "bc": "bc", "cpio": "cpio", "busybox": "busybox-static",
    "dropbear": "dropbear-bin", "dropbearkey": "dropbear-bin", "ssh-keygen": "openssh-client",
    "/usr/lib/openssh/sftp-server": "openssh-sftp-server", "xz": "xz-utils", "ldd": "libc-bin",
    "bwrap": "bubblewrap", "setpriv": "util-linux", "prlimit": "util-linux",
    "rsync": "rsync",  # make headers_install, for KVM selftests built from the tree
}
HEADERS = {"/usr/include/libelf.h": "libelf-dev", "/usr/include/openssl/ssl.h": "libssl-dev"}


def missing_tools() -> list[str]:
    """One line per missing command or header: what is missing and how to install it."""
    problems = []
    for tool, pkg in TOOLS.items():
        found = Path(tool).exists() if tool.startswith("/") else shutil.which(tool)
        if not found:
            problems.append(f"{tool}: missing; apt-get install {pkg}")
    for header, pkg in HEADERS.items():
        if not Path(header).exists():
            problems.append(f"{header}: missing; apt-get install {pkg}")
    return problems


def doctor(cfg_path: str, hosts_file: str | None = None, check_hosts: bool = False) -> tuple[list[str], list[str]]:
    """(good news, problems): missing tools, a config that does not load, and with check_hosts every
    pool machine's check, usable or not."""
    problems = missing_tools()
    fine: list[str] = []
    try:
        cfg = load_config(cfg_path, hosts_file)
    except ConfigError as exc:
        return fine, problems + [str(exc)]
    import tempfile

    from pipeline.stages.sandbox import self_check

    with tempfile.TemporaryDirectory(prefix="kpipe-doctor-") as tmp:
        os.chmod(tmp, 0o755)
        wrong = self_check(Path(tmp))
    if wrong:
        problems.append(f"confined builds: {wrong} (triage refuses to build without a working sandbox; "
                        "kernel.sandbox: false is only for patches you trust)")
    else:
        fine.append("confined builds: bubblewrap works (unprivileged, no network, read-only outside build/)")
    if check_hosts:
        from pipeline.machines.pool import OK, check_pool

        for h in check_pool(cfg.hosts, cfg.test_host.accelerator, str(cfg.cache_dir), cfg.report.compare_across_kinds):
            line = f"host {h.name} ({h.spec.address}): {h.status}: {h.reason}"
            (fine if h.status == OK else problems).append(line)
    return fine, problems
