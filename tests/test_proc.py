"""The one command wrapper: timeouts that fire even while output stays open, process groups killed."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError, InfraError
from pipeline.util.proc import CommandTimeout, run


def test_timeout_fires_while_the_command_keeps_its_output_open(tmp_path: Path) -> None:
    marker = f"sleep 30.{time.monotonic_ns() % 1000000:06d}"
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        # The shell's child keeps stdout open: a reader that waits for EOF before the timeout never returns.
        run(["sh", "-c", f"echo started; {marker}"], timeout=1, log_file=tmp_path / "log")
    assert time.monotonic() - t0 < 10
    assert isinstance(info.value, InfraError) and "started" in str(info.value)
    time.sleep(0.2)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0  # killed, group and all
    assert "$ sh -c" in (tmp_path / "log").read_text()


def test_quick_command_output_and_status(tmp_path: Path) -> None:
    res = run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False, timeout=30)
    assert res.returncode == 3 and "out" in res.output and "err" in res.output


def test_a_git_option_is_not_a_repository(tmp_path: Path) -> None:
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text('trees:\n  x:\n    git: "--upload-pack=touch pwned;"\nbaseline: b\n'
                   "candidates:\n  - {name: b, tree: x}\n")
    with pytest.raises(ConfigError, match="not an option") as info:
        load_config(cfg)
    assert info.value.path == "trees.x.git" and info.value.line == 3


def test_a_confined_build_dies_with_a_killed_pipeline(tmp_path: Path) -> None:
    """SIGKILL of the pipeline (no handler runs) still ends everything the build started."""
    import signal
    import subprocess
    import sys
    import time

    marker = f"sleep 8{os.getpid()}"
    (tmp_path / "src").mkdir()
    os.chmod(tmp_path, 0o755)
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
        "from pipeline.stages.sandbox import Sandbox; from pipeline.util.proc import run\n"
        "t = Path(sys.argv[2]); box = Sandbox(t / 'src', t / 'src' / 'build', t / 'ccache')\n"
        "box.prepare(t / 'b.owner', t / 'c.owner')\n"
        "run(box.wrap(['sh', '-c', sys.argv[3] + ' & ' + sys.argv[3] + '; wait'], {}))\n"),
        str(Path(__file__).resolve().parent.parent), str(tmp_path), marker])

    def running() -> list[str]:
        return subprocess.run(["pgrep", "-f", f"^{marker}"], capture_output=True, text=True).stdout.split()

    deadline = time.monotonic() + 30
    while len(running()) < 2:
        assert time.monotonic() < deadline and child.poll() is None, "the confined command did not start"
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(), "a confined process outlived the pipeline"


def test_a_long_step_is_never_silent_and_counts_against_the_last_clean_build() -> None:
    """Progress while building: a line every interval, with the steps compiled of the expected total."""
    import io
    import time

    from pipeline.util.progress import BuildCounter, Progress

    out = io.StringIO()
    progress = Progress(stream=out)
    counter = BuildCounter(expected=200, expected_s=60)
    with progress.heartbeat("build", "cand", "compiling", every_s=0.2, detail=counter.detail):
        for i in range(50):
            counter.line(f"  CC      kernel/f{i}.o\n")
            counter.line("make[2]: Entering directory\n")  # not a step
        time.sleep(0.7)
    lines = [x for x in out.getvalue().splitlines() if "compiling" in x]
    assert len(lines) >= 2
    assert "50 of about 200 steps (25%)" in lines[-1] and "ETA" in lines[-1]
    assert BuildCounter().detail() == "0 steps so far"
    quiet = io.StringIO()
    with Progress(stream=quiet, quiet=True).heartbeat("build", "c", "x", every_s=0.05):
        time.sleep(0.2)
    assert quiet.getvalue() == ""
