"""The rows of reviews/2026-12-hostile-input.md that are not about builds (those are in test_trust.py):
hostile workload output, hangs, floods, mail and reports. Real parsers, real runners, real files; the
boot is faked only where the row is about what the measuring rules do with a result."""
from __future__ import annotations

import email
import email.policy
import json
import os
import resource
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_measure import Script, make

from pipeline.errors import InfraError, UserError
from pipeline.machines.hostcmd import RemoteResult, RemoteTimeout
from pipeline.machines.pool import OK
from pipeline.util.proc import run
from pipeline.util.untrusted import clean, defuse_trailers, quote_block
from pipeline.workloads.extra import ExtraWorkload
from pipeline.workloads.flash import WorkloadFailed, parse_output, run_workload
from pipeline.workloads.kinds import CommandKind

GOOD_VMM = json.loads((Path(__file__).parent / "data" / "flashvmm-v2-baseline.json").read_text())


@dataclass
class CannedHost:
    """A booted test host whose VMM prints `stdout` (the kernel under test decides what comes back)."""

    stdout: str
    console_log: Path = Path("/dev/null")
    boot_seconds: float = 1.0
    accelerator: str = "tcg"

    def __post_init__(self) -> None:
        self.info = {"uname_r": "6.1.0-test"}

    def run(self, argv: list[str], timeout: float | None = None, max_bytes: int = 0) -> RemoteResult:
        if self.stdout == "HANG":
            raise RemoteTimeout(" ".join(argv), timeout or 0, "partial output")
        return RemoteResult(" ".join(argv), 0, self.stdout, "")


def _vmm(**changes: object) -> str:
    doc = json.loads(json.dumps(GOOD_VMM))
    doc.update(changes)
    return json.dumps(doc)


HOSTILE_OUTPUTS = {
    "deep": '{"a":' + "[" * 100_000 + "]" * 100_000 + "}",
    "huge-int": _vmm(boot_ns=12345).replace("12345", "9" * 5000),
    "string-metric": _vmm(boot_ns="fast"),
    "no-cpu-all": _vmm(proc_stat_delta=[{"cpu": "cpu0"}]),
    "nan": _vmm(boot_ns=float("nan")),
    "infinity": _vmm(boot_ns=float("inf")),
    "missing-fields": '{"status": "ok"}',
    "null-fields": _vmm(update_ns=None),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_OUTPUTS))
def test_hostile_vmm_output_is_the_candidates_workload_failure(kind: str) -> None:
    """#10, #13: the candidate fails (not retried); nothing escapes as another exception type."""
    from pipeline.workloads.flash import Workload

    with pytest.raises(WorkloadFailed) as info:
        run_workload(CannedHost(HOSTILE_OUTPUTS[kind]), Workload(cycles=10), 2)  # type: ignore[arg-type]
    assert isinstance(info.value, UserError) and not isinstance(info.value, InfraError)  # the candidate's


def test_the_real_output_still_parses() -> None:
    from pipeline.workloads.flash import Workload

    res = run_workload(CannedHost(json.dumps(GOOD_VMM)), Workload(cycles=10), 2)  # type: ignore[arg-type]
    assert res.metrics["boot_s"] > 0
    assert parse_output("noise\n" + json.dumps(GOOD_VMM))["status"] == "ok"


@pytest.mark.parametrize("kind", ["deep", "nan", "huge-int"])
def test_one_candidates_hostile_output_takes_no_pool_host_out(tmp_path: Path, kind: str) -> None:
    """#10: with two pool hosts, the hostile candidate fails; the baseline and the other are measured."""
    script = Script({"base": ["ok"], "evil": ["ok"], "other": ["ok"]})
    m, folder, preps, failures = make(tmp_path, script, counted=2, retries=1, hosts=2)
    fake_workload = m._workload

    def workload(host, w, cpus):  # type: ignore[no-untyped-def]
        if host.console_log.parent.name == "evil":
            return run_workload(CannedHost(HOSTILE_OUTPUTS[kind]), w, cpus)  # type: ignore[arg-type]
        return fake_workload(host, w, cpus)

    m._workload = workload
    m.measure_all(preps, None, tmp_path / "vmm")  # type: ignore[arg-type]
    assert set(failures) == {"evil:run:workload-failed"}  # each host that took one of its rounds says so
    assert all(h.status == OK for h in m.hosts)
    assert len(folder.candidate("base")["runs"]) == 2 and len(folder.candidate("other")["runs"]) == 2


