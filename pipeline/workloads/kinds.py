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
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.util.gitutil import git

SELFTESTS = {  # test -> headline metric
    "memslot_modification_stress_test": "iteration_ms",
    "memslot_perf_test": "best_iteration_ms",
}
# Each test's getopt string in 6.1 (a letter followed by ':' takes a value), and the options whose value
# must be a whole number: checked at load, so a typo fails with its key and line, not after every build.
SELFTEST_OPTIONS = {
    "memslot_modification_stress_test": ("hm:d:b:v:oi:", "dvi"),
    "memslot_perf_test": ("hvds:f:e:l:r:", "sfelr"),
}
REMOTE_DIR = "/tmp/kpipe-workloads"
_DONE = re.compile(r"Done (\d+) iterations, avg (\d+)\.(\d{9})s each")
_BEST = re.compile(r"Best runtime result was (\d+)\.(\d{9})s per iteration \(with (\d+) iterations\)")
_SETUP = re.compile(r"Best slot setup time for the whole test area was (\d+)\.(\d{9})s")
# Wall time of the command in the test host, from /proc/uptime (centiseconds).
_TIMED = ('read a _ < /proc/uptime; "$@"; rc=$?; read b _ < /proc/uptime; '
          'echo "kpipe-wall-cs=$(( ${b%.*}${b#*.} - ${a%.*}${a#*.} ))" >&2; exit $rc')
_ARG_RE = re.compile(r"^[A-Za-z0-9_.,:=+\-/]{1,64}$")


@dataclass(frozen=True)
class ExtraWorkload:
    name: str
    kind: str
    headline: str
    timeout_s: int = 600
    test: str = ""  # kvm-selftest
    args: tuple[str, ...] = ()
    path: Path | None = None  # command
    lower_is_better: bool = True
    # Set per run by the runner (repetitions.censor_factor), never by a config: > 0 stops the workload after
    # this long when its kind can read a lower bound from that (a censored run of this workload).
    censor_s: float = 0.0

    def metric(self, m: str) -> str:
        return f"{self.name}.{m}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "headline": self.metric(self.headline), "test": self.test,
                "args": list(self.args), "path": str(self.path) if self.path else "", "timeout_s": self.timeout_s}


class WorkloadOutputError(Exception):
    """The workload failed or its output could not be read as metrics (the candidate's, not retried)."""

    def __init__(self, message: str, output: str = ""):
        self.output = output
        super().__init__(message)


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


