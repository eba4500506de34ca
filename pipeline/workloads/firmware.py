"""firmware: real firmware boots as flash patterns, recorded with QEMU's trace events and replayed by the
flash VMM (`flashvmm --pattern`), as the `firmware-replay` workload kind.

QEMU's pflash device is a ROM device: while it is in read-array mode it is a read-only KVM memslot;
the first command write of a sequence turns ROMD off (the memslot is deleted) and the read-array
command turns it back on (the memslot is created). A firmware boot's memslot churn is therefore fixed
by its sequence of flash command phases, which QEMU's `pflash_io_write`, `pflash_io_read` and
`pflash_mode_read_array` trace events show exactly (a TCG run: no KVM needed to record).

A recording (`vm-templates/firmware/*.pattern`) is a few comment lines saying where it came from and one
pattern line: comma-separated phases `W[/R][*N]`, W writes and R reads made in I/O mode, N repeats.

    workloads:
      - name: ovmf-fresh
        kind: firmware-replay
        recording: vm-templates/firmware/ovmf-x86-fresh.pattern

Its headline is `boot_s`, the replayed boot's wall time in the test host; `updates`, `gp_ms` (time per
expedited grace period) and `update_sum_s` come with it, so a report says what a real firmware boot
loses on each candidate, in seconds.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.workloads.extra import ExtraWorkload, WorkloadOutputError, common_settings, finite
from pipeline.workloads.flash import build_vmm
from pipeline.workloads.flash_metrics import derive_metrics

PATTERN_RE = re.compile(r"^\d{1,5}(/\d{1,5})?(\*\d{1,5})?(,\d{1,5}(/\d{1,5})?(\*\d{1,5})?)*$")
MAX_PHASES = 16000  # flashvmm's table: 64 KiB of (writes, reads) word pairs
_EVENT = re.compile(r"^(?:\d+@[\d.]+:)?(pflash_io_write|pflash_io_read|pflash_mode_read_array) (\S+):")


@dataclass(frozen=True)
class Phase:
    """One ROMD-off stretch of a flash device: the writes and reads made before read-array mode returned."""

    writes: int
    reads: int = 0


def phases_from_trace(lines: Iterable[str]) -> list[Phase]:
    """The flash command phases in a QEMU log of pflash_* trace events, in order, over every device.
    A phase opens with a write in read-array mode and closes when read-array mode returns; reads and
    writes between are counted. An unclosed phase at the end (the recording stopped mid-command) is
    dropped; a phase with reads gets at least two writes (the opening and the closing command)."""
    romd: dict[str, bool] = {}
    counts: dict[str, list[int]] = {}
    out: list[Phase] = []
    for line in lines:
        m = _EVENT.match(line)
        if not m:
            continue
        event, dev = m.group(1), m.group(2)
        on = romd.setdefault(dev, True)
        c = counts.setdefault(dev, [0, 0])
        if event == "pflash_io_write":
            romd[dev] = False
            c[0] += 1
        elif event == "pflash_io_read":
            if not on:
                c[1] += 1
        elif not on:  # read array: ROMD on again
            out.append(Phase(max(c[0], 2) if c[1] else max(c[0], 1), c[1]))
            romd[dev], counts[dev] = True, [0, 0]
    return out


def encode(phases: list[Phase]) -> str:
    """Phases as flashvmm's --pattern: runs of equal phases folded into `W/R*N`."""
    items: list[str] = []
    i = 0
    while i < len(phases):
        j = i
        while j < len(phases) and phases[j] == phases[i]:
            j += 1
        p = phases[i]
        items.append(f"{p.writes}" + (f"/{p.reads}" if p.reads else "") + (f"*{j - i}" if j - i > 1 else ""))
        i = j
    return ",".join(items)


def decode(pattern: str) -> list[Phase]:
    """The inverse of encode; ValueError names what is wrong."""
    if not PATTERN_RE.fullmatch(pattern):
        raise ValueError("not a flash pattern: comma-separated W[/R][*N] (writes, reads, repeats)")
    out: list[Phase] = []
    for item in pattern.split(","):
        head, _, times = item.partition("*")
        w, _, r = head.partition("/")
        phase = Phase(int(w), int(r or 0))
        if phase.writes < 1 or (phase.reads and phase.writes < 2) or times == "0":
            raise ValueError(f"phase {item!r}: at least one write (two when it has reads), at least once")
        out.extend([phase] * int(times or 1))
    if len(out) > MAX_PHASES:
        raise ValueError(f"{len(out)} phases, more than the VMM's {MAX_PHASES}")
    return out