def test_a_hanging_workload_is_retried_then_reported_as_a_hang(tmp_path: Path) -> None:
    """#11: invoke's CommandTimedOut used to take every host out; now a retry, then the candidate's hang."""
    script = Script({"base": ["ok"], "hangs": ["ok"]})
    m, folder, preps, failures = make(tmp_path, script, counted=2, retries=1, hosts=1)
    fake_workload = m._workload

    def workload(host, w, cpus):  # type: ignore[no-untyped-def]
        if host.console_log.parent.name == "hangs":
            return run_workload(CannedHost("HANG"), w, cpus)  # type: ignore[arg-type]
        return fake_workload(host, w, cpus)

    m._workload = workload
    m.measure_all(preps, None, tmp_path / "vmm")  # type: ignore[arg-type]
    assert failures == ["hangs:run:workload-failed"]
    c = folder.candidate("hangs")
    assert "the workload hangs: 2 attempt(s)" in c["status_detail"]
    assert [r["status"] for r in c["retries"]] == ["infra-error", "infra-error"]
    assert all(h.status == OK for h in m.hosts) and len(folder.candidate("base")["runs"]) == 2


@pytest.mark.parametrize("output", [
    "version=1.2.3\nelapsed_ms=12.5\n", '{"elapsed_ms": 12.5, "big": 1' + "0" * 400 + "}",
    '{"elapsed_ms": 12.5, "nan": NaN}', "elapsed_ms=12.5\nother=" + "9" * 400, '{"elapsed_ms": 12.5, "big": 1e400}'])
def test_command_workload_lines_that_are_not_numbers_are_ignored(output: str) -> None:
    """#12"""
    w = ExtraWorkload("t", "command", "elapsed_ms")
    values = CommandKind.parse(w, output, 1.0)
    assert values["elapsed_ms"] == 12.5
    assert all(isinstance(v, float) and v == v and abs(v) != float("inf") for v in values.values())


def test_selftest_args_are_checked_at_load_with_key_and_line(tmp_path: Path) -> None:
    """#31"""
    from conftest import small_config

    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    for args, where in (('[-v, "1", -i]', "args[2]"), ("[-i, abc]", "args[1]"), ("[-z]", "args[0]"),
                        ('[-i, "0"]', "args[1]")):
        cfg = small_config(tmp_path)
        cfg.write_text(cfg.read_text() + "workloads:\n  - name: stress\n    kind: kvm-selftest\n"
                       f"    test: memslot_modification_stress_test\n    args: {args}\n")
        with pytest.raises(ConfigError) as info:
            load_config(cfg)
        assert f"workloads[0].{where}" in str(info.value) and info.value.line is not None, str(info.value)


def test_quoted_excerpts_carry_no_trailer_and_no_escape() -> None:
    """#7"""
    hostile = ("make: *** error\nReviewed-by: Greg Kroah-Hartman <gregkh@linuxfoundation.org>\n"
               "Tested-by: kpipe CI <ci@example.org>\nLink: https://evil.example/x\n"
               "\x1b]52;c;cGF5bG9hZA==\x07\x1b[2Kgone\u202eevil\r\n")
    quoted = quote_block(hostile)
    assert "\x1b" not in quoted and "\x07" not in quoted and "\u202e" not in quoted and "\r" not in quoted
    assert all(line.startswith("    ") for line in quoted.splitlines())
    ours = ("Tested-by: Me <me@example.org>",)
    body = defuse_trailers("Hello\n" + hostile + "\nTested-by: Me <me@example.org>\n", ours)
    lines = body.splitlines()
    assert "Tested-by: Me <me@example.org>" in lines
    assert not any(x.startswith(("Reviewed-by:", "Link:", "Tested-by: kpipe")) for x in lines)
    assert clean("a\tb\nc\x00\x9b") == "a\tb\nc"


def test_a_reply_to_thousands_is_capped_with_a_warning(tmp_path: Path) -> None:
    """#24, with #7's excerpt in the body."""
    from pipeline.flows.mail import MAX_CC, Series, write_reply

    series = Series(subject="[PATCH] x \x1b[31mred", message_id="<m@example.org>", references="<m@example.org>",
                    sender="A <a@example.org>", to=[f"u{i}@example.org" for i in range(5000)], cc=[],
                    patches=(), base_commit=None, skipped=(), date="")
    first = "The series applies but the kernel does not build:\n\n" + quote_block("Reviewed-by: X <x@example.org>")
    reply, warnings = write_reply(series, "summary\nAcked-by: Y <y@example.org>\n", first, "https://r/1",
                                  tmp_path / "reply.eml", passed=False)
    msg = email.message_from_bytes(reply.read_bytes(), policy=email.policy.default)
    assert len(msg["Cc"].addresses) == MAX_CC
    assert any("5000 people" in w for w in warnings)
    raw = reply.read_bytes()
    assert b"\x1b" not in raw
    body = msg.get_content()
    assert not any(x.startswith(("Reviewed-by:", "Acked-by:", "Tested-by:")) for x in body.splitlines())