def _common(r: Any, item: dict, p: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    m = r.mapping(item, p, ("kind", "name", "timeout_s", "args", *allowed))
    kw: dict[str, Any] = {}
    if "timeout_s" in m:
        kw["timeout_s"] = r.typed(m["timeout_s"], f"{p}.timeout_s", int, lambda x: 1 <= x <= 86400, "1 to 86400")
    if "args" in m:
        args = r.typed(m["args"], f"{p}.args", list)
        kw["args"] = tuple(r.typed(a, f"{p}.args[{j}]", str, lambda x: bool(_ARG_RE.match(x)),
                                   "a word of letters, digits and _.,:=+-/") for j, a in enumerate(args))
    return kw


# -- kvm-selftest ---------------------------------------------------------------------------------

class SelftestKind:
    name = "kvm-selftest"

    @staticmethod
    def settings(r: Any, item: dict, p: str, name: str) -> ExtraWorkload:
        kw = _common(r, item, p, ("test",))
        test = r.typed(item.get("test", "memslot_modification_stress_test"), f"{p}.test", str,
                       lambda x: x in SELFTESTS, "one of " + ", ".join(SELFTESTS))
        kw.setdefault("args", ("-v", "1", "-b", "16M", "-i", "200") if test.startswith("memslot_mod")
                      # test 3, "move active area": each iteration moves a memslot the vCPU is using. The
                      # map and unmap tests need madvise(), which the tinyconfig test host leaves out.
                      else ("-f", "3", "-e", "3", "-l", "2", "-r", "1", "-s", "256"))
        _check_selftest_args(r, f"{p}.args", test, kw["args"])
        return ExtraWorkload(name, "kvm-selftest", SELFTESTS[test], test=test, **kw)

    @staticmethod
    def key(w: ExtraWorkload, store: Path, commit: str, compiler: str) -> str:
        """What the selftest binary depends on: the tree's tools/ and UAPI headers, and the compiler."""
        h = hashlib.sha256(f"selftest-2\0{w.test}\0{compiler}\0".encode())
        # Everything headers_install and the selftests' make read: the generated syscall headers come from
        # arch/x86/entry/syscalls, the install rules from usr/ and scripts/.
        for sub in ("tools", "include/uapi", "arch/x86/include/uapi", "arch/x86/entry/syscalls", "usr", "scripts",
                    "Makefile", "arch/x86/Makefile"):
            h.update(git(["rev-parse", f"{commit}:{sub}"], store).output.strip().encode() + b"\0")
        return h.hexdigest()

    @staticmethod
    def build_argv(w: ExtraWorkload, src: Path, out: Path) -> list[list[str]]:
        """make steps, run in the kernel's build slot (src = the source as the build sees it)."""
        build = src / "build"
        return [
            ["make", "-C", str(src), "O=build", "-s", "headers_install"],
            ["make", "-C", str(src / "tools/testing/selftests/kvm"), f"OUTPUT={out}",
             f"KHDR_INCLUDES=-isystem {build}/usr/include", f"INSTALL_HDR_PATH={build}/usr",
             "LDFLAGS=-static -pthread -no-pie", f"{out}/{w.test}"],
        ]

    @staticmethod
    def argv(w: ExtraWorkload, remote: str) -> list[str]:
        return [remote, *w.args]

    @staticmethod
    def lower_bound(w: ExtraWorkload, wall_s: float) -> dict[str, float] | None:
        """The metrics a run stopped after `wall_s` is known to exceed: the stress test's headline is its wall
        time per iteration, so it is at least this; the perf test's best iteration has no such bound."""
        if w.test != "memslot_modification_stress_test":
            return None
        iterations = int(w.args[w.args.index("-i") + 1]) if "-i" in w.args else 1
        return {"iteration_ms": 1000.0 * wall_s / iterations, "wall_s": wall_s, "iterations": iterations}

    @staticmethod
    def parse(w: ExtraWorkload, output: str, wall_s: float) -> dict[str, float]:
        if w.test == "memslot_modification_stress_test":
            if "All vCPU threads joined" not in output:
                raise WorkloadOutputError("the stress test did not report 'All vCPU threads joined'")
            iterations = int(w.args[w.args.index("-i") + 1]) if "-i" in w.args else 1
            return {"iteration_ms": 1000.0 * wall_s / iterations, "wall_s": wall_s, "iterations": iterations}
        best = _BEST.search(output)
        if not best:
            raise WorkloadOutputError("no 'Best runtime result was ...' line")
        out = {"best_iteration_ms": 1000.0 * (int(best.group(1)) + int(best.group(2)) / 1e9),
               "best_iterations": float(best.group(3)), "wall_s": wall_s}
        done = _DONE.search(output)
        if done:
            out["avg_iteration_ms"] = 1000.0 * (int(done.group(2)) + int(done.group(3)) / 1e9)
        setup = _SETUP.search(output)
        if setup:
            out["setup_ms"] = 1000.0 * (int(setup.group(1)) + int(setup.group(2)) / 1e9)
        return out


def _check_selftest_args(r: Any, p: str, test: str, args: tuple[str, ...]) -> None:
    """The args as the test's getopt would read them: known options, a value where one is needed."""
    spec, numeric = SELFTEST_OPTIONS[test]
    takes = {c for i, c in enumerate(spec) if c != ":" and spec[i + 1: i + 2] == ":"}
    known = {c for c in spec if c != ":"}
    i = 0
    while i < len(args):
        a = args[i]
        if not re.fullmatch(r"-[A-Za-z]", a) or a[1] not in known:
            raise r.error(f"{p}[{i}]", f"{a!r} is not an option of {test} (options: "
                          + " ".join(f"-{c}" + (" N" if c in takes else "") for c in sorted(known)) + ")")
        if a[1] in takes:
            if i + 1 >= len(args) or re.fullmatch(r"-[A-Za-z]", args[i + 1]):
                raise r.error(f"{p}[{i}]", f"{a} needs a value")
            if a[1] in numeric and not re.fullmatch(r"[0-9]{1,9}", args[i + 1]):
                raise r.error(f"{p}[{i + 1}]", f"{a} takes a whole number, not {args[i + 1]!r}")
            if a == "-i" and int(args[i + 1]) < 1:
                raise r.error(f"{p}[{i + 1}]", "-i takes at least 1 (the iterations the time is divided by)")
            i += 2
        else:
            i += 1


# -- command --------------------------------------------------------------------------------------

class CommandKind:
    name = "command"

    @staticmethod
    def settings(r: Any, item: dict, p: str, name: str) -> ExtraWorkload:
        kw = _common(r, item, p, ("path", "headline", "higher_is_better"))
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
                          and (f := _finite(v)) is not None}
        if not values:
            for line in text.splitlines():
                m = _KEY_VALUE.fullmatch(line)
                if m and (f := _finite(m.group(2))) is not None:
                    values[m.group(1)] = f
        if w.headline not in values:
            raise WorkloadOutputError(f"no '{w.headline}' in the output (JSON object or key=value lines)")
        values.setdefault("wall_s", wall_s)
        return values


_KEY_VALUE = re.compile(r"\s*(\w{1,40})\s*=\s*(-?\d{1,30}(?:\.\d{1,30})?(?:[eE][-+]?\d{1,3})?)\s*")


def _finite(v: Any) -> float | None:
    """v as a finite float, or None (a version string, a 400-digit number, NaN: not a metric)."""
    try:
        f = float(v)
    except (ValueError, OverflowError, TypeError):
        return None
    return f if math.isfinite(f) else None


KINDS: dict[str, Any] = {"kvm-selftest": SelftestKind, "command": CommandKind}


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
