"""The pool of test machines: real sshd daemons on 127.0.0.1 ports stand in for lab machines.

Logic tests (dispatch order, host loss, kind selection, comparisons by kind) fake the
executors; everything that claims the remote path works uses real sshd, real SFTP,
real QEMU started over SSH and a real host killed mid-run.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import FRAGMENT, REPO, qemu_pids, small_config
from sshd_hosts import SshdHost, descendants, keygen

from pipeline import exitcodes
from pipeline.config import KernelConfig, load_config
from pipeline.errors import ConfigError
from pipeline.machines.pool import LOST, OK, UNUSABLE, UNUSED, HostLost, Job, PoolHost, check_pool, dispatch
from pipeline.machines.remote import RemoteExecutor, parse_probe
from pipeline.machines.spec import HostSpec
from pipeline.report.analysis import analyze
from pipeline.stages.sandbox import forget_owner

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the test sshd daemons log in as root")


# -- configuration -------------------------------------------------------------------------


def _cfg(tmp_path: Path, hosts: str) -> Path:
    p = tmp_path / "pipeline.yaml"
    (tmp_path / "key").write_text("not really a key\n")
    (tmp_path / "key").chmod(0o600)
    (tmp_path / "open-key").write_text("not really a key\n")
    (tmp_path / "open-key").chmod(0o644)
    p.write_text(f"""trees:
  t: {{git: /nonexistent}}
baseline: a
candidates:
  - {{name: a, tree: t}}
test_host:
  qemu_template: {REPO}/vm-templates/qemu/x86_64.cmd.j2
  initramfs_recipe: {REPO}/vm-templates/initramfs/recipe.yaml
hosts:
{hosts}""")
    return p


def test_hosts_are_read_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(_cfg(tmp_path, """  - {name: here, local: true}
  - {name: lab1, host: 10.0.0.5, key: key, kind: epyc, distcc: 3632/4}
