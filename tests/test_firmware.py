"""Recorded firmware boots as flash patterns: the trace parser, the pattern format, the committed
recordings, the firmware-replay kind's settings and output, and the VMM replaying each recording on this
machine's /dev/kvm with exactly the recorded accesses."""
from __future__ import annotations

import json
import lzma
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, small_config
from test_vmm_local import run_vmm, vmm  # noqa: F401 - the module-scoped VMM fixture

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.workloads.extra import WorkloadOutputError
from pipeline.workloads.firmware import (
    FirmwareReplayKind,
    Phase,
    decode,
    encode,
    phases_from_trace,
    read_recording,
    updates_of,
)

RECORDINGS = sorted((REPO / "vm-templates" / "firmware").glob("*.pattern"))
# What the fidelity review counted with the same QEMU trace events (2026-12, section 6.1): memslot updates.
REVIEW_UPDATES = {"ovmf-x86-fresh": 506, "ovmf-x86-warm": 186, "aavmf-arm64-fresh": 890, "aavmf-arm64-warm": 82}


def test_the_recorded_aavmf_trace_gives_the_committed_pattern() -> None:
    """The parser on a real QEMU 7.2 log (AAVMF, warm store: buffered writes, status reads, two flash
    devices) yields exactly the committed recording."""
    with lzma.open(Path(__file__).parent / "data" / "aavmf-arm64-warm.trace.xz", "rt") as f:
        phases = phases_from_trace(f)
    pattern, header = read_recording(REPO / "vm-templates/firmware/aavmf-arm64-warm.pattern")
    assert encode(phases) == pattern
    assert len(phases) == 41 and sum(p.reads for p in phases) == int(header["reads"]) > 0


def test_phases_open_on_a_write_and_close_on_read_array() -> None:
    log = ["pflash_reset system.flash1: reset",
           "pflash_io_read system.flash1: offset:0x0 size:1 value:0x0 cmd:0x0 wcycle:0",  # in ROM mode: not one
           "pflash_io_write system.flash1: offset:0x10 size:1 value:0x50 wcycle:0",
           "pflash_mode_read_array system.flash1: read array mode",
           "1234@5.6:pflash_io_write system.flash1: offset:0x10 size:1 value:0x10 wcycle:0",
           "pflash_io_write system.flash1: offset:0x10 size:1 value:0x41 wcycle:1",
           "pflash_io_read system.flash1: offset:0x10 size:1 value:0x80 cmd:0x10 wcycle:0",
           "pflash_io_write system.flash1: offset:0x10 size:1 value:0xff wcycle:0",
           "pflash_mode_read_array system.flash1: read array mode",
           "pflash_mode_read_array system.flash0: read array mode",  # already in ROM mode: no update
           "pflash_io_write system.flash1: offset:0x10 size:1 value:0x10 wcycle:0"]  # unclosed: dropped
    assert phases_from_trace(log) == [Phase(1), Phase(3, 1)]


def test_pattern_round_trip_and_errors() -> None:
    phases = [Phase(3)] * 4 + [Phase(121), Phase(2, 1), Phase(2, 1), Phase(1)]
    assert encode(phases) == "3*4,121,2/1*2,1"
    assert decode(encode(phases)) == phases
    assert updates_of("3*4,121,2/1*2,1") == 16
    for bad in ("", "3,", "0", "1/1", "3;rm -rf /", "3*0", "3*16001", "99999999"):
        with pytest.raises(ValueError):
            decode(bad)


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_each_recording_says_what_it_holds(path: Path) -> None:
    pattern, header = read_recording(path)
    phases = decode(pattern)
    assert int(header["phases"]) == len(phases)
    assert int(header["updates"]) == updates_of(pattern) == REVIEW_UPDATES[path.stem]
    assert int(header["writes"]) == sum(p.writes for p in phases)
    assert "QEMU emulator version" in header["recorded"] and header["firmware"].startswith("Debian")


@pytest.mark.kvm
@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_the_vmm_replays_each_recording_access_for_access(vmm: Path, path: Path) -> None:  # noqa: F811
    """On this machine's KVM: every recorded write and read exits to the VMM, each phase costs one delete
    and one create, and the guest finishes in step with the recording."""
    pattern, header = read_recording(path)
    code, data = run_vmm(vmm, "--pattern", pattern, "--spinners", "1", "--spin-mode", "loop", "--timeout", "60")
    assert code == 0 and data["status"] == "ok", data
    assert data["updates"] == int(header["updates"])
    assert data["mmio_write_exits"] == int(header["writes"]) and data["mmio_read_exits"] == int(header["reads"])
    assert data["update_delete_ns"]["n"] == data["update_create_ns"]["n"] == int(header["phases"])
    out = FirmwareReplayKind.parse(None, json.dumps(data, indent=1), 1.0)  # type: ignore[arg-type]
    assert out["updates"] == int(header["updates"]) and out["grace_periods"] == 3 * int(header["phases"])


@pytest.mark.kvm
def test_a_pattern_the_guest_cannot_follow_is_refused(vmm: Path) -> None:  # noqa: F811
    """A pattern whose reads would come before any write cannot be replayed: refused at the command line."""
    res = subprocess.run([str(vmm), "--pattern", "1/1", "--timeout", "20"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1 and "--pattern" in res.stderr


def test_config_reads_a_replay_workload_and_names_bad_keys(tmp_path: Path) -> None:
    rec = REPO / "vm-templates/firmware/ovmf-x86-fresh.pattern"
    cfg_path = small_config(tmp_path)
    text = cfg_path.read_text()
    cfg_path.write_text(text + f"workloads:\n  - {{name: ovmf, kind: firmware-replay, recording: {rec}}}\n")
    w = load_config(cfg_path).workloads[0]
    assert w.kind == "firmware-replay" and w.headline == "boot_s" and w.path == rec
    argv = FirmwareReplayKind.argv(w, "/tmp/x")
    assert argv[1:3] == ["--pattern", read_recording(rec)[0]] and "--timeout" in argv
    bad = tmp_path / "bad.pattern"
    bad.write_text("# phases: 1\n3;reboot\n")
    cfg_path.write_text(text + f"workloads:\n  - {{name: ovmf, kind: firmware-replay, recording: {bad}}}\n")
    with pytest.raises(ConfigError, match=re.escape("workloads[0].recording")):
        load_config(cfg_path)
    cfg_path.write_text(text + f"workloads:\n  - {{name: ovmf, kind: firmware-replay, recording: {rec}, "
                               "spin_mode: block}\n")
    with pytest.raises(ConfigError, match=re.escape("workloads[0].spin_mode")):
        load_config(cfg_path)


def test_a_failed_replay_is_the_candidates_with_its_message() -> None:
    with pytest.raises(WorkloadOutputError, match="out of step"):
        FirmwareReplayKind.parse(None, '{\n "tool": "flashvmm", "status": "guest-failed", '  # type: ignore[arg-type]
                                 '"failure": "guest out of step with the recording"}\n', 1.0)
    with pytest.raises(WorkloadOutputError, match="no flashvmm JSON"):
        FirmwareReplayKind.parse(None, "Segmentation fault\n", 1.0)  # type: ignore[arg-type]
