"""A real bisection to watch: 8 commits on Debian's 6.1 tree, one of them the regression. Prints the log.

    .venv/bin/python bench/bisect_demo.py [--cycles 600] [--reports reports]

The history (made in the cache's object store, nothing checked out): three
documentation-only commits, one that does not build, its fix, patches/0001
(the v5.19-rc1 SRCU policy: the regression), two more documentation commits.
Then `kpipe bisect --good <the import> --bad <the last commit>` with the
default config's kernel and test host, the flash workload at --cycles, and
no second workload. Expected: commit 6 is the first bad one, commit 4 is
skipped, documentation-only steps are recognised as binary-identical.
"""
from __future__ import annotations

import argparse
import difflib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.candidates import Candidate, Change, Tree  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.stages.fetch import fetch_tree  # noqa: E402
from pipeline.stages.patch import apply_changes  # noqa: E402
from pipeline.util.gitutil import git  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=600)
    ap.add_argument("--reports", default=str(REPO / "reports"))
    args = ap.parse_args()
    cfg = load_config(REPO / "pipeline.yaml")
    fetched = fetch_tree(Tree("debian-6.1", tarball=Path("/usr/src/linux-source-6.1.tar.xz")), cfg.cache_dir)
    work = Path(tempfile.mkdtemp(prefix="kpipe-bisect-demo-"))
    files = {p: git(["show", f"{fetched.commit}:{p}"], fetched.store).output.splitlines(keepends=True)
             for p in ("README", "kernel/rcu/srcutree.c")}

    def edit(path: str, new: list[str], name: str) -> Path:
        out = work / name
        out.write_text("".join(difflib.unified_diff(files[path], new, f"a/{path}", f"b/{path}")))
        files[path] = new
        return out

    def readme(i: int) -> Path:
        return edit("README", files["README"][:-1] + [f"bisect demo {i}\n"] + files["README"][-1:], f"{i}.diff")

    src = list(files["kernel/rcu/srcutree.c"])
    patches = [readme(1), readme(2), readme(3),
               edit("kernel/rcu/srcutree.c", src[:1] + ["#error bisect-demo-broken\n"] + src[1:], "4-broken.diff"),
               edit("kernel/rcu/srcutree.c", src, "5-fix.diff"),
               REPO / "patches/0001-srcu-v5.19-rc1-expedited-policy-regression.patch", readme(7), readme(8)]
    history = apply_changes(Candidate("h", "debian-6.1", tuple(Change("patch", p.name, p) for p in patches)), fetched)
    commits = [c for a in history.applied for c in a.commits]
    subjects = [s for change in history.applied for s in change.subjects]
    for i, (c, subject) in enumerate(zip(commits, subjects, strict=True), 1):
        print(f"{i}: {c[:12]} {subject}")
    demo = work / "pipeline.yaml"
    text = (REPO / "pipeline.yaml").read_text()
    start, end = text.index("candidates:"), text.index("\nkernel:")
    text = text[:start] + "candidates:\n  - {name: baseline, tree: debian-6.1}\n" + text[end:]
    text = text.replace("  cycles: 3100", f"  cycles: {args.cycles}")
    text = text[:text.index("\nworkloads:")] + text[text.index("\nrepetitions:"):]
    text = text.replace("  dir: reports\n", f"  dir: {args.reports}\n")
    demo.write_text(text.replace("vm-templates/", f"{REPO}/vm-templates/"))
    t0 = time.monotonic()
    rc = subprocess.run([sys.executable, "-m", "pipeline", "bisect", "-c", str(demo), "--good", fetched.commit,
                         "--bad", commits[-1]], cwd=work,
                        env={**os.environ, "KPIPE_CACHE_DIR": str(cfg.cache_dir)}, check=False).returncode
    print(f"bisect: exit {rc} in {time.monotonic() - t0:.0f} s; expected first bad commit {commits[5][:12]}")


if __name__ == "__main__":
    main()
