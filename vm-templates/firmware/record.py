#!/usr/bin/env python3
"""Record a real firmware boot's flash phases as a flash pattern (vm-templates/firmware/*.pattern).

    .venv/bin/python vm-templates/firmware/record.py --firmware-dir DIR [--out vm-templates/firmware]

DIR holds Debian's `ovmf` and `qemu-efi-aarch64` packages unpacked (`apt-get download ovmf
qemu-efi-aarch64`, then `dpkg-deb -x` each into DIR). For each firmware the boot runs twice under TCG
with QEMU's pflash trace events, from a fresh copy of the variable store and then again on the same
store (warm), to the UEFI shell prompt on the serial console (or the time limit). No KVM is needed:
the phases are the device's, whatever accelerator runs the firmware.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pipeline.workloads.firmware import encode, phases_from_trace  # noqa: E402

FIRMWARE = {
    "ovmf-x86": ("qemu-system-x86_64", ["-machine", "q35", "-m", "256"],
                 "usr/share/OVMF/OVMF_CODE_4M.fd", "usr/share/OVMF/OVMF_VARS_4M.fd"),
    "aavmf-arm64": ("qemu-system-aarch64", ["-machine", "virt", "-cpu", "cortex-a57", "-m", "512"],
                    "usr/share/AAVMF/AAVMF_CODE.fd", "usr/share/AAVMF/AAVMF_VARS.fd"),
}


def boot(qemu: str, machine: list[str], code: Path, store: Path, work: Path, limit_s: float) -> tuple[Path, float]:
    """One boot to the shell prompt; the trace log and the seconds it took."""
    log, serial = work / "trace.log", work / "serial.txt"
    log.unlink(missing_ok=True)
    serial.write_bytes(b"")
    argv = [qemu, *machine, "-accel", "tcg", "-nodefaults", "-display", "none", "-serial", f"file:{serial}",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={store}", "-trace", "pflash_*", "-D", str(log)]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - t0 < limit_s and b"Shell>" not in serial.read_bytes():
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    return log, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firmware-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--limit", type=float, default=90.0, help="seconds a boot may take to reach the shell")
    args = ap.parse_args()
    for name, (qemu, machine, code, store) in FIRMWARE.items():
        version = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            shutil.copyfile(args.firmware_dir / store, work / "vars.fd")
            for state in ("fresh", "warm"):
                log, took = boot(qemu, machine, args.firmware_dir / code, work / "vars.fd", work, args.limit)
                with log.open(encoding="utf-8", errors="replace") as f:
                    phases = phases_from_trace(f)
                out = args.out / f"{name}-{state}.pattern"
                out.write_text(
                    f"# firmware: Debian {code.rsplit('/', 1)[1]} with {'a fresh' if state == 'fresh' else 'the same'}"
                    f" variable store ({store.rsplit('/', 1)[1]}{', already booted once' if state == 'warm' else ''})\n"
                    f"# recorded: {version}, TCG, {' '.join(machine)}, to the UEFI shell prompt ({took:.0f} s)\n"
                    f"# phases: {len(phases)}\n# updates: {2 * len(phases)}\n"
                    f"# writes: {sum(p.writes for p in phases)}\n# reads: {sum(p.reads for p in phases)}\n"
                    f"{encode(phases)}\n", encoding="utf-8")
                print(f"{out}: {len(phases)} phases, {2 * len(phases)} memslot updates ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
