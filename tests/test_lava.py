"""The LAVA runtime against answers a real LAVA 2023.01 gave (tests/data/lava, recorded on this kind of
machine): a complete job, a kernel that panics (which LAVA files under "Infrastructure"), an artefact
whose sha256 does not match; the REST client's retries; the job definition; the session's resume."""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import threading
import urllib.error
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from conftest import small_config

from pipeline.config import load_config
from pipeline.errors import ConfigError, InfraError
from pipeline.machines.lava import LavaClient, LavaRefused, LavaSettings, LavaUnreachable, outcome, parse_job
from pipeline.machines.lava_job import job_definition
from pipeline.records.results import RunFolder
from pipeline.run.lava_runtime import LavaHost, LavaLabFault, LavaRuntime
from pipeline.stages.boot import BootFailed
from pipeline.workloads.flash import REMOTE_VMM, parse_output

DATA = Path(__file__).parent / "data" / "lava"


def recorded(name: str) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    info = json.loads((DATA / f"{name}-job.json").read_text())
    log = lzma.decompress((DATA / f"{name}-log.yaml.xz").read_bytes()).decode()
    tests = json.loads((DATA / f"{name}-tests.json").read_text())["results"]
    return info, log, tests


def test_a_complete_job_gives_every_command_back() -> None:
    info, log, tests = recorded("complete")
    rep = parse_job(1, info, log, tests)
    assert outcome(rep, 2) == ("ran", "")
    assert rep.commands[0].stdout == "6.1.192\n" and rep.commands[0].exited == 0
    raw = parse_output(rep.commands[1].stdout)  # the VMM's JSON, quotes and all, through base64
    assert raw["status"] == "ok" and raw["updates"] == 600 and raw["params"]["cycles"] == 300
    assert rep.boot_s == pytest.approx(3.76) and rep.device == "kpipe-qemu01"
    assert "kpipe-lava:" in rep.console and not rep.kernel_problem
    assert outcome(rep, 3)[0] == "lab"  # a command that did not report is a lost repetition, never a pass
    # The record's times (submit 06:11:40.960, start 41.390, end 06:12:01.154): queue and device time.
    assert rep.queued_s == pytest.approx(0.430, abs=1e-3) and rep.job_s == pytest.approx(19.764, abs=1e-3)
    assert rep.timing() == {"runtime": "lava", "id": 1, "device": "kpipe-qemu01", "queued_s": 0.43,
                            "job_s": 19.76, "boot_to_shell_s": 3.76}
    assert parse_job(1, {"state": "Finished", "start_time": None}, log, tests).job_s == 0.0  # never started


def test_the_report_states_each_jobs_cost_beyond_the_guest_boot_it_measured() -> None:
    from pipeline.records.results import RunRecord
    from pipeline.report.jobs import job_lines, job_overheads

    def run(job_s: float, boot_s: float, job: bool = True) -> RunRecord:
        raw = {"job": {"runtime": "lava", "id": 7, "device": "d", "queued_s": 1.0, "job_s": job_s,
                       "boot_to_shell_s": 3.0}} if job else {}
        return RunRecord(0, "counted", 0, "", "lava", "lava:qemu", 3.0, "", raw, {"boot_s": boot_s})

    assert job_overheads([run(20.0, 2.0, job=False)]) == {}  # a local run: no jobs, no line
    j = job_overheads([run(20.0, 2.0), run(30.0, 4.0), run(22.0, 2.5)])
    assert j["n"] == 3 and j["job_s"] == 22.0 and j["overhead_s"] == pytest.approx(19.5) and j["queued_s"] == 1.0
    assert job_lines([{"name": "base", "jobs": j}, {"name": "x"}]) == [
        "base: 3 LAVA jobs, medians queued 1.0 s, 22.0 s on the device, 19.5 s of it beyond the guest boot measured."]


def test_a_panic_is_the_kernels_though_lava_says_infrastructure() -> None:
    info, log, tests = recorded("panic")
    rep = parse_job(2, info, log, tests)
    assert rep.health == "Incomplete" and rep.error_type == "Infrastructure"
    what, why = outcome(rep, 1)
    assert what == "kernel" and why.startswith("Kernel panic - not syncing: No working init found")