def test_a_mime_bomb_is_a_one_line_refusal_and_leaves_no_folder(tmp_path: Path, capsys) -> None:
    """#18"""
    from conftest import small_config

    from pipeline.cli import main

    depth = 5000
    parts = ["From x\nFrom: a@example.org\nSubject: [PATCH] deep\nMIME-Version: 1.0\n"]
    for i in range(depth):
        parts.append(f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n')
    mbox = tmp_path / "deep.mbox"
    mbox.write_text("".join(parts) + "Content-Type: text/plain\n\ndiff --git a/x b/x\n")
    cfg = small_config(tmp_path)
    rc = main(["triage", str(mbox), "-c", str(cfg)])
    err = capsys.readouterr().err
    assert rc in (64, 70) and "Traceback" not in err and err.count("\n") <= 2, err
    triage_dir = tmp_path / "runs" / "triage"
    assert not triage_dir.exists() or not any(triage_dir.iterdir())


def test_build_output_costs_bounded_memory(tmp_path: Path) -> None:
    """#8: 40 MB of output without a newline and 1M lines: the result keeps a tail, the log is capped."""
    log = tmp_path / "log"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = run(["sh", "-c", "head -c 40000000 /dev/zero | tr '\\0' x; yes | head -n 1000000"], log_file=log,
              check=False, keep_lines=1000, log_limit=1 << 20)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert len(res.output.splitlines()) == 1000 and res.dropped_lines > 0
    assert log.stat().st_size < (1 << 20) + 128 * 1024 and "log capped" in log.read_text()
    assert grew < 64 * 1024, f"kpipe grew by {grew} KiB for 47 MB of output"  # ru_maxrss is in KiB


def test_a_binary_patch_bomb_is_refused_before_git_sees_it(tmp_path: Path) -> None:
    """#9"""
    from pipeline.stages.patchcheck import UnsafePatch, check_patch_paths

    text = ("diff --git a/fw.bin b/fw.bin\nnew file mode 100644\nindex 0000000..1111111\nGIT binary patch\n"
            "literal 104857600\nzcmeIuK@k8T2m`=<\n\nliteral 0\nHcmV?d00001\n")
    with pytest.raises(UnsafePatch, match="inflates to 104857600"):
        check_patch_paths(text, "bomb")
    check_patch_paths(text.replace("104857600", "1000"), "small")  # a small blob is fine


def test_the_console_is_read_in_bounded_steps(tmp_path: Path) -> None:
    """#17: the boot loop's reads do not grow with the log (a 100 MB console costs what 1 MB does)."""
    from pipeline.machines.executor import LocalExecutor
    from pipeline.stages.boot import CONSOLE_WINDOW, _ConsoleTail

    console = tmp_path / "console.log"
    with open(console, "wb") as f:
        f.write(b"x" * 100_000_000 + b"\nkpipe-ready\n")
    tail = _ConsoleTail(LocalExecutor(), str(console))
    reads = 0
    while "kpipe-ready" not in tail.read():
        reads += 1
        assert len(tail.window) <= CONSOLE_WINDOW
    assert tail.offset == console.stat().st_size and reads >= 95


def test_a_broken_or_torn_sibling_summary_is_skipped(tmp_path: Path) -> None:
    """#25, #26"""
    from pipeline.report.render import write_index

    reports = tmp_path / "reports"
    for name, text in (("good", json.dumps({"status": "done", "analysis": {"headline": "ok"}})),
                       ("torn", '{"status": "do'), ("odd", '{"analysis": 5}'), ("list", "[]")):
        (reports / name).mkdir(parents=True)
        (reports / name / "summary.json").write_text(text)
    page = write_index(reports).read_text()
    assert "good" in page and "torn" not in page

    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(100):
                write_index(reports)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_stale_temp_files_are_removed_when_a_run_folder_is_opened(tmp_path: Path) -> None:
    """#28"""
    from pipeline.records.results import RunFolder

    folder = RunFolder.create(tmp_path / "runs")
    for i in range(20):
        (folder.path / f".results.json.tmp{i}").write_bytes(b"x" * 1000)
    RunFolder.open(folder.path)
    assert not list(folder.path.glob(".results.json.*"))


def test_a_refused_locker_leaves_the_holders_line(tmp_path: Path) -> None:
    """#29"""
    from pipeline.errors import InfraError
    from pipeline.util.lock import cache_lock

    with cache_lock(tmp_path, "the first run"):
        with pytest.raises(InfraError, match="the first run"):
            with cache_lock(tmp_path, "second", wait=False):
                pass
        assert "the first run" in (tmp_path / "lock").read_text()
        with pytest.raises(InfraError, match="the first run"):
            with cache_lock(tmp_path, "third", wait=False):
                pass


def test_serve_survives_nul_paths_and_idle_connections(tmp_path: Path) -> None:
    """#33"""
    from pipeline.cli import _BoundedServer, _ReportHandler

    (tmp_path / "log.txt").write_text("<script>alert(1)</script>")
    import functools

    handler = functools.partial(_ReportHandler, directory=str(tmp_path))
    server = _BoundedServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(_BoundedServer.MAX_CONNECTIONS + 20)]
        time.sleep(0.5)
        assert threading.active_count() < _BoundedServer.MAX_CONNECTIONS + 10
        for s in idle:
            s.close()
        time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/%00/etc/passwd", timeout=5)
        assert info.value.code == 404
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/log.txt", timeout=5) as resp:
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
    finally:
        server.shutdown()
        server.server_close()


