"""Benchmark: builds and boots on this machine, ours beside tuxmake and virtme-ng. Prints figures; asserts nothing.

    .venv/bin/python bench/build_boot.py [--boots N] [--peers VENV] [--work DIR]

Everything starts cold in a fresh work directory (empty ccache, empty build
directories, the git object store imported again), on Debian's linux-source-6.1
with the test-host config (tinyconfig + vm-templates/kernel/kvm-host.config).
Figures, as ratios to a plain cold `make -j<cpus> bzImage` of the same config:

  our cold build (patch stage included; ccache empty; confined)
  a candidate that changes only kernel/rcu/srcutree.c, after the baseline
  the same candidate again (identical inputs)
  `kpipe triage` of a comment-only series, from warm caches (seconds)
  tuxmake (runtime null, host gcc) cold, and after the same srcutree.c change

and boot: our QEMU start to SSH-ready (median of N) beside virtme-ng's `vng
--run <our bzImage> --exec true` where it can boot that kernel. The peers come
from a separate venv (--peers, default /var/tmp/kpipe-peers, made with `python3
-m venv /var/tmp/kpipe-peers && /var/tmp/kpipe-peers/bin/pip install tuxmake
virtme-ng`); without it their rows say so. Run nothing else beside it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.candidates import Candidate, Change, Tree  # noqa: E402
from pipeline.config import KernelConfig, TestHost  # noqa: E402
from pipeline.machines.accel import choose_accelerator  # noqa: E402
from pipeline.machines.executor import LocalExecutor  # noqa: E402
from pipeline.stages.boot import boot_test_host  # noqa: E402
from pipeline.stages.build import build_kernel  # noqa: E402
from pipeline.stages.fetch import fetch_tree  # noqa: E402
from pipeline.stages.initramfs import build_initramfs  # noqa: E402
from pipeline.stages.patch import apply_changes  # noqa: E402
from pipeline.util.gitutil import git  # noqa: E402

TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
FRAGMENT = REPO / "vm-templates/kernel/kvm-host.config"
PATCH = REPO / "patches/0001-srcu-v5.19-rc1-expedited-policy-regression.patch"
JOBS = os.cpu_count() or 1


def timed(fn):
    t0 = time.monotonic()
    value = fn()
    return value, time.monotonic() - t0


def sh(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, log: Path | None = None) -> int:
    with open(log or os.devnull, "a") as out:
        return subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, check=False).returncode


def plain_build(src: Path, out: Path, log: Path) -> None:
    """The reference: kbuild by hand, no ccache, the same config."""
    env = {"KBUILD_BUILD_TIMESTAMP": "2000-01-01", "KBUILD_BUILD_USER": "kpipe", "KBUILD_BUILD_HOST": "kpipe"}
    make = ["make", "-C", str(src), f"O={out}", f"-j{JOBS}"]
    for argv in (make + ["tinyconfig"],
                 [str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(out), str(out / ".config"),
                  str(FRAGMENT)],
                 make + ["olddefconfig"], make + ["bzImage"]):
        if sh(argv, src, env, log):
            raise SystemExit(f"reference build failed: see {log}")


def comment_only_series(fetched, dest: Path) -> Path:
    import difflib

    old = git(["show", f"{fetched.commit}:kernel/rcu/srcutree.c"], fetched.store).output.splitlines(keepends=True)
    new = list(old)
    i = next(n for n, x in enumerate(old) if x.startswith(" * Sleepable Read-Copy Update"))
    new[i] = new[i].replace("Sleepable Read-Copy Update", "Sleepable read-copy update")
    diff = "".join(difflib.unified_diff(old, new, "a/kernel/rcu/srcutree.c", "b/kernel/rcu/srcutree.c"))
    dest.write_text("From: Tidy Person <tidy@example.org>\nSubject: [PATCH] srcu: lower-case a comment\n"
                    f"Message-ID: <bench-comment@example.org>\n\nA comment only.\n---\n{diff}")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--peers", type=Path, default=Path("/var/tmp/kpipe-peers"))
    ap.add_argument("--work", type=Path, default=None, help="work directory (default: a new one in /var/tmp)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kpipe-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    cache, logs = work / "cache", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, float, str]] = []
    print(f"work directory {work}; {JOBS} CPUs; everything cold", flush=True)

    fetched, t = timed(lambda: fetch_tree(Tree("debian-6.1", tarball=TARBALL), cache))
    print(f"import of linux-source-6.1 into git: {t:.0f} s (once per tarball)", flush=True)
    src = work / "plain-src"
    git(["worktree", "add", "--quiet", "--detach", str(src), fetched.commit], fetched.store)

    _, ref = timed(lambda: plain_build(src, work / "plain-build", logs / "plain.log"))
    rows.append(("plain make, cold (the reference)", ref, ""))
    print(f"reference: plain make -j{JOBS} bzImage, cold: {ref:.0f} s", flush=True)

    kernel = KernelConfig()

    def ours(name: str, changes: tuple[Change, ...]):
        t0 = time.monotonic()
        patched = apply_changes(Candidate(name, "debian-6.1", changes), fetched)
        art = build_kernel(patched, kernel, (FRAGMENT,), cache, logs / f"{name}.log")
        return art, time.monotonic() - t0, patched.seconds

    base, t, p = ours("base", ())
    rows.append(("kpipe: cold build (ccache empty, confined)", t, f"patch {p:.2f} s"))
    print(f"kpipe cold: {t:.0f} s", flush=True)
    one = (Change("patch", PATCH.name, PATCH),)
    regr, t, p = ours("regression", one)
    rows.append(("kpipe: srcutree.c-only candidate after it", t, f"patch {p:.2f} s, in place {regr.in_place}"))
    again, t, p = ours("regression", one)
    rows.append(("kpipe: the same candidate again", t, f"cached {again.cached}"))

    cfg = work / "triage.yaml"
    cfg.write_text(f"trees:\n  debian-6.1: {{tarball: {TARBALL}}}\nbaseline: base\n"
                   f"candidates:\n  - {{name: base, tree: debian-6.1}}\nkernel: {{fragments: [{FRAGMENT}]}}\n"
                   f"runs_dir: {work / 'runs'}\nreport: {{dir: {work / 'reports'}}}\n")
    mbox = comment_only_series(fetched, work / "comment.mbox")
    t0 = time.monotonic()
    rc = sh([sys.executable, "-m", "pipeline", "triage", str(mbox), "-c", str(cfg)], REPO,
            {"KPIPE_CACHE_DIR": str(cache)}, logs / "triage.log")
    rows.append(("kpipe triage: comment-only series, warm caches", time.monotonic() - t0, f"exit code {rc}"))

    tux = args.peers / "bin" / "tuxmake"
    if tux.exists():
        tb = work / "tux-build"
        argv = [str(tux), "--runtime", "null", "--target-arch", "x86_64", "--toolchain", "gcc", "--jobs", str(JOBS),
                "--kconfig", "tinyconfig", "--kconfig-add", str(FRAGMENT), "--directory", str(src),
                "--build-dir", str(tb), "--output-dir", str(work / "tux-out"), "config", "kernel"]
        t0 = time.monotonic()
        rc = sh(argv, src, None, logs / "tuxmake-cold.log")
        rows.append(("tuxmake: cold", time.monotonic() - t0, f"exit code {rc}"))
        sh(["git", "apply", str(PATCH)], src)  # the same srcutree.c change, in its source tree
        t0 = time.monotonic()
        rc = sh(argv, src, None, logs / "tuxmake-one-file.log")
        rows.append(("tuxmake: after the srcutree.c change", time.monotonic() - t0, f"exit code {rc}"))
    else:
        rows.append(("tuxmake: not installed", float("nan"), f"no {tux}"))

    print(f"\n{'build':<50} {'seconds':>8} {'x cold make':>11}")
    for label, secs, note in rows:
        print(f"{label:<50} {secs:8.1f} {secs / ref:11.3f}  {note}")

    initramfs = build_initramfs(REPO / "vm-templates/initramfs/recipe.yaml", cache)
    host = TestHost(REPO / "vm-templates/qemu/x86_64.cmd.j2", REPO / "vm-templates/initramfs/recipe.yaml")
    accel = choose_accelerator("auto")
    times = []
    for i in range(args.boots):
        t0 = time.monotonic()
        with boot_test_host(LocalExecutor(), base, initramfs, host, (), logs, f"boot{i}", accel):
            times.append(time.monotonic() - t0)
    print(f"\n{'boot (' + accel.name + ')':<50} {'median':>8}  all")
    print(f"{'kpipe: QEMU start to SSH-ready':<50} {statistics.median(times):8.2f}  "
          f"{', '.join(f'{x:.2f}' for x in times)}")
    vng = args.peers / "bin" / "vng"
    if vng.exists():
        vt, out = [], ""
        for _ in range(args.boots):
            t0 = time.monotonic()
            argv = [str(vng), *(["--disable-kvm"] if accel.name == "tcg" else []), "--verbose", "--run",
                    str(base.bzimage), "--exec", "true"]
            res = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
                                 check=False, env={**os.environ, "PATH": f"{vng.parent}:{os.environ['PATH']}"})
            text = res.stdout + res.stderr
            if res.returncode != 0 or "Kernel panic" in text:
                out = [ln for ln in text.splitlines() if "panic" in ln.lower() or "error" in ln.lower()][:2] \
                    or text.strip().splitlines()[-3:]
                break
            vt.append(time.monotonic() - t0)
        if vt:
            print(f"{'virtme-ng: vng --run <our kernel> --exec true':<50} {statistics.median(vt):8.2f}  "
                  f"{', '.join(f'{x:.2f}' for x in vt)}")
        else:
            print(f"virtme-ng cannot boot our kernel: {' / '.join(out)}")
    git(["worktree", "remove", "--force", str(src)], fetched.store)
    shutil.rmtree(work / "plain-build", ignore_errors=True)
    print(f"\nlogs in {logs}")


if __name__ == "__main__":
    main()
