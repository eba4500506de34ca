"""probe: the facts a machine that runs test hosts reports about itself (CPU, memory, QEMU, /dev/kvm,
its work directory), from one shell script run over SSH on pool hosts and locally here."""
from __future__ import annotations

import os

from pipeline.util.proc import run

# $1 = work directory. One key=value per line; parsed by parse_probe().
PROBE = r"""wd=$1
(umask 077; mkdir -p "$wd") 2>/dev/null || echo "error=cannot create $wd"
[ -L "$wd" ] && echo "error=$wd is a symlink; give workdir a real directory"
[ -O "$wd" ] || echo "error=$wd belongs to another user; give this host its own workdir"
[ -n "$(find "$wd" -maxdepth 0 -perm /022 2>/dev/null)" ] &&
  echo "error=$wd can be written by other users (chmod 700 it)"
echo "machine=$(uname -m)"
echo "kernel=$(uname -r)"
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
echo "cpus=$(nproc)"
echo "cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
echo "mem_kb=$(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)"
q=$(command -v qemu-system-x86_64 || true)
echo "qemu=$q"
[ -n "$q" ] && echo "qemu_version=$("$q" --version | head -n1)"
echo "gcc=$(gcc --version 2>/dev/null | head -n1)"
echo "free_kb=$(df -Pk "$wd" 2>/dev/null | awk 'NR==2{print $4}')"
[ -e /dev/kvm ] && echo "kvm_exists=1"
[ -r /dev/kvm ] && [ -w /dev/kvm ] && echo "kvm_rw=1"
{ [ -e /sys/module/kvm_pvm ] || grep -q '^kvm_pvm ' /proc/modules 2>/dev/null; } && echo "kvm_pvm=1"
true
"""


def parse_probe(text: str) -> dict[str, str]:
    """The probe script's key=value lines as a mapping (unknown lines ignored)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            out[key] = value.strip()
    return out


def local_probe(workdir: str) -> dict[str, str]:
    """The same facts as PROBE, for the machine running the pipeline."""
    os.makedirs(workdir, exist_ok=True)
    out = run(["sh", "-c", PROBE, "kpipe-probe", workdir], timeout=60, check=False)
    return parse_probe(out.output)
