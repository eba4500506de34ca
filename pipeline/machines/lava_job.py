"""lava_job: what a LAVA job of kpipe is made of: the test host's initramfs for a LAVA device (busybox,
the flash VMM, a console shell), artefacts published by sha256, and the job definition from
vm-templates/lava/job.yaml.j2.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import jinja2
import yaml

from pipeline.errors import InfraError, UserError
from pipeline.machines.accel import ACCELERATORS
from pipeline.machines.lava import LavaSettings

TEMPLATES = Path(__file__).resolve().parents[2] / "vm-templates" / "lava"


def sha256_of(path: Path) -> str:
    """A file's sha256, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def publish(path: Path, store: Path, base_url: str = "") -> tuple[str, str]:
    """Copy an artefact into the store under its sha256 (world-readable: the LAVA worker reads it);
    its URL and sha256: file:// without `base_url`, else <base_url>/<sha256>/<name> (a lab whose worker
    is elsewhere fetches the store over HTTP, from `kpipe serve`)."""
    digest = sha256_of(path)
    dest = store / digest / path.name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        shutil.copyfile(path, tmp)
        os.chmod(tmp, 0o644)
        tmp.replace(dest)
    for d in (store, dest.parent):
        os.chmod(d, 0o755)
    if base_url:
        return f"{base_url.rstrip('/')}/{digest}/{urllib.parse.quote(path.name)}", digest
    return dest.as_uri(), digest


def lava_initramfs(vmm: Path, cache_dir: Path, busybox: Path = Path("/bin/busybox")) -> Path:
    """The test host's userspace for a LAVA device: static busybox, the flash VMM, vm-templates/lava's
    init and kpipe-lava-run; a gzip'd newc cpio (LAVA appends its overlay), cached by content."""
    parts = {"bin/busybox": busybox, "bin/flashvmm": vmm, "init": TEMPLATES / "init",
             "bin/kpipe-lava-run": TEMPLATES / "kpipe-lava-run"}
    h = hashlib.sha256(b"kpipe-lava-initramfs-1\0")
    for name, src in sorted(parts.items()):
        h.update(name.encode() + b"\0" + sha256_of(src).encode() + b"\0")
    out = cache_dir / "lava" / f"initramfs-{h.hexdigest()[:16]}.cpio.gz"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "root", "etc", "usr/bin", "usr/sbin"):
            (root / d).mkdir(parents=True, exist_ok=True)
        for name, src in parts.items():
            shutil.copyfile(src, root / name)
            os.chmod(root / name, 0o755)
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc/group").write_text("root:x:0:\n")
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        res = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=root, check=False,
                             input="\n".join(names).encode(), capture_output=True)
        if res.returncode != 0:
            raise InfraError(f"cpio failed building the LAVA initramfs: {res.stderr.decode()[-500:]}")
        tmp_out = out.with_suffix(".tmp")
        with gzip.GzipFile(tmp_out, "wb", mtime=0) as f:
            f.write(res.stdout)
        tmp_out.replace(out)
    return out


def job_definition(settings: LavaSettings, *, run_id: str, candidate: str, tag: str, kernel: tuple[str, str],
                   ramdisk: tuple[str, str], cmdline: str, cpus: int, memory_mb: int,
                   commands: list[list[str]], timeout_s: float,
                   accel_options: tuple[str, ...] | None = None) -> str:
    """The YAML of one job: the (url, sha256) of kernel and ramdisk, the kernel command line, and the
    commands the test shell runs (each through kpipe-lava-run, numbered from 0). `accel_options` go to
    the device's QEMU (the `qemu` device type): by default the local runtime's own TCG arguments, said
    explicitly so that a LAVA run and a local one time the same emulated machine whatever the device
    template or QEMU version would choose (QEMU 7.2 here defaults to multi-threaded TCG as well)."""
    for argv in commands:
        for word in argv:
            if not word or "\n" in word or "\r" in word:
                raise UserError(f"a command word for a LAVA job cannot be empty or hold a newline: {word!r}")
    minutes = max(5, int(timeout_s // 60) + 5)
    if accel_options is None:
        accel_options = (ACCELERATORS["tcg"]()[0],)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    text = env.from_string((TEMPLATES / "job.yaml.j2").read_text()).render(
        device_type=settings.device_type, run_id=run_id, candidate=candidate, tag=tag, priority=settings.priority,
        tags=list(settings.tags), kernel_url=kernel[0], kernel_sha256=kernel[1], ramdisk_url=ramdisk[0],
        ramdisk_sha256=ramdisk[1], cmdline=cmdline, job_minutes=min(settings.job_timeout_min, minutes + 10),
        boot_minutes=5, test_minutes=minutes,
        extra_options=[*accel_options, f"-smp {cpus}", f"-m {memory_mb}", "-machine q35", "-no-reboot"],
        steps=[shlex.join(["kpipe-lava-run", str(i), *argv]) for i, argv in enumerate(commands)])
    doc: Any = yaml.safe_load(text)  # a template error stops here, not in LAVA
    if not isinstance(doc, dict) or "actions" not in doc:
        raise InfraError("vm-templates/lava/job.yaml.j2 did not render to a LAVA job")
    return text
