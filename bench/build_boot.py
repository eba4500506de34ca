"""Benchmark: kernel build and test-host boot times on this machine. Prints figures; asserts nothing.

    .venv/bin/python bench/build_boot.py [--cache DIR] [--cold] [--boots N]

--cold uses an empty cache (a fresh ccache: about 5 minutes on 2 cores).
Figures: cold (or cached-ccache) build of the baseline, the build of a second
candidate that changes only kernel/rcu/srcutree.c, a rerun with identical
inputs, and QEMU start to SSH-ready.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.boot import boot_test_host  # noqa: E402
from pipeline.build import build_kernel  # noqa: E402
from pipeline.config import Candidate, Change, KernelConfig, TestHost, Tree  # noqa: E402
from pipeline.executor import LocalExecutor  # noqa: E402
from pipeline.fetch import checkout_worktree, fetch_tree  # noqa: E402
from pipeline.initramfs import build_initramfs  # noqa: E402
from pipeline.machines import choose_accelerator  # noqa: E402
from pipeline.patch import apply_changes  # noqa: E402

TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
FRAGMENT = REPO / "vm-templates/kernel/kvm-host.config"
PATCH = REPO / "patches/0001-srcu-v5.19-rc1-expedited-policy-regression.patch"


def timed(label: str, fn):
    t0 = time.monotonic()
    value = fn()
    print(f"{label:<52} {time.monotonic() - t0:8.1f} s", flush=True)
    return value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--boots", type=int, default=3)
    args = ap.parse_args()
    # Builds always start from empty build dirs and an empty artifact cache; without --cold
    # the git object store and ccache of --cache (default ~/.cache/kpipe) are shared.
    cache = Path(tempfile.mkdtemp(prefix="kpipe-bench-"))
    shared = args.cache or Path.home() / ".cache" / "kpipe"
    if not args.cold:
        for part in ("git", "ccache"):
            if (shared / part).exists():
                (cache / part).symlink_to(shared / part)
    print(f"cache: {cache} ({'cold' if args.cold else f'git store and ccache from {shared}'})")
    fetched = timed("fetch (import or reuse linux-source-6.1)", lambda: fetch_tree(Tree("d", tarball=TARBALL), cache))
    logs = Path(tempfile.mkdtemp(prefix="kpipe-bench-logs-"))

    def build(name: str, changes: tuple[Change, ...]):
        wt = checkout_worktree(fetched, f"bench-{name}", cache)
        patched = apply_changes(Candidate(f"bench-{name}", "d", changes), wt)
        return build_kernel(patched, KernelConfig(make_jobs=0, base="tinyconfig"), (FRAGMENT,), cache,
                            logs / f"{name}.log")

    base = timed("build baseline (ccache " + ("cold" if args.cold else "as found") + ")", lambda: build("base", ()))
    print(f"  cached artifacts reused: {base.cached}")
    regr = timed("build 2nd candidate (srcutree.c only, warm ccache)",
                 lambda: build("regr", (Change("patch", PATCH.name, PATCH),)))
    print(f"  cached artifacts reused: {regr.cached}")
    again = timed("rerun with identical inputs", lambda: build("regr", (Change("patch", PATCH.name, PATCH),)))
    print(f"  cached artifacts reused: {again.cached}")
    initramfs = build_initramfs(REPO / "vm-templates/initramfs/recipe.yaml", cache)
    host = TestHost(REPO / "vm-templates/qemu/x86_64.cmd.j2", REPO / "vm-templates/initramfs/recipe.yaml")
    accel = choose_accelerator("auto")
    print(f"accelerator: {accel.reason}")
    times = []
    for i in range(args.boots):
        t0 = time.monotonic()
        with boot_test_host(LocalExecutor(), base, initramfs, host, (), logs, f"boot{i}", accel):
            times.append(time.monotonic() - t0)
    print(f"{'QEMU start to SSH-ready, median of ' + str(len(times)):<52} {statistics.median(times):8.1f} s "
          f"(all: {', '.join(f'{t:.1f}' for t in times)})")
    for wt in (cache / "worktrees").iterdir():  # 1.5 GB each
        shutil.rmtree(wt, ignore_errors=True)
    git_store = cache / "git"
    if git_store.is_symlink():
        from pipeline.gitutil import git
        git(["worktree", "prune"], git_store.resolve() / "store.git")


if __name__ == "__main__":
    main()