"""))
    assert cfg.hosts[0] == HostSpec(name="here", local=True)
    lab = cfg.hosts[1]
    assert (lab.host, lab.port, lab.user, lab.kind, lab.distcc) == ("10.0.0.5", 22, "root", "epyc", "3632/4")
    assert lab.key == tmp_path / "key" and lab.address == "root@10.0.0.5:22"
    assert load_config(_no_hosts(tmp_path)).hosts == (HostSpec(name="local", local=True),)


def _no_hosts(tmp_path: Path) -> Path:
    p = _cfg(tmp_path, "")
    p.write_text(p.read_text().replace("hosts:\n", ""))
    return p


@pytest.mark.parametrize("hosts, message", [
    ("  - {name: lab1}\n", r"hosts\[0\]: missing required key 'host'.*pipeline.yaml:10"),
    ("  - {name: a, host: h}\n  - {name: a, host: g}\n", r"hosts\[1\].name: duplicate host name 'a'.*:11"),
    ("  - {name: a, host: h, port: 70000}\n", r"hosts\[0\].port: invalid value 70000: 1 to 65535"),
    ("  - {name: a, host: h, key: open-key}\n", r"hosts\[0\].key: open-key can be read by other users.*chmod 600"),
    ("  - {name: a, local: true, key: key}\n", r"hosts\[0\].key: not used for the local machine"),
    ("  - {name: a, host: 'h; rm -rf /'}\n", r"hosts\[0\].host: invalid value"),
    ("  - {name: a, host: h, workdir: tmp}\n", r"hosts\[0\].workdir: .*an absolute path"),
    ("  - {name: a, host: h, distcc: lots}\n", r"hosts\[0\].distcc: .*PORT/JOBS"),
    ("  - {name: a, host: h, user: root, pasword: x}\n", r"hosts\[0\].pasword: unknown key"),
    ("  []\n", r"hosts: invalid value \[\]: list at least one host"),
])
def test_bad_host_entries_name_key_and_line(tmp_path: Path, hosts: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_cfg(tmp_path, hosts))


def test_probe_output_is_parsed_line_by_line() -> None:
    facts = parse_probe("machine=x86_64\ncpus=2\ncpu_model=AMD EPYC 7B13\nqemu=\nnoise without equals\n"
                        "kvm_exists=1\n")
    assert facts == {"machine": "x86_64", "cpus": "2", "cpu_model": "AMD EPYC 7B13", "qemu": "", "kvm_exists": "1"}


# -- dispatch and kinds (fake executors: logic only) -----------------------------------------


class FakeExecutor:
    def __init__(self, name: str, facts: dict[str, str]):
        self.name, self.facts, self.aborted = name, facts, False

    def probe(self) -> dict[str, str]:
        return self.facts

    def abort(self) -> None:
        self.aborted = True


FACTS = {"machine": "x86_64", "cpus": "2", "cpu_model": "Xeon", "qemu": "/usr/bin/qemu-system-x86_64",
         "free_kb": str(50 * 1024**2)}


def _pool(*names: str) -> list[PoolHost]:
    return [PoolHost(HostSpec(name=n, host="h"), FakeExecutor(n, FACTS), kind="k") for n in names]  # type: ignore


def test_dispatch_interleaves_and_moves_the_job_of_a_lost_host() -> None:
    hosts = _pool("a", "b")
    ran: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    def run_job(host: PoolHost, job: Job) -> None:
        if host.name == "a" and host.jobs == 1:
            raise HostLost("a stopped answering")
        time.sleep(0.01)
        with lock:
            ran.append((host.name, job.candidate, job.round))

    jobs = [Job(c, r, "counted") for r in range(3) for c in ("base", "x")]
    left = dispatch(jobs, hosts, run_job, threading.Event())
    assert left == []
    assert sorted((c, r) for _, c, r in ran) == sorted((j.candidate, j.round) for j in jobs)  # each once
    assert hosts[0].status == LOST and "stopped answering" in hosts[0].reason and hosts[0].jobs == 1
    assert hosts[1].status == OK and hosts[1].jobs == 5


def test_dispatch_returns_what_no_host_was_left_to_run_and_skips_dead_candidates() -> None:
    hosts = _pool("only")
    dead = {"x"}

    def run_job(host: PoolHost, job: Job) -> None:
        if job.round == 1:
            raise HostLost("gone")

    jobs = [Job(c, r, "counted", alive=lambda c=c: c not in dead) for r in range(3) for c in ("base", "x")]
    left = dispatch(jobs, hosts, run_job, threading.Event())
    assert [(j.candidate, j.round) for j in left] == [("base", 1), ("base", 2)]


def test_an_unexpected_error_takes_the_host_out_and_keeps_the_job() -> None:
    hosts = _pool("buggy", "fine")
    done: list[int] = []

    def run_job(host: PoolHost, job: Job) -> None:
        if host.name == "buggy":
            raise ValueError("a bug")
        done.append(job.round)

    assert dispatch([Job("base", r, "counted") for r in range(4)], hosts, run_job, threading.Event()) == []
    assert sorted(done) == [0, 1, 2, 3]
    assert hosts[0].status == LOST and "ValueError: a bug" in hosts[0].reason


@pytest.mark.parametrize("share_cpus, expected_peak", [(False, 1), (True, 2)])
def test_hosts_on_one_machine_take_turns_unless_they_may_share_cpus(share_cpus: bool, expected_peak: int) -> None:
    """Two pool hosts that are the same kernel (same boot_id) never measure at the same time by default."""
    hosts = [PoolHost(HostSpec(name=n, host="h", share_cpus=share_cpus), FakeExecutor(n, FACTS),  # type: ignore
                      facts={**FACTS, "boot_id": "same"}, kind="k") for n in ("a", "b")]
    running, peak, lock = 0, 0, threading.Lock()

    def run_job(host: PoolHost, job: Job) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    assert dispatch([Job("c", r, "counted") for r in range(8)], hosts, run_job, threading.Event()) == []
    assert peak == expected_peak
    assert hosts[0].jobs + hosts[1].jobs == 8
    assert hosts[0].jobs >= 3 and hosts[1].jobs >= 3  # they take turns: neither starves


def test_only_the_largest_kind_is_used_unless_comparing_across_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.machines.pool as pool

    specs = [HostSpec(name="amd1", host="h", kind="amd"), HostSpec(name="intel1", host="h", kind="intel"),
             HostSpec(name="amd2", host="h", kind="amd"),
             HostSpec(name="full", host="h", min_free_gb=100.0)]
    monkeypatch.setattr(pool, "make_executor", lambda spec, wd: FakeExecutor(spec.name, FACTS))
    hosts = {h.name: h for h in check_pool(specs, "tcg", "/tmp", compare_across_kinds=False)}
    assert [hosts[n].status for n in ("amd1", "amd2", "intel1")] == [OK, OK, UNUSED]
    assert "compare_across_kinds" in hosts["intel1"].reason
    assert hosts["full"].status == UNUSABLE and "only 50.0 GiB free" in hosts["full"].reason
    hosts = {h.name: h for h in check_pool(specs, "tcg", "/tmp", compare_across_kinds=True)}
    assert [hosts[n].status for n in ("amd1", "amd2", "intel1")] == [OK, OK, OK]
    assert "same machine" not in hosts["amd1"].reason  # FACTS carry no boot_id: separate machines


def test_hosts_with_one_boot_id_are_reported_as_one_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.machines.pool as pool

    monkeypatch.setattr(pool, "make_executor", lambda spec, wd: FakeExecutor(spec.name, {**FACTS, "boot_id": "b1"}))
    hosts = check_pool([HostSpec(name="x", host="h"), HostSpec(name="y", host="h")], "tcg", "/tmp", False)
    assert all(h.status == OK for h in hosts)
    assert "same machine as y (same boot_id): one job at a time" in hosts[0].reason


def test_runs_are_compared_only_on_the_baselines_kind() -> None:
    def runs(kind: str, values: list[float]) -> list[dict]:
        return [{"host": kind + "-host", "host_kind": kind, "metrics": {"boot_s": v, "host_cpu_s": v}}
                for v in values]

    results = {"baseline": "base", "candidate_order": ["base", "x"], "settings": {},
               "candidates": {"base": {"status": "ok", "runs": runs("a", [1.0, 1.01, 0.99, 1.0])},
                              # on kind a the same as base; on kind b (a slower machine) much slower
                              "x": {"status": "ok", "runs": runs("a", [1.0, 1.0, 1.01]) + runs("b", [3.0] * 5)}}}
    a = analyze(results)
    x = a["rows"][1]
    assert a["reference_kind"] == "a" and x["n"] == 3 and x["excluded_other_kind"] == 5
    assert x["comparisons"]["boot_s"]["verdict"] == "no significant change"
    results["settings"]["compare_across_kinds"] = True
    assert analyze(results)["rows"][1]["comparisons"]["boot_s"]["verdict"] == "slower"


def tethers() -> list[int]:
    """Live tether shells (the remote side of a spawned QEMU); none may outlive its job."""
    out = subprocess.run(["pgrep", "-f", "kpipe-tether"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if _state(int(p)) not in ("", "Z")]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# -- real sshd hosts on 127.0.0.1 ----------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    """Three pool hosts (real OpenSSH sshd, own host keys and work directories), a client key and
    a known_hosts file that knows them."""
    if os.geteuid() != 0:
        pytest.skip("the test sshd daemons log in as root")
    root = tmp_path_factory.mktemp("lab")
    pub = keygen(root / "client_key")
    hosts = [SshdHost(n, root, pub) for n in ("lab1", "lab2", "lab3")]
    for h in hosts:
        h.start()
    known = root / "known_hosts"
    known.write_text("".join(h.known_hosts_line + "\n" for h in hosts))
    yield {"root": root, "key": root / "client_key", "known_hosts": known, "hosts": hosts}
    for h in hosts:
        h.kill()


def _spec(lab: dict, h: SshdHost, **kw) -> HostSpec:
    return HostSpec(name=h.name, host="127.0.0.1", port=h.port, user="root", key=lab["key"],
                    known_hosts=lab["known_hosts"], workdir=str(h.workdir), min_free_gb=0.5, **kw)


@needs_root
def test_each_host_is_checked_before_use_with_a_clear_reason(lab: dict, tmp_path: Path) -> None:
    lab1 = lab["hosts"][0]
    stranger = tmp_path / "known_hosts"
    stranger.write_text("")
    specs = [_spec(lab, lab1),
             HostSpec(name="down", host="127.0.0.1", port=1, key=lab["key"], known_hosts=lab["known_hosts"]),
             HostSpec(name="unknown-key", host="127.0.0.1", port=lab1.port, key=lab["key"], known_hosts=stranger),
             HostSpec(name="small", host="127.0.0.1", port=lab1.port, key=lab["key"], known_hosts=lab["known_hosts"],
                      workdir=str(lab1.workdir), min_free_gb=1e6)]
    hosts = {h.name: h for h in check_pool(specs, "auto", str(tmp_path), compare_across_kinds=False)}
    ok = hosts["lab1"]
    assert ok.status == OK, ok.reason
    assert ok.facts["qemu"].endswith("qemu-system-x86_64") and int(ok.facts["cpus"]) == os.cpu_count()
    assert ok.kind.startswith(ok.accel.name + " x86_64")
    assert hosts["down"].status == UNUSABLE and "unreachable" in hosts["down"].reason
    assert "cannot connect to 127.0.0.1 port 1: Connection refused" in hosts["down"].reason
    assert hosts["unknown-key"].status == UNUSABLE
    assert f"ssh-keyscan -p {lab1.port} 127.0.0.1 >> {stranger}" in hosts["unknown-key"].reason
    assert hosts["small"].status == UNUSABLE and "need 1e+06 GiB" in hosts["small"].reason


@needs_root
def test_remote_processes_die_with_the_ssh_link(lab: dict, tmp_path: Path) -> None:
    """The tether: dropping the connection (as a crashed or SIGKILLed pipeline does) kills what we started."""
    ex = RemoteExecutor(_spec(lab, lab["hosts"][2]))
    marker = f"{int(time.time() * 1000) % 10**6 + 7_000_000}"
    proc = ex.spawn(["sleep", marker], tmp_path / "sleep.log")
    assert proc.pid > 0 and proc.alive()
    assert subprocess.run(["pgrep", "-f", f"^sleep {marker}$"], capture_output=True).returncode == 0
    ex.abort()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", f"^sleep {marker}$"], capture_output=True).returncode != 0:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the remote process outlived its SSH link")
    remote_log = ex.log_path(tmp_path / "sleep.log")
    assert Path(remote_log).read_text().startswith(f"$ sleep {marker}")  # the command line heads the log
    ex.close()


@pytest.mark.slow
@needs_root
def test_two_host_pool_runs_every_job_and_survives_a_host_dying(built_kernel, e2e_cache: Path, lab: dict,
                                                                tmp_path: Path) -> None:
    """`python -m pipeline run` with hosts lab1+lab2: jobs go to both (they are one machine, so they take
    turns); lab2 is killed (sshd, its sessions and its QEMU) in the middle of a job; that job is finished
    on lab1 and nothing measured is lost."""
    lab1, lab2 = lab["hosts"][0], lab["hosts"][1]
    cfg = small_config(tmp_path, "  - {name: phase1, tree: debian-6.1, changes: "
                                 "[{cmdline: srcutree.srcu_max_nodelay_phase=1}]}", counted=3)
    cfg.write_text(cfg.read_text() + "hosts:\n" + lab1.yaml(lab["key"], lab["known_hosts"])
                   + lab2.yaml(lab["key"], lab["known_hosts"]))
    before = qemu_pids()
    env = {**os.environ, "KPIPE_CACHE_DIR": str(e2e_cache)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "-c", str(cfg)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).parent.parent)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    killed_during = ""
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        done_on_lab2 = sum(1 for ln in list(lines) if re.search(r"counted #\d on lab2: guest boot", ln))
        if not killed_during and done_on_lab2 >= 1 and lab2.proc is not None:
            qemu = [p for p in descendants(lab2.proc.pid) if _comm(p).startswith("qemu-system")]
            if qemu:  # lab2 is in the middle of its second job: kill the machine
                time.sleep(1.5)
                killed_during = f"{len(qemu)} QEMU of lab2"
                lab2.kill()
        time.sleep(0.2)
    proc.wait(timeout=60)
    reader.join(10)
    out = "".join(lines)
    assert proc.returncode in exitcodes.MEASURED, out
    assert killed_during, out
    lab2.start()  # back for later tests
    run_dir = next((tmp_path / "runs").iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "finished"
    hosts = {h["name"]: h for h in results["hosts"]}
    assert hosts["lab2"]["status"] == LOST and hosts["lab1"]["status"] == OK
    assert hosts["lab2"]["jobs"] >= 1 and hosts["lab1"]["jobs"] >= 1
    ran_on = set()
    for name in ("base", "phase1"):
        c = results["candidates"][name]
        assert c["status"] == "ok", c
        assert sorted(r["round"] for r in c["runs"]) == [0, 1, 2]  # every round once: the lost job was redone
        ran_on |= {r["host"] for r in c["runs"]}
        for r in c["runs"]:
            assert r["metrics"]["updates"] == 600
            assert (run_dir / r["console_log"]).read_text().count("Linux version") == 1  # log came back
    assert ran_on == {"lab1", "lab2"}
    lost = [t for c in results["candidates"].values() for t in c.get("retries", []) if t["status"] == "host-lost"]
    assert len(lost) == 1 and "lab2" in lost[0]["message"]
    assert "LOST" in out and "moves to another host" in out
    assert qemu_pids() <= before  # no QEMU left behind, on either host
    assert not tethers()  # nor any part of the remote tethers
    html = (tmp_path / "reports" / run_dir.name / "index.html").read_text()
    assert 'id="machines"' in html and "lost" in html
    summary = (tmp_path / "reports" / run_dir.name / "summary.txt").read_text()
    assert "lab2 was lost during the run" in summary


@pytest.mark.slow
@needs_root
def test_builds_use_distcc_on_pool_hosts_that_offer_it(built_kernel, e2e_cache: Path, lab: dict,
                                                       tmp_path: Path) -> None:
    """A real distccd on a pool host compiles a kernel object for us; a host without one is left out with
    the reason."""
    from sshd_hosts import free_port

    from pipeline.machines.pool import distcc_hosts
    from pipeline.stages.build import compile_env, compiler_version
    from pipeline.stages.slots import slot_path

    port = free_port()
    log = tmp_path / "distccd.log"
    daemon = subprocess.Popen(["distccd", "--no-detach", "--daemon", "--listen", "127.0.0.1", "--port", str(port),
                               "--allow", "127.0.0.1", "--log-stderr", "--log-level", "info", "--user", "nobody"],
                              stderr=open(log, "wb"), start_new_session=True)  # noqa: SIM115
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"],
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "distccd did not listen"
            time.sleep(0.1)
        specs = [_spec(lab, lab["hosts"][0], distcc=f"{port}/2"), _spec(lab, lab["hosts"][2], distcc="1/3")]
        hosts = check_pool(specs, "auto", str(tmp_path), compare_across_kinds=False)
        use, notes = distcc_hosts(hosts, compiler_version())
        assert use == (f"127.0.0.1:{port}/2",)
        assert any("lab3: no distccd on port 1" in n for n in notes), notes
        # The shared kernel's build slot, compiled unconfined here (distcc needs the network).
        wt = slot_path(e2e_cache, KernelConfig(), (FRAGMENT,)) / "src"
        assert (wt / "build" / ".config").exists(), "the session's kernel was built in this slot"
        forget_owner(wt.parent / "build.owner")
        env, cc_args, jobs = compile_env(e2e_cache, wt, 0, use)  # no local slot: the compile must go remote
        assert jobs == 2 and env["DISTCC_HOSTS"] == f"127.0.0.1:{port}/2"
        env["DISTCC_DIR"] = str(tmp_path / "distcc")  # no back-off state from earlier runs
        (tmp_path / "distcc").mkdir()
        (wt / "build/kernel/rcu/srcutree.o").unlink(missing_ok=True)
        res = subprocess.run(["make", "-C", str(wt), "O=build", *cc_args, "kernel/rcu/srcutree.o"],
                             env={**os.environ, **env, "CCACHE_RECACHE": "1"}, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert (wt / "build/kernel/rcu/srcutree.o").exists()
        time.sleep(0.5)
        served = [ln for ln in log.read_text().splitlines() if "COMPILE_OK" in ln]
        assert any("srcutree.c" in ln for ln in served), log.read_text()[-2000:]
    finally:
        os.killpg(daemon.pid, 9)
        daemon.wait()


@pytest.mark.slow
@needs_root
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_a_pool_run_leaves_no_qemu_on_any_host_and_resume_finishes(built_kernel, e2e_cache: Path,
                                                                            lab: dict, tmp_path: Path,
                                                                            how: str) -> None:
    """Both hosts boot test hosts at once (share_cpus); the pipeline is stopped. SIGTERM runs the cleanup
    (worker threads stop, links dropped); SIGKILL runs none, so only the tethers can end the remote QEMUs.
    Either way no QEMU is left and --resume keeps what was measured and finishes."""
    from test_faults import counted, no_new_qemu, results_of, start_run, wait_for

    lab1, lab3 = lab["hosts"][0], lab["hosts"][2]
    cfg = small_config(tmp_path, "  - {name: phase1, tree: debian-6.1, changes: "
                                 "[{cmdline: srcutree.srcu_max_nodelay_phase=1}]}", counted=3)
    entries = [h.yaml(lab["key"], lab["known_hosts"]).replace("0.5}", "0.5, share_cpus: true}") for h in (lab1, lab3)]
    cfg.write_text(cfg.read_text() + "hosts:\n" + "".join(entries))
    before = qemu_pids()

    def remote_qemus() -> list[int]:
        return [p for h in (lab1, lab3) if h.proc for p in descendants(h.proc.pid) if _comm(p).startswith("qemu")]

    proc = start_run(cfg, e2e_cache)
    wait_for(lambda: counted(tmp_path, "base") + counted(tmp_path, "phase1") >= 1, 400, "a first counted run")
    wait_for(lambda: len(remote_qemus()) >= 1, 120, "test hosts booting on the pool")
    proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    wait_for(lambda: not remote_qemus(), 20, "the remote QEMUs to end")
    no_new_qemu(before)
    wait_for(lambda: not tethers(), 10, "the tether shells to end")
    run_dir, res = results_of(tmp_path)
    assert res["status"] == ("interrupted" if how == "SIGTERM" else "running"), out
    kept = {n: list(c["runs"]) for n, c in res["candidates"].items()}
    proc = start_run(cfg, e2e_cache, "--resume", str(run_dir))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode in exitcodes.MEASURED, out
    no_new_qemu(before)
    _, res = results_of(tmp_path)
    assert res["status"] == "finished"
    for name, runs in kept.items():
        final = res["candidates"][name]["runs"]
        assert final[: len(runs)] == runs and sorted(r["round"] for r in final) == [0, 1, 2]
    assert {r["host"] for c in res["candidates"].values() for r in c["runs"]} == {"lab1", "lab3"}
