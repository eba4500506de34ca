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
    assert BuildCounter(expected=1852).plan() == " (about 1852 steps from empty)" and BuildCounter().plan() == ""
    quiet = io.StringIO()
    with Progress(stream=quiet, quiet=True).heartbeat("build", "c", "x", every_s=0.05):
        time.sleep(0.2)
    assert quiet.getvalue() == ""


def test_on_a_terminal_a_heartbeat_redraws_one_line_with_a_bar_and_the_next_line_replaces_it() -> None:
    import io
    import time

    from pipeline.util.progress import BuildCounter, Progress

    out = io.StringIO()
    progress = Progress(stream=out, live=True)
    counter = BuildCounter(expected=100, expected_s=60)
    for i in range(50):
        counter.line(f"  CC      kernel/f{i}.o\n")
    with progress.heartbeat("build", "cand", "compiling", every_s=0.1, detail=lambda: counter.detail(bar=True)):
        time.sleep(0.35)
    progress.say("build", "cand", "built in 5 s")
    text = out.getvalue()
    beats = text.split("\r\x1b[K")
    assert len(beats) >= 3  # each heartbeat went back over the one before, and the last line over the last one
    assert "compiling: 0s, [#####.....] 50/100 steps (50%), ETA" in beats[-2] and "\n" not in beats[-2]
    assert len(beats[-2]) < 80
    assert beats[-1].endswith("built in 5 s\n") and text.count("\n") == 1
    # In a log (not a terminal) every heartbeat is a line of its own, without escape sequences or bar.
    log = io.StringIO()
    with Progress(stream=log).heartbeat("build", "cand", "compiling", every_s=0.1, detail=counter.detail):
        time.sleep(0.25)
    assert "\x1b" not in log.getvalue() and "\r" not in log.getvalue() and log.getvalue().count("\n") >= 2
    assert "#" not in log.getvalue()


def test_the_first_build_of_the_shipped_config_knows_its_total() -> None:
    """A new machine's first build has no earlier build of its config: the shipped count stands in."""
    from pipeline.config import KernelConfig
    from pipeline.stages.build import KNOWN_BUILDS
    from pipeline.stages.slots import slot_path

    frag = Path(__file__).resolve().parent.parent / "vm-templates/kernel/kvm-host.config"
    slot = slot_path(Path("/nonexistent-cache"), KernelConfig(), (frag,))
    assert (KNOWN_BUILDS / f"{slot.name}.json").is_file(), "re-record known-builds/ when the fragment changes"
