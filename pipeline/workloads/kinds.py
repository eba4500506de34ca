"""Workloads besides the flash VMM, as plug-ins: each kind declares its settings, how it is built,
how it runs in a booted test host and how its output becomes metrics, and which metric is its headline.

    workloads:                      # run after the flash workload, in the same booted test host
      - name: memslot-stress
        kind: kvm-selftest          # the candidate tree's own tools/testing/selftests/kvm
        test: memslot_modification_stress_test
        args: [-v, "1", -b, 16M, -i, "200"]
      - name: my-timing
        kind: command               # a script or static binary of yours, copied over SFTP
        path: vm-templates/workloads/memslot-timing.sh
        headline: elapsed_ms

Metrics are recorded as `<name>.<metric>`; the headline is compared between
candidates like the guest boot time, with its own statistics and verdict.
Kinds:

- `kvm-selftest`: built from the candidate's tree (headers installed from that
  tree, statically linked, confined like the kernel build), cached by the
  content of the parts of the tree it is built from. Output is parsed as the
  test sources print it: `memslot_perf_test` prints "Done N iterations, avg
  S.NNNNNNNNNs each" and "Best runtime result was S.NNNNNNNNNs per iteration";
  `memslot_modification_stress_test` prints no timing at all, so its metric
  is the wall time per add/remove iteration (`-i`), measured around it in the
  test host.
- `command`: stdout is one JSON object of numbers, or `key=value` lines.
- `firmware-replay`: the flash VMM replaying a recorded firmware boot's flash phases
  (`recording: vm-templates/firmware/ovmf-x86-fresh.pattern`; workloads/firmware.py).
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

from pipeline.workloads.extra import ExtraWorkload, WorkloadOutputError, common_settings, finite
from pipeline.workloads.firmware import FirmwareReplayKind
from pipeline.workloads.selftest import SelftestKind

REMOTE_DIR = "/tmp/kpipe-workloads"
# Wall time of the command in the test host, from /proc/uptime (centiseconds).
_TIMED = ('read a _ < /proc/uptime; "$@"; rc=$?; read b _ < /proc/uptime; '
          'echo "kpipe-wall-cs=$(( ${b%.*}${b#*.} - ${a%.*}${a#*.} ))" >&2; exit $rc')


# -- config ---------------------------------------------------------------------------------------

def load_workloads(r: Any, data: Any) -> tuple[ExtraWorkload, ...]:
    """Validate the `workloads:` list with the config reader `r` (errors name key and line)."""
    items = r.typed(data, "workloads", list)
    out: list[ExtraWorkload] = []
    for i, item in enumerate(items):
        p = f"workloads[{i}]"
        kind = r.typed(r.mapping(item, p, tuple(item) if isinstance(item, dict) else ()).get("kind"),
                       f"{p}.kind", str, lambda x: x in KINDS, "one of " + ", ".join(KINDS))
        name = r.typed(item.get("name", kind), f"{p}.name", str,
                       lambda x: bool(re.fullmatch(r"[A-Za-z0-9_-]{1,40}", x)) and x not in (o.name for o in out),
                       "letters, digits, '_', '-', at most 40, unique")
        out.append(KINDS[kind].settings(r, item, p, name))
    return tuple(out)


# -- command --------------------------------------------------------------------------------------

class CommandKind:
    """The command kind: a script or static binary of yours; stdout is JSON or key=value lines."""

    name = "command"
    from_candidate_tree = False  # one file for every candidate: local_file()

    @staticmethod
    def settings(r: Any, item: dict, p: str, name: str) -> ExtraWorkload:
        kw = common_settings(r, item, p, ("path", "headline", "higher_is_better"))
        if "path" not in item:
            raise r.error(p, "missing required key 'path' (the script or static binary to run in the test host)")
        path = r.existing_file(item["path"], f"{p}.path")
        headline = r.typed(item.get("headline", ""), f"{p}.headline", str,
                           lambda x: bool(re.fullmatch(r"[A-Za-z0-9_]{1,40}", x)),
                           "the metric to compare, e.g. elapsed_ms")
        better = r.typed(item.get("higher_is_better", False), f"{p}.higher_is_better", bool)
        return ExtraWorkload(name, "command", headline, path=path, lower_is_better=not better, **kw)

    @staticmethod
    def argv(w: ExtraWorkload, remote: str) -> list[str]:
        return [remote, *w.args]

    @staticmethod
    def lower_bound(w: ExtraWorkload, wall_s: float) -> dict[str, float] | None:
        return None  # what a script prints is its own: nothing is known of a stopped one

    @staticmethod
    def parse(w: ExtraWorkload, output: str, wall_s: float) -> dict[str, float]:
        values: dict[str, float] = {}
        text = output.strip()
        start = text.rfind("\n{") + 1 if "\n{" in text else (0 if text.startswith("{") else -1)
        if start >= 0:
            try:
                data = json.loads(text[start:], parse_constant=lambda c: None)
            except (ValueError, RecursionError):
                data = None
            if isinstance(data, dict):
                values = {k: f for k, v in data.items()
                          if isinstance(v, int | float) and not isinstance(v, bool) and re.fullmatch(r"\w{1,40}", k)
                          and (f := finite(v)) is not None}
        if not values:
            for line in text.splitlines():
                m = _KEY_VALUE.fullmatch(line)
                if m and (f := finite(m.group(2))) is not None:
                    values[m.group(1)] = f
        if w.headline not in values:
            raise WorkloadOutputError(f"no '{w.headline}' in the output (JSON object or key=value lines)")
        values.setdefault("wall_s", wall_s)
        return values

    @staticmethod
    def local_file(w: ExtraWorkload, cache_dir: Path) -> Path:
        """What is copied into the test host: the configured file itself."""
        assert w.path
        return w.path


_KEY_VALUE = re.compile(r"\s*(\w{1,40})\s*=\s*(-?\d{1,30}(?:\.\d{1,30})?(?:[eE][-+]?\d{1,3})?)\s*")


KINDS: dict[str, Any] = {"kvm-selftest": SelftestKind, "command": CommandKind,
                         "firmware-replay": FirmwareReplayKind}


# -- build and run --------------------------------------------------------------------------------

def run_extra(host: Any, w: ExtraWorkload, local: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """Copy the workload's file into the booted test host, run it there, parse its metrics.
    Raises WorkloadOutputError (the candidate's) or the link's own exceptions (infrastructure)."""
    remote = f"{REMOTE_DIR}/{w.name}"
    host.run(["mkdir", "-p", REMOTE_DIR], timeout=60)
    host.put(str(local), remote)
    host.run(["chmod", "755", remote], timeout=60)
    kind = KINDS[w.kind]
    argv = kind.argv(w, remote)
    # Censored: stopped at censor_s (whole seconds, as the test host's timeout takes them) when a stopped run
    # still bounds the headline; the workload's own limit otherwise.
    censor = math.ceil(w.censor_s) if 0 < w.censor_s < w.timeout_s and kind.lower_bound(w, 1.0) else 0
    t0 = time.monotonic()
    res = host.run(["sh", "-c", _TIMED, "kpipe", "timeout", "-s", "KILL", str(censor or w.timeout_s), *argv],
                   timeout=w.timeout_s + 60)
    output = (res.stdout or "") + (res.stderr or "")
    m = re.search(r"^kpipe-wall-cs=(\d+)$", output, re.M)  # timed in the test host, not over SSH
    wall = int(m.group(1)) / 100 if m else time.monotonic() - t0
    output = re.sub(r"^kpipe-wall-cs=\d+\n?", "", output, flags=re.M)
    raw = {"argv": argv, "exit_status": res.exited, "output_tail": output[-4000:], "wall_s": round(wall, 3)}
    if censor and res.exited in (124, 137) and wall >= censor - 0.05:
        raw["censored"] = True
        return kind.lower_bound(w, wall), raw
    if res.exited != 0:
        raise WorkloadOutputError(f"exited with status {res.exited}"
                                  + (" (killed at its timeout)" if res.exited in (124, 137) else ""), output[-3000:])
    try:
        values = KINDS[w.kind].parse(w, output, wall)
    except WorkloadOutputError as exc:
        raise WorkloadOutputError(str(exc), output[-3000:]) from None
    except Exception as exc:  # noqa: BLE001 - whatever the test host printed, it is the candidate's output
        raise WorkloadOutputError(f"its output cannot be read: {type(exc).__name__}: {str(exc)[:200]}",
                                  output[-3000:]) from None
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    if bad:
        raise WorkloadOutputError(f"non-finite values for {', '.join(bad[:5])}", output[-3000:])
    return values, raw
