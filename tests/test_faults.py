"""Faults injected for real into real runs: SIGTERM mid-build and mid-workload then --resume,
QEMU killed mid-workload, the test host's SSH server killed. After each: the right status,
what was measured is kept, and no QEMU or make process is left behind."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fabric
import pytest
from conftest import FRAGMENT, REPO, TARBALL, qemu_pids, small_config

from pipeline import exitcodes
from pipeline.config import KernelConfig
from pipeline.stages.slots import slot_path

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not TARBALL.exists(), reason="apt-get install linux-source-6.1 (./setup.sh)")]


def start_run(cfg: Path, cache: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "KPIPE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", "-c", str(cfg), *extra], cwd=cfg.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def results_of(tmp_path: Path) -> tuple[Path, dict]:
    run_dir = next((tmp_path / "runs").iterdir())
    return run_dir, json.loads((run_dir / "results.json").read_text())


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def no_new_qemu(before: set[int]) -> None:
    wait_for(lambda: not (qemu_pids() - before), 15, "QEMU processes to end")


def counted(tmp_path: Path, name: str) -> int:
    try:
        return len(results_of(tmp_path)[1]["candidates"][name]["runs"])
    except (StopIteration, json.JSONDecodeError, KeyError, FileNotFoundError):
        return 0


def test_sigterm_mid_workload_then_resume_keeps_every_counted_run(built_kernel, e2e_cache: Path,
                                                                   tmp_path: Path) -> None:
    before = qemu_pids()
    cfg = small_config(tmp_path, "  - {name: params, tree: debian-6.1, changes: "
                                 "[{cmdline: srcutree.srcu_max_nodelay_phase=1}]}", cycles=3000, counted=3)
    proc = start_run(cfg, e2e_cache)
    wait_for(lambda: counted(tmp_path, "params") >= 1, 400, "a first counted run of each candidate")
    time.sleep(4)  # into the next boot or workload
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 70, out
    no_new_qemu(before)
    run_dir, res = results_of(tmp_path)
    assert res["status"] == "interrupted" and "--resume" in res["status_detail"]
    kept = {n: list(c["runs"]) for n, c in res["candidates"].items()}
    assert sum(len(v) for v in kept.values()) >= 2
    proc = start_run(cfg, e2e_cache, "--resume", str(run_dir))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode in exitcodes.MEASURED, out
    no_new_qemu(before)
    _, res = results_of(tmp_path)
    assert res["status"] == "finished" and res["resumed"]
    for name, runs in kept.items():
        final = res["candidates"][name]["runs"]
        assert len(final) == 3
        assert final[: len(runs)] == runs  # nothing measured before the SIGTERM was lost or redone
        assert sorted(r["round"] for r in final) == [0, 1, 2]


def test_sigkill_of_the_pipeline_takes_qemu_down_and_resume_finishes(built_kernel, e2e_cache: Path,
                                                                     tmp_path: Path) -> None:
    """SIGKILL runs no cleanup code at all: the parent-death signal must still end QEMU."""
    before = qemu_pids()
    cfg = small_config(tmp_path, "", cycles=3000, counted=3)
    proc = start_run(cfg, e2e_cache)
    wait_for(lambda: counted(tmp_path, "base") >= 1, 400, "a first counted run")
    wait_for(lambda: bool(qemu_pids() - before), 120, "the next test host")
    proc.kill()
    proc.communicate(timeout=30)
    no_new_qemu(before)
    run_dir, res = results_of(tmp_path)
    assert res["status"] == "running"  # nobody could write "interrupted"
    kept = list(res["candidates"]["base"]["runs"])
    proc = start_run(cfg, e2e_cache, "--resume", run_dir.name)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    _, res = results_of(tmp_path)
    assert res["status"] == "finished"
    assert res["candidates"]["base"]["runs"][: len(kept)] == kept
    assert len(res["candidates"]["base"]["runs"]) == 3


def test_sigterm_mid_build_then_resume(built_kernel, e2e_cache: Path, tmp_path: Path) -> None:
    before = qemu_pids()
    frag = tmp_path / "localversion.config"
    frag.write_text(f'CONFIG_LOCALVERSION="-fault{os.getpid()}"\n')  # a build nobody has cached
    # A config of its own: a build slot of its own, empty, so the build takes long enough to be interrupted.
    slot = slot_path(e2e_cache, KernelConfig(), (FRAGMENT, frag))
    try:
        _sigterm_mid_build_then_resume(before, frag, e2e_cache, tmp_path)
    finally:
        shutil.rmtree(slot, ignore_errors=True)


def _sigterm_mid_build_then_resume(before: set[int], frag: Path, e2e_cache: Path, tmp_path: Path) -> None:
    cfg = small_config(tmp_path, f"  - {{name: other, tree: debian-6.1, changes: [{{config: {frag}}}]}}",
                       cycles=300, counted=2)
    proc = start_run(cfg, e2e_cache)
    build_log = tmp_path / "runs"

    def compiling() -> bool:
        logs = list(build_log.glob("*/logs/other/build.log"))
        return bool(logs) and "  CC " in logs[0].read_text(errors="replace")

    wait_for(compiling, 300, "the build to compile")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 70, out
    time.sleep(1)
    makes = subprocess.run(["pgrep", "-f", "O=build"], capture_output=True, text=True, check=False).stdout.split()
    assert not makes, "make survived the SIGTERM"
    run_dir, res = results_of(tmp_path)
    assert res["status"] == "interrupted"
    assert "build" not in res["candidates"]["other"]["stages"]
    proc = start_run(cfg, e2e_cache, "--resume", str(run_dir))
    out, _ = proc.communicate(timeout=1500)
    assert proc.returncode in exitcodes.MEASURED, out
    no_new_qemu(before)
    _, res = results_of(tmp_path)
    other = res["candidates"]["other"]
    assert other["status"] == "ok" and len(other["runs"]) == 2
    assert f"-fault{os.getpid()}" in other["stages"]["boot"]["uname_r"]


def _port_of(run_dir: Path, name: str, tag: str) -> int:
    qlog = run_dir / "logs" / name / f"{tag}.qemu.log"
    m = re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22", qlog.read_text())
    assert m
    return int(m.group(1))


def _inject_during_first_workload(tmp_path: Path, action) -> threading.Thread:
    def worker() -> None:
        def ready() -> bool:
            logs = list((tmp_path / "runs").glob("*/logs/base/r00-a0.console.log"))
            return bool(logs) and "KPIPE-TEST-HOST-READY" in logs[0].read_text(errors="replace")

        wait_for(ready, 300, "the first test host")
        time.sleep(4.5)  # SSH login, VMM copied, workload running
        action(next((tmp_path / "runs").iterdir()))

    t = threading.Thread(target=worker)
    t.start()
    return t


@pytest.mark.parametrize("fault", ["kill-qemu", "kill-sshd"])
def test_fault_mid_workload_is_retried_and_recorded(fault: str, built_kernel, initramfs, e2e_cache: Path,
                                                    tmp_path: Path) -> None:
    before = qemu_pids()
    cfg = small_config(tmp_path, "", cycles=8000, counted=2)

    def kill_qemu(run_dir: Path) -> None:
        pid = int((run_dir / "logs/base/r00-a0.pid").read_text())
        os.kill(pid, signal.SIGKILL)

    def kill_sshd(run_dir: Path) -> None:
        conn = fabric.Connection("127.0.0.1", port=_port_of(run_dir, "base", "r00-a0"), user="root",
                                 connect_kwargs={"key_filename": str(initramfs.keys.client_key),
                                                 "look_for_keys": False, "allow_agent": False})
        try:
            conn.run("killall -9 dropbear", hide=True, warn=True, timeout=10)
        except Exception:  # noqa: BLE001 - our own session dies with the server
            pass

    t = _inject_during_first_workload(tmp_path, kill_qemu if fault == "kill-qemu" else kill_sshd)
    proc = start_run(cfg, e2e_cache)
    out, _ = proc.communicate(timeout=900)
    t.join()
    assert proc.returncode == 0, out
    no_new_qemu(before)
    _, res = results_of(tmp_path)
    base = res["candidates"]["base"]
    assert base["status"] == "ok" and len(base["runs"]) == 2
    assert base["retries"] and base["retries"][0]["attempt"] == "r00-a0"
    assert base["retries"][0]["status"] in ("infra-error", "workload-failed")
    assert base["runs"][0]["attempt"] == 1  # the counted run is the retry, the failed one is not counted