def test_each_kernel_image_gets_its_own_host_key(tmp_path: Path) -> None:
    """#35: a kernel that reads its host key learns nothing another candidate's test host uses."""
    import gzip
    import shutil

    if not shutil.which("dropbearkey") or not shutil.which("cpio"):
        pytest.skip("needs dropbear-bin and cpio (./setup.sh)")
    from pipeline.stages.initramfs import Initramfs, SshKeys, with_own_host_key

    base = tmp_path / "initramfs" / "base.cpio.gz"
    base.parent.mkdir()
    with gzip.open(base, "wb") as f:
        f.write(b"070701" + b"0" * 100)
    ini = Initramfs(base, "ab" * 32, "ready", SshKeys(tmp_path / "c", "ssh-ed25519 C", tmp_path / "h",
                                                      "ssh-ed25519 SHARED"), True)
    a, b, a2 = with_own_host_key(ini, "1" * 64), with_own_host_key(ini, "2" * 64), with_own_host_key(ini, "1" * 64)
    assert a.keys.host_pub != b.keys.host_pub and a.keys.host_pub != "ssh-ed25519 SHARED"
    assert a2.keys.host_pub == a.keys.host_pub and a2.path == a.path
    data = a.path.read_bytes()
    start = len(base.read_bytes())
    assert data.startswith(base.read_bytes()) and data[start:].lstrip(b"\0").startswith(b"070701")
    assert (len(data) - len(data[start:].lstrip(b"\0"))) % 4 == 0
    assert os.stat(a.path).st_mode & 0o077 == 0


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    """A real OpenSSH server on 127.0.0.1 standing in for a test host whose kernel misbehaves."""
    import shutil

    import paramiko
    from sshd_hosts import SSHD, SshdHost, keygen

    if not Path(SSHD).exists() or os.geteuid() != 0 or not shutil.which("ssh-keygen"):
        pytest.skip("needs openssh-server and root (./setup.sh --test)")
    root = tmp_path_factory.mktemp("sshd")
    key = root / "client"
    pub = keygen(key)
    host = SshdHost("flood", root, pub)
    host.start()
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # a loopback daemon this fixture made
    client.connect("127.0.0.1", port=host.port, username="root", key_filename=str(key), look_for_keys=False,
                   allow_agent=False)
    yield client
    client.close()
    host.kill()


def test_a_test_host_that_streams_without_end_costs_bounded_memory(sshd) -> None:
    """#36: 64 MB on stdout: the last 1 MiB is kept, the rest counted as dropped."""
    from pipeline.machines.hostcmd import run_command

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = run_command(sshd.get_transport(), "head -c 64000000 /dev/zero; echo; echo tail-line", 120,
                      max_bytes=1 << 20)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert res.ok and res.stdout.rstrip().endswith("tail-line") and res.dropped > 60_000_000
    assert len(res.stdout) < (1 << 20) + 200 and grew < 48 * 1024, f"grew {grew} KiB"


def test_a_test_host_command_past_its_timeout_raises_and_a_background_child_does_not_hold_it(sshd) -> None:
    from pipeline.machines.hostcmd import run_command

    t0 = time.monotonic()
    with pytest.raises(RemoteTimeout):
        run_command(sshd.get_transport(), "echo started; sleep 30", 2)
    assert time.monotonic() - t0 < 10
    t0 = time.monotonic()
    res = run_command(sshd.get_transport(), "(sleep 30 >/dev/null 2>&1 &) ; echo done", 20)
    assert res.stdout.strip() == "done" and time.monotonic() - t0 < 10
