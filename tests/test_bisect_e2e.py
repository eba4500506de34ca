"""A real bisection: a history of 8 commits built on the imported 6.1 tree, one bringing back the
regression (patches/0001), one that does not build (fixed by the next); builds, boots, measures."""
from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest
from conftest import REPO, TARBALL, small_config

from pipeline.candidates import Candidate, Change
from pipeline.config import load_config
from pipeline.flows.bisect import Bisector
from pipeline.flows.bisect_report import write_report
from pipeline.stages.patch import apply_changes
from pipeline.util.gitutil import git

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TARBALL.exists(), reason="apt-get install linux-source-6.1")]


def _edit(files: dict[str, list[str]], path: str, new: list[str], out: Path) -> Path:
    out.write_text("".join(difflib.unified_diff(files[path], new, f"a/{path}", f"b/{path}")))
    files[path] = new
    return out


def test_bisection_names_the_regressing_commit_and_skips_the_broken_one(fetched, built_kernel, e2e_cache: Path,
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPIPE_CACHE_DIR", str(e2e_cache))  # the history below is made in this cache's store
    def show(path: str) -> list[str]:
        return git(["show", f"{fetched.commit}:{path}"], fetched.store).output.splitlines(keepends=True)

    files = {p: show(p) for p in ("README", "kernel/rcu/srcutree.c")}
    def readme(i: int) -> Path:  # documentation only: the kernel image stays the good end's
        lines = files["README"]
        return _edit(files, "README", lines[:-1] + [f"kpipe bisect test {i}\n"] + lines[-1:], tmp_path / f"{i}.diff")

    patches = [readme(i) for i in range(1, 4)]
    src = files["kernel/rcu/srcutree.c"]
    patches.append(_edit(files, "kernel/rcu/srcutree.c", src[:1] + ["#error kpipe-bisect-broken\n"] + src[1:],
                         tmp_path / "4-broken.diff"))
    patches.append(_edit(files, "kernel/rcu/srcutree.c", src, tmp_path / "5-fix.diff"))
    patches.append(REPO / "patches/0001-srcu-v5.19-rc1-expedited-policy-regression.patch")
    patches += [readme(7), readme(8)]
    history = apply_changes(Candidate("history", "debian-6.1", tuple(Change("patch", p.name, p) for p in patches)),
                            fetched)
    commits = [c for a in history.applied for c in a.commits]
    assert len(commits) == 8

    cfg = load_config(small_config(tmp_path, cycles=300, counted=3))
    result = Bisector(cfg, "debian-6.1", fetched.commit, commits[-1], start_rounds=3, max_rounds=5,
                      folder=tmp_path / "bisect").run()
    steps = {s.commit: s for s in result.steps}
    assert result.status == "found" and result.first_bad == commits[5], [(s.commit[:8], s.outcome, s.note)
                                                                        for s in result.steps]
    assert steps[commits[3]].outcome == "skip" and "build" in steps[commits[3]].note
    assert len(result.steps) <= 6  # the ends plus at most log2(8) + the skip's neighbour
    out = write_report(result, tmp_path / "reports")
    text = (out / "bisect.txt").read_text()
    assert f"first bad commit: {commits[5][:12]}" in text
    assert "srcu: bring back the v5.19-rc1" in (out / "index.html").read_text()
    assert json.loads((out / "bisect.json").read_text())["first_bad"] == commits[5]
    for s in result.steps:
        print(f"{s.commit[:12]} {s.outcome:<5} {s.seconds:6.0f} s (build {s.build_seconds:.0f} s) {s.note}")
