"""The kvm-selftest kind: the candidate tree's own tools/testing/selftests/kvm, built statically from that
tree (confined like the kernel build), cached by the content of what it is built from, and read as the
tests print their results."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from pipeline.util.gitutil import git
from pipeline.workloads.extra import ExtraWorkload, WorkloadOutputError, common_settings

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
_DONE = re.compile(r"Done (\d+) iterations, avg (\d+)\.(\d{9})s each")
_BEST = re.compile(r"Best runtime result was (\d+)\.(\d{9})s per iteration \(with (\d+) iterations\)")
_SETUP = re.compile(r"Best slot setup time for the whole test area was (\d+)\.(\d{9})s")



class SelftestKind:
    """The kvm-selftest kind: one of the candidate tree's KVM selftests, built from that tree."""

    name = "kvm-selftest"
    from_candidate_tree = True  # built from each candidate's patched tree (run/prepare.py), not a file of the config's

    @staticmethod
    def settings(r: Any, item: dict, p: str, name: str) -> ExtraWorkload:
        kw = common_settings(r, item, p, ("test",))
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
