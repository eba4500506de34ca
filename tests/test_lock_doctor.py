"""The cache lock and the missing-tool checks, for real: a second process, a PATH without QEMU."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.doctor import TOOLS
from pipeline.errors import InfraError
from pipeline.util.lock import cache_lock

REPO = Path(__file__).resolve().parent.parent


def test_second_holder_is_told_who_holds_the_cache(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; from pipeline.util.lock import cache_lock\n"
        "with cache_lock(Path(sys.argv[2]), 'run first'):\n"
        "    print('locked', flush=True); time.sleep(30)"), str(REPO), str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "locked"
        with pytest.raises(InfraError) as info:
            with cache_lock(tmp_path, "run second", wait=False):
                pass
        assert f"pid {holder.pid}" in str(info.value) and "run first" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    t0 = time.monotonic()
    with cache_lock(tmp_path, "run second", wait=True):  # free again once the holder is gone
        assert (tmp_path / "lock").read_text().startswith(f"pid {os.getpid()}")
    assert time.monotonic() - t0 < 30


def test_missing_qemu_is_refused_early_with_the_install_command(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in list(TOOLS) + ["python3", "env", "sh"]:
        if tool.startswith("/") or tool == "qemu-system-x86_64":
            continue
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    cfg = REPO / "pipeline.yaml"
    if not Path("/usr/src/linux-source-6.1.tar.xz").exists():
        pytest.skip("the default config needs linux-source-6.1")
    runs = REPO / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    old = os.environ["PATH"]
    os.environ["PATH"] = str(bindir)
    try:
        assert main(["doctor", "-c", str(cfg)]) == 70
        out = capsys.readouterr().out
        assert "qemu-system-x86_64: missing; apt-get install qemu-system-x86" in out
        assert main(["run", "-c", str(cfg)]) == 70
        err = capsys.readouterr().err
        assert "apt-get install qemu-system-x86" in err
    finally:
        os.environ["PATH"] = old
    assert (set(runs.iterdir()) if runs.exists() else set()) == before  # refused before any run folder


def test_resume_waiting_for_the_lock_reads_the_run_only_once_it_holds_it(small_repo: Path, tmp_path: Path) -> None:
    """A resume that has to wait must not write back the copy it read before waiting."""
    import json

    cache = tmp_path / "cache"
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"trees: {{s: {{git: {small_repo}}}}}\nbaseline: base\ncandidates: [{{name: base, tree: s}}]\n")
    run_dir = tmp_path / "runs" / "20260101-000000-abcd"
    run_dir.mkdir(parents=True)
    # A run whose only candidate already failed: resuming it has nothing to build or measure.
    (run_dir / "results.json").write_text(json.dumps({
        "run_id": run_dir.name, "status": "interrupted", "baseline": "base", "candidate_order": ["base"],
        "candidates": {"base": {"name": "base", "status": "build-failed", "stages": {}, "runs": [],
                                "warmup_runs": []}}}))
    env = {**os.environ, "KPIPE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    with cache_lock(cache, "holder"):
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "-c", str(cfg), "--resume", str(run_dir)],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout
        line = proc.stdout.readline()
        assert "waiting for the cache" in line, line
        data = json.loads((run_dir / "results.json").read_text())
        data["candidates"]["base"]["written_while_waiting"] = True  # what the lock holder adds meanwhile
        (run_dir / "results.json").write_text(json.dumps(data))
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode in (0, 4), out
    final = json.loads((run_dir / "results.json").read_text())
    assert final["candidates"]["base"].get("written_while_waiting") is True, "the resume wrote a stale copy"
    assert final["status"] == "finished"
