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
from pipeline.lock import cache_lock

REPO = Path(__file__).resolve().parent.parent


def test_second_holder_is_told_who_holds_the_cache(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; from pipeline.lock import cache_lock\n"
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