def test_a_wrong_artefact_is_a_job_error_not_retried() -> None:
    info, log, tests = recorded("badsha")
    rep = parse_job(3, info, log, tests)
    what, why = outcome(rep, 1)
    assert what == "job" and "sha256" in why and "does not match" in why


def test_a_flooded_job_log_is_read_only_to_its_limit_and_is_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that floods its console (a warning in a loop) makes a job log of any size: only LOG_LIMIT
    of it is read, cut at a whole entry, and a job that reported fewer commands than it ran is the
    candidate's ('kernel'), never the lab's (which would be retried)."""
    import pipeline.machines.lava as lava

    info, log, tests = recorded("complete")
    flood = "".join(f"- {{dt: '2026-12-03T06:00:00', lvl: target, msg: 'WARNING: flood {i}'}}\n" for i in range(2000))
    monkeypatch.setattr(lava, "LOG_LIMIT", len(log) + len(flood) // 2)
    rep = parse_job(4, {**info, "health": "Incomplete"}, log + flood + "- {dt: x, lvl: target, msg: 'cut", tests)
    assert rep.log_cut_at == lava.LOG_LIMIT and "WARNING: flood 999" in rep.console
    assert "flood 1999" not in rep.console
    what, why = outcome(rep, 3)
    assert what == "kernel" and "console flood" in why
    assert parse_job(1, info, log, tests).log_cut_at == 0


def test_the_client_reads_no_more_than_its_limit() -> None:
    c = LavaClient(LavaSettings(), "t", opener=lambda req, timeout: _Answer(["x" * 100]))
    with pytest.raises(LavaRefused, match="passed"):
        c.call("jobs/1/", limit=50)
    assert c.call("jobs/1/", limit=500) == ["x" * 100]


class _Answer(io.BytesIO):
    def __init__(self, body: Any):
        super().__init__(json.dumps(body).encode())
        self.headers = {"Content-Type": "application/json"}

    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def test_the_client_retries_5xx_and_dropped_links_and_stops_on_4xx() -> None:
    answers: list[Any] = [urllib.error.HTTPError("u", 502, "Bad Gateway", {}, io.BytesIO(b"")),  # type: ignore[arg-type]
                          urllib.error.URLError("connection reset"), _Answer({"version": "2023.01"})]
    calls: list[str] = []

    def opener(req: Any, timeout: float) -> Any:
        calls.append(req.full_url)
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    slept: list[float] = []
    c = LavaClient(LavaSettings(), "t", opener=opener, sleep=slept.append)
    assert c.healthy() == (True, "2023.01") and len(calls) == 3 and slept == [2.0, 4.0]
    answers[:] = [urllib.error.HTTPError("u", 400, "Bad", {}, io.BytesIO(b'{"message": "Device type x'  # type: ignore[arg-type]
                                                                           b' is unavailable."}'))]
    with pytest.raises(LavaRefused, match="unavailable"):
        c.submit("job")
    answers[:] = [urllib.error.URLError("down")] * 5
    with pytest.raises(LavaUnreachable, match="did not answer"):
        c.job(7)


def test_the_job_definition_quotes_every_value_and_refuses_newlines() -> None:
    d = job_definition(LavaSettings(tags=("x86-bare",)), run_id="r1", candidate='a"b', tag="r00-a0",
                       kernel=("file:///k/bzImage", "ab" * 32), ramdisk=("file:///r.cpio.gz", "cd" * 32),
                       cmdline="console=ttyS0 x=\"y\"", cpus=2, memory_mb=1024,
                       commands=[["uname", "-r"], [REMOTE_VMM, "--cycles", "3100", "it's"]], timeout_s=600)
    doc = yaml.safe_load(d)
    assert doc["job_name"] == 'kpipe r1 a"b r00-a0' and doc["tags"] == ["x86-bare"]
    steps = doc["actions"][2]["test"]["definitions"][0]["repository"]["run"]["steps"]
    assert steps == ["kpipe-lava-run 0 uname -r", f"kpipe-lava-run 1 {REMOTE_VMM} --cycles 3100 'it'\"'\"'s'"]
    images = doc["actions"][0]["deploy"]["images"]
    assert images["kernel"]["sha256sum"] == "ab" * 32 and "x=\"y\"" in images["kernel"]["image_arg"]
    assert "-accel tcg,thread=multi -cpu max" in doc["context"]["extra_options"]
    with pytest.raises(Exception, match="newline"):
        job_definition(LavaSettings(), run_id="r", candidate="c", tag="t", kernel=("k", "0"), ramdisk=("r", "0"),
                       cmdline="", cpus=1, memory_mb=256, commands=[["echo", "a\nb"]], timeout_s=60)


def test_config_reads_the_runtime_and_names_bad_keys(tmp_path: Path) -> None:
    path = small_config(tmp_path)
    text = path.read_text()
    path.write_text(text + "runtime: lava\nlava: {url: 'http://127.0.0.1', device_type: qemu, tags: [big]}\n")
    cfg = load_config(path)
    assert cfg.runtime == "lava" and cfg.lava.tags == ("big",) and cfg.lava.device_type == "qemu"
    path.write_text(text + "runtime: lava\nworkloads: [{name: s, kind: kvm-selftest}]\n")
    with pytest.raises(ConfigError, match="workloads"):
        load_config(path)
    path.write_text(text + "runtime: cloud\n")
    with pytest.raises(ConfigError, match="runtime"):
        load_config(path)
    path.write_text(text + "lava: {url: 'ftp://x'}\n")
    with pytest.raises(ConfigError, match="lava.url"):
        load_config(path)
    path.write_text(text + "lava: {artifact_url: 'http://10.0.0.5:8002'}\n")
    assert load_config(path).lava.artifact_url == "http://10.0.0.5:8002"
    path.write_text(text + "lava: {artifact_url: '/srv/store'}\n")
    with pytest.raises(ConfigError, match="lava.artifact_url"):
        load_config(path)


def test_artefacts_are_published_by_sha256_as_file_or_under_the_served_url(tmp_path: Path) -> None:
    from pipeline.machines.lava_job import publish

    art = tmp_path / "bz Image"
    art.write_bytes(b"kernel")
    digest = hashlib.sha256(b"kernel").hexdigest()
    store = tmp_path / "store"
    url, sha = publish(art, store)
    assert sha == digest and url == (store / digest / "bz Image").as_uri()
    assert (store / digest / "bz Image").read_bytes() == b"kernel"
    assert publish(art, store, "http://10.0.0.5:8002/") == (f"http://10.0.0.5:8002/{digest}/bz%20Image", digest)


def test_a_finished_job_answers_only_the_commands_it_ran(tmp_path: Path) -> None:
    info, log, tests = recorded("complete")
    rep = parse_job(1, info, log, tests)
    vmm = tmp_path / "flashvmm"
    vmm.write_bytes(b"vmm")
    argv = [REMOTE_VMM, "--cycles", "300"]
    host = LavaHost(rep, [["uname", "-r"], argv], tmp_path / "c.log", hashlib.sha256(b"vmm").hexdigest())
    assert host.run(["uname", "-r"]).stdout == "6.1.192\n"
    assert host.run(argv).ok and host.run(["chmod", "755", REMOTE_VMM]).ok
    host.put(str(vmm), REMOTE_VMM)
    other = tmp_path / "other"
    other.write_bytes(b"other")
    with pytest.raises(Exception, match="only the flash VMM"):
        host.put(str(other), REMOTE_VMM)
    with pytest.raises(Exception, match="did not run"):
        host.run(["rm", "-rf", "/"])


class FakeLab:
    """A LAVA that answers from the recorded jobs: `submit` hands out the next one."""

    def __init__(self, names: list[str]):
        self.names, self.submitted, self.waited = names, [], []  # type: ignore[var-annotated]
        self.settings = LavaSettings()

    def submit(self, definition: str) -> int:
        self.submitted.append(definition)
        return len(self.submitted)

    def wait(self, job_id: int, stop: Any, limit_s: float) -> dict[str, Any]:
        self.waited.append(job_id)
        return recorded(self.names[job_id - 1])[0]

    def report(self, job_id: int, info: dict[str, Any]) -> Any:
        _, log, tests = recorded(self.names[job_id - 1])
        return parse_job(job_id, info, log, tests)

    def cancel(self, job_id: int) -> None:
        pass


def _prep(tmp_path: Path) -> Any:
    image = tmp_path / "bzImage"
    image.write_bytes(b"kernel")
    cand = SimpleNamespace(name="base", workload=None)
    return SimpleNamespace(candidate=cand, artifacts=SimpleNamespace(bzimage=image),
                           patched=SimpleNamespace(cmdline=()))


def test_sessions_map_outcomes_and_a_resume_polls_the_job_it_left(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.run.lava_runtime as lr

    monkeypatch.setattr(lr, "lava_initramfs", lambda vmm, cache: vmm)
    cfg = load_config(small_config(tmp_path))
    folder = RunFolder.create(tmp_path / "runs", "r-1")
    vmm = tmp_path / "flashvmm"
    vmm.write_bytes(b"vmm")
    lab = FakeLab(["complete", "panic", "badsha"])
    rt = LavaRuntime(cfg, folder, threading.Event(), client=lab)  # type: ignore[arg-type]
    argv = [REMOTE_VMM, "--cycles", "300"]
    with rt.session(_prep(tmp_path), vmm, "r00-a0", tmp_path / "logs", [argv]) as host:
        assert host.info["uname_r"] == "6.1.192" and host.boot_seconds == pytest.approx(3.76)
        assert host.info["job"]["job_s"] == 19.76  # the repetition's record keeps it (raw["job"])
        assert "kpipe-lava:" in host.console_log.read_text()
    with pytest.raises(BootFailed, match="Kernel panic"):
        with rt.session(_prep(tmp_path), vmm, "r01-a0", tmp_path / "logs", [argv]):
            pass
    with pytest.raises(LavaRefused, match="sha256"):
        with rt.session(_prep(tmp_path), vmm, "r02-a0", tmp_path / "logs", [argv]):
            pass
    assert len(lab.submitted) == 3 and folder.candidate("base")["stages"]["lava_jobs"] == {
        "r00-a0": None, "r01-a0": None, "r02-a0": None}
    # Interrupted while job 1 ran: the resumed run finds its id and polls it, submitting nothing.
    folder.update_stage("base", "lava_jobs", **{"r03-a0": 1})
    with rt.session(_prep(tmp_path), vmm, "r03-a0", tmp_path / "logs", [argv]) as host:
        assert host.info["lava_job"] == "1"
    assert len(lab.submitted) == 3 and lab.waited[-1] == 1
    assert issubclass(LavaLabFault, InfraError)  # the lab's own faults are retried like any infrastructure's


def test_a_bare_metal_device_type_gets_tftp_and_ipxe_with_the_kernel_arguments_in_its_context() -> None:
    """LAVA's x86 device type boots iPXE over the network: the kernel and ramdisk go to TFTP and the kernel
    arguments through the device template's extra_kernel_args; no QEMU options."""
    d = job_definition(LavaSettings(device_type="x86", tags=("epyc-7b13",)), run_id="r", candidate="c", tag="t",
                       kernel=("https://lab/k", "a" * 64), ramdisk=("https://lab/r", "b" * 64),
                       cmdline="console=ttyS0,115200 panic=-1", cpus=2, memory_mb=1024,
                       commands=[["uname", "-r"]], timeout_s=60)
    doc = yaml.safe_load(d)
    deploy, boot = doc["actions"][0]["deploy"], doc["actions"][1]["boot"]
    assert deploy["to"] == "tftp" and deploy["kernel"] == {"url": "https://lab/k", "sha256sum": "a" * 64,
                                                           "type": "bzimage"}
    assert boot["method"] == "ipxe" and boot["commands"] == "ramdisk"
    assert doc["context"] == {"arch": "amd64", "extra_kernel_args": "console=ttyS0,115200 panic=-1"}
    assert doc["tags"] == ["epyc-7b13"]