def read_recording(path: Path) -> tuple[str, dict[str, str]]:
    """A .pattern file: its pattern line and its `# key: value` header."""
    header: dict[str, str] = {}
    pattern = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep:
                header[key.strip()] = value.strip()
        elif line.strip():
            if pattern:
                raise ValueError("more than one pattern line")
            pattern = line.strip()
    decode(pattern)
    return pattern, header


def updates_of(pattern: str) -> int:
    """KVM_SET_USER_MEMORY_REGION calls a replay makes: a delete and a create per phase."""
    return 2 * len(decode(pattern))


class FirmwareReplayKind:
    """The firmware-replay kind: the flash VMM replaying a recorded firmware's flash phases."""

    name = "firmware-replay"
    from_candidate_tree = False  # one file for every candidate: local_file()

    @staticmethod
    def settings(r: Any, item: dict, p: str, name: str) -> ExtraWorkload:
        kw = common_settings(r, item, p, ("recording", "spin_mode", "spinners"))
        if kw.get("args"):
            raise r.error(f"{p}.args", "firmware-replay takes no args: its recording says what it does")
        if "recording" not in item:
            raise r.error(p, "missing required key 'recording' (a vm-templates/firmware/*.pattern file)")
        path = r.existing_file(item["recording"], f"{p}.recording")
        try:
            pattern, _ = read_recording(path)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise r.error(f"{p}.recording", f"{path}: {exc}") from None
        spin = r.typed(item.get("spin_mode", "loop"), f"{p}.spin_mode", str, lambda x: x in ("loop", "io", "cpuid"),
                       "loop, io or cpuid")
        readers = r.typed(item.get("spinners", 1), f"{p}.spinners", int, lambda x: 0 <= x <= 16, "0 to 16")
        args = ("--pattern", pattern, "--spinners", str(readers), "--spin-mode", spin)
        return ExtraWorkload(name, "firmware-replay", "boot_s", path=path, **{**kw, "args": args})

    @staticmethod
    def readers(w: ExtraWorkload) -> tuple[int, str]:
        """The reader vCPUs its settings asked for (spinners, spin_mode), read back from its own args."""
        opts = dict(zip(w.args[::2], w.args[1::2], strict=True))
        return int(opts["--spinners"]), opts["--spin-mode"]

    @staticmethod
    def local_file(w: ExtraWorkload, cache_dir: Path) -> Path:
        """What is copied into the test host: the flash VMM (the pattern travels in its arguments)."""
        return build_vmm(cache_dir)

    @staticmethod
    def argv(w: ExtraWorkload, remote: str) -> list[str]:
        return [remote, *w.args, "--flash-cpu", "0", "--spinner-cpu", "1", "--timeout", str(w.timeout_s)]

    @staticmethod
    def lower_bound(w: ExtraWorkload, wall_s: float) -> dict[str, float] | None:
        return {"boot_s": wall_s}  # a stopped replay took at least that long

    @staticmethod
    def parse(w: ExtraWorkload, output: str, wall_s: float) -> dict[str, float]:
        start = output.find("{\n")
        try:
            raw = json.loads(output[start:output.rfind("}") + 1]) if start >= 0 else None
        except ValueError:
            raw = None
        if not isinstance(raw, dict) or raw.get("tool") != "flashvmm":
            raise WorkloadOutputError("no flashvmm JSON in the output")
        if raw.get("status") != "ok":
            raise WorkloadOutputError(f"the replay failed: {str(raw.get('failure'))[:200]}")
        m = derive_metrics(raw)
        keys = ("boot_s", "updates", "grace_periods", "gp_ms", "update_sum_s", "updates_over_jiffy", "host_cpu_s")
        values = {k: f for k in keys if k in m and (f := finite(m[k])) is not None}
        values["wall_s"] = wall_s
        return values
