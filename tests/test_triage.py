"""Mailing-list triage: series parsing, threading of the reply, hostile input; and one real run."""
from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, TARBALL, git, small_config

from pipeline.errors import UserError
from pipeline.flows.intake import resolve_source
from pipeline.flows.mail import parse_series, write_reply
from pipeline.records.read import Results
from pipeline.stages.patchcheck import UnsafePatch


def make_mbox(repo: Path, tmp_path: Path, n: int = 2, cover: bool = True, reverse: bool = False) -> Path:
    git(repo, "checkout", "-q", "-b", "topic")
    for i in range(n):
        f = repo / "kernel" / "rcu" / "srcutree.c"
        f.write_text(f.read_text().replace(f"line {5 + i}\n", f"line {5 + i} patched\n"))
        git(repo, "commit", "-q", "-a", "-m", f"srcu: step {i + 1}\n\nBody of step {i + 1}.")
    args = ["format-patch", "--thread", "-o", str(tmp_path / "fp"), "--to=list@example.org",
            "--cc=maint@example.org", "--no-signature", f"HEAD~{n}"]
    if cover:
        args.insert(1, "--cover-letter")
    files = git(repo, *args).split()
    git(repo, "checkout", "-q", "master")
    texts = [Path(f).read_text() for f in files]
    if reverse:
        texts.reverse()
    mbox = tmp_path / "series.mbox"
    mbox.write_text("".join(t if t.endswith("\n") else t + "\n" for t in texts))
    return mbox


def test_series_in_order_cover_letter_skipped(small_repo: Path, tmp_path: Path) -> None:
    series = parse_series(make_mbox(small_repo, tmp_path, reverse=True), tmp_path / "work")
    assert [p.number for p in series.patches] == [1, 2]
    assert [p.subject for p in series.patches] == ["[PATCH 1/2] srcu: step 1", "[PATCH 2/2] srcu: step 2"]
    assert series.skipped and "0/2" in series.skipped[0]
    assert series.subject.startswith("[PATCH 0/2]")  # the reply threads under the cover letter
    assert series.to == ["list@example.org"] and series.cc == ["maint@example.org"]
    # The extracted patches apply with git am, in order.
    git(small_repo, "am", *[str(p.path) for p in series.patches])
    assert "line 6 patched" in (small_repo / "kernel/rcu/srcutree.c").read_text()


def test_reply_threads_under_the_original(small_repo: Path, tmp_path: Path) -> None:
    series = parse_series(make_mbox(small_repo, tmp_path), tmp_path / "work")
    reply, warnings = write_reply(series, "summary text\n", "The series regresses.", "http://x/r/index.html",
                                  tmp_path / "reply.eml", "To reproduce:\n  kpipe triage x.mbox", "run-1")
    msg = email.message_from_bytes(reply.read_bytes(), policy=email.policy.default)
    assert msg["In-Reply-To"] == series.message_id and series.message_id.startswith("<")
    assert series.message_id in msg["References"]
    assert msg["Subject"] == "Re: " + series.subject
    assert msg["To"] == series.sender and "list@example.org" in msg["Cc"]
    assert msg["From"]  # a reply without From: is not ready to send
    body = msg.get_content()
    assert "The series regresses." in body and "http://x/r/index.html" in body
    assert "kpipe triage x.mbox" in body and "\n-- \nkpipe run run-1\n" in body
    assert b"\r\n" not in reply.read_bytes()  # LF, as git send-email and sendmail -t expect
    assert f"wrote:\n> {series.subject}\n" in body  # the subject quoted, as replies do
    assert "Tested-by:" not in body  # only when the series passed
    reply, _ = write_reply(series, "s\n", "No change.", "http://x/", tmp_path / "ok.eml",
                           sender_setting="Lab <lab@example.org>", passed=True)
    msg = email.message_from_bytes(reply.read_bytes(), policy=email.policy.default)
    assert msg["From"] == "Lab <lab@example.org>" and "\nTested-by: Lab <lab@example.org>\n" in msg.get_content()


def test_reply_wraps_prose_keeps_names_and_warns(small_repo: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KPIPE_FROM", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no git identity
    series = parse_series(make_mbox(small_repo, tmp_path), tmp_path / "work")
    series = dataclasses.replace(series, cc=['"Paul E. McKenney" <paulmck@example.org>'])
    long_para = "The series makes no significant change to the guest boot time " * 4
    excerpt = "    " + "x" * 2000
    reply, warnings = write_reply(series, "table\n", long_para + "\n\n" + excerpt, "reports/r1/index.html",
                                  tmp_path / "reply.eml")
    raw = reply.read_bytes()
    assert all(len(line) <= 998 for line in raw.split(b"\n"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    first = msg.get_content().split("\n\n")[0]
    assert all(len(line) <= 72 for line in first.splitlines()) and len(first.splitlines()) > 1
    assert "Paul E. McKenney" in msg["Cc"]
    assert any("KPIPE_FROM" in w for w in warnings) and any("base_url" in w for w in warnings)
    monkeypatch.setenv("KPIPE_FROM", "Tester <t@example.org>")
    reply, warnings = write_reply(series, "t\n", "p", "https://ci.example.org/r1/index.html", tmp_path / "r2.eml")
    assert warnings == []
    assert "t@example.org" in email.message_from_bytes(reply.read_bytes(), policy=email.policy.default)["From"]


def patch_message(subject: str, msgid: str, line: int, extra_headers: str = "") -> str:
    return (f"From kpipe Mon Sep 17 00:00:00 2001\nFrom: A <a@example.org>\nTo: list@example.org\n"
            f"Subject: {subject}\nMessage-ID: <{msgid}@example.org>\n{extra_headers}\nBody.\n---\n"
            f"diff --git a/kernel/rcu/srcutree.c b/kernel/rcu/srcutree.c\n--- a/kernel/rcu/srcutree.c\n"
            f"+++ b/kernel/rcu/srcutree.c\n@@ -{line} +{line} @@\n-line {line}\n+line {line} new\n\n")


def test_thread_with_two_versions_and_a_review_diff_gives_the_newest_series(tmp_path: Path) -> None:
    mbox = tmp_path / "thread.mbox"
    mbox.write_text(
        patch_message("[PATCH 1/2] srcu: a", "v1-1", 5) + patch_message("[PATCH 2/2] srcu: b", "v1-2", 6)
        + patch_message("Re: [PATCH 1/2] srcu: a", "review", 7, "In-Reply-To: <v1-1@example.org>\n")
        + patch_message("[PATCH v2 1/2] srcu: a", "v2-1", 5) + patch_message("[PATCH v2 2/2] srcu: b", "v2-2", 6))
    series = parse_series(mbox, tmp_path / "work")
    assert [p.subject for p in series.patches] == ["[PATCH v2 1/2] srcu: a", "[PATCH v2 2/2] srcu: b"]
    assert "Re: [PATCH 1/2] srcu: a" in series.skipped and "[PATCH 1/2] srcu: a" in series.skipped


def test_single_patch_without_cover_letter(small_repo: Path, tmp_path: Path) -> None:
    series = parse_series(make_mbox(small_repo, tmp_path, n=1, cover=False), tmp_path / "work")
    assert len(series.patches) == 1 and series.subject.startswith("[PATCH]")


def hostile_message(subject: str, diff: str) -> bytes:
    return (f"From: Mallory <m@example.org>\nTo: list@example.org\nSubject: {subject}\n"
            f"Message-ID: <evil@example.org>\n\nText.\n---\n{diff}").encode()


@pytest.mark.parametrize("diff,why", [
    ("--- a/../../etc/passwd\n+++ b/../../etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "outside the tree"),
    ("--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "outside the tree"),
    ("diff --git a/l b/l\nnew file mode 120000\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+/etc\n", "symlink"),
])
def test_hostile_paths_are_refused(tmp_path: Path, diff: str, why: str) -> None:
    src = tmp_path / "evil.eml"
    src.write_bytes(hostile_message("[PATCH] evil", diff))
    with pytest.raises(UnsafePatch, match=why):
        parse_series(src, tmp_path / "work")


def test_non_patch_and_oversized_emails_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "chat.eml"
    src.write_bytes(b"From: a@example.org\nSubject: Re: hello\n\nJust chatting.\n")
    with pytest.raises(UserError, match="no patch found"):
        parse_series(src, tmp_path / "work")
    big = tmp_path / "big.mbox"
    with open(big, "wb") as f:
        f.truncate(21 * 1024 * 1024)
    with pytest.raises(UserError, match="larger than"):
        parse_series(big, tmp_path / "work")


def test_header_injection_does_not_add_headers(tmp_path: Path) -> None:
    diff = "--- a/README\n+++ b/README\n@@ -1 +1 @@\n-a\n+b\n"
    src = tmp_path / "inj.eml"
    src.write_bytes(hostile_message("=?utf-8?q?x=0D=0ABcc:_victim@example.org?= <script>", diff))
    series = parse_series(src, tmp_path / "work")
    reply, _ = write_reply(series, "s\n", "p", "l", tmp_path / "reply.eml")
    msg = email.message_from_bytes(reply.read_bytes(), policy=email.policy.default)
    assert msg["Bcc"] is None


def test_message_id_offline_says_to_pass_the_mbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no b4 here, as on an offline machine without it
    with pytest.raises(UserError, match="pass its path instead"):
        resolve_source("<20220611.1234-1-someone@example.org>", tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not TARBALL.exists(), reason="apt-get install linux-source-6.1")
def test_triage_of_the_regression_patch_and_of_a_patch_that_does_not_apply(built_kernel, e2e_cache: Path,
                                                                            tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.cli import main

    monkeypatch.setenv("KPIPE_CACHE_DIR", str(e2e_cache))
    # The faithful regression (~15 ms per grace period), with the default's sequential rule: a disturbed
    # baseline run (CI saw one take 4.79 s beside 2.37 and 2.54) leaves 3 against 3 undecided, and the rule
    # then adds the cheap baseline runs that decide it, as the default evaluation would.
    cfg = small_config(tmp_path, cycles=300, counted=3, repetitions="looks: 3, max_counted: 8, budget_s: 60")
    posted = (REPO / "patches/0001-srcu-v5.19-rc1-expedited-policy-regression.patch").read_text()
    posted = posted.replace("\nSubject: ", "\nMessage-ID: <regression-1@example.org>\nTo: rcu@example.org\n"
                            "Subject: ", 1)
    mbox = tmp_path / "posted.mbox"
    mbox.write_text(posted)
    assert main(["triage", str(mbox), "-c", str(cfg)]) == 3  # regression
    report = next(p for p in (tmp_path / "reports").iterdir() if p.is_dir())
    summary = json.loads((report / "summary.json").read_text())
    assert summary["analysis"]["regressions"] == ["series-srcu-bring-back-the-v5.19-rc1-expedited-grace-period-poli"]
    reply = email.message_from_bytes((report / "reply.eml").read_bytes(), policy=email.policy.default)
    assert reply["In-Reply-To"] == "<regression-1@example.org>"
    assert reply["Subject"].startswith("Re: [PATCH] srcu: bring back")
    body = reply.get_content()
    assert "regresses the guest boot time" in body
    # What 0-day's reports give: the machine, the table, the tags, an archive and a bundle that are there.
    assert "Machine:   " in body and "threads" in body and "flash cycles" in body
    assert "%change" in body and "guest boot s" in body
    assert "| Reported-by: " in body and "| Closes: https://lore.kernel.org/r/regression-1@example.org" in body
    assert (report / "reproduce.tar.gz").is_file() and (report / "tested-commits.bundle").is_file()
    assert "reproduce.tar.gz" in body and "tested-commits.bundle" in body
    verify = subprocess.run(["git", "bundle", "list-heads", str(report / "tested-commits.bundle")],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "refs/kpipe/triage/" in verify.stdout
    long = [x for x in body.splitlines() if len(x) > 72 and not x.startswith((">", "    ")) and "://" not in x
            and "reports/" not in x]
    assert not long, long
    published = (report / "results.json").read_text() + (report / "metadata.json").read_text()
    assert str(e2e_cache) not in published and str(Path.home()) + "/" not in published

    conflicting = posted.replace("-#define SRCU_INTERVAL", "-#define SRCU_INTERVAL_NOT_THERE").replace(
        "<regression-1@", "<conflict-1@")
    bad = tmp_path / "bad.mbox"
    bad.write_text(conflicting)
    # Any context mismatch makes it fail; check the reply names the patch and file.
    text = bad.read_text()
    text = text.replace(" static unsigned long srcu_get_delay(struct srcu_struct *ssp)",
                        " static unsigned long srcu_get_delay_renamed(struct srcu_struct *ssp)", 1)
    bad.write_text(text)
    assert main(["triage", str(bad), "-c", str(cfg)]) == 4  # could not be evaluated
    newest = sorted((p for p in (tmp_path / "reports").iterdir() if p.is_dir()), key=lambda p: p.name)[-1]
    reply = email.message_from_bytes((newest / "reply.eml").read_bytes(), policy=email.policy.default)
    body = reply.get_content()
    assert "does not apply" in body and "kernel/rcu/srcutree.c" in body
    assert reply["In-Reply-To"] == "<conflict-1@example.org>"


@pytest.mark.parametrize("status,stage,expect", [
    ("build-failed", "build", "does not build"),
    ("boot-failed", "boot", "does not boot (boot-failed)"),
    ("boot-timeout", "boot", "does not boot (boot-timeout)"),
])
def test_outcome_quotes_the_failure(small_repo: Path, tmp_path: Path, status: str, stage: str, expect: str) -> None:
    from pipeline.flows.triage import outcome

    series = parse_series(make_mbox(small_repo, tmp_path), tmp_path / "work")
    results = {"candidates": {"s": {"status": status, "stages": {stage: {"excerpt": "srcutree.c:12: error: x"}}}}}
    text = outcome(results, {"rows": []}, "s", series)
    assert expect in text and "srcutree.c:12: error: x" in text


@pytest.mark.parametrize("verdict,word", [("slower", "regresses"), ("faster", "improves"),
                                          ("no significant change", "makes no significant change to"),
                                          ("inconclusive", "may change (undecided)")])
def test_outcome_verdict_words(small_repo: Path, tmp_path: Path, verdict: str, word: str) -> None:
    from pipeline.flows.triage import outcome

    series = parse_series(make_mbox(small_repo, tmp_path), tmp_path / "work")
    comp = {"boot_s": {"verdict": verdict, "change_pct": 12.0, "change_ci_low": 3.0, "change_ci_high": 21.5,
                       "p_value": 0.01},
            "host_cpu_s": {"verdict": "less CPU", "change_pct": -3.0}}
    text = outcome({"candidates": {"s": {"status": "ok"}}}, {"rows": [{"name": "s", "comparisons": comp}]}, "s",
                   series)
    assert text.startswith(f"The series {word} the guest boot time: +12.0% [+3.0%, +21.5%] (p = 0.0100)")


def test_outcome_of_censored_runs_is_a_lower_bound(small_repo: Path, tmp_path: Path) -> None:
    from pipeline.flows.triage import outcome

    series = parse_series(make_mbox(small_repo, tmp_path), tmp_path / "work")
    comp = {"boot_s": {"verdict": "slower", "change_pct": 300.0, "p_value": 0.0001, "censored": 3},
            "host_cpu_s": {"verdict": "too few runs"}}
    text = outcome({"candidates": {"s": {"status": "ok"}}, "settings": {"censor_factor": 4.0}},
                   {"rows": [{"name": "s", "n": 3, "comparisons": comp}]}, "s", series)
    assert "regresses the guest boot time: at least +300.0%" in text and "stopped at 4x" in text


@pytest.mark.parametrize("mbox", sorted((Path(__file__).parent / "data" / "hostile").glob("*.mbox")),
                         ids=lambda p: p.name)
def test_hostile_mail_gives_a_clear_refusal_or_a_safe_reply(mbox: Path, tmp_path: Path) -> None:
    """Every hostile file: either a UserError, or a series whose reply is one well-formed message."""
    try:
        series = parse_series(mbox, tmp_path / "series")
    except UserError as exc:
        assert str(exc)
        return
    path, _ = write_reply(series, "summary", "first paragraph", "https://example.org/r/", tmp_path / "reply.eml",
                          sender_setting="Tester <t@example.org>")
    raw = path.read_bytes()
    assert all(len(line) <= 998 for line in raw.split(b"\n"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert "bcc" not in {k.lower() for k in msg.keys()}
    assert msg["From"] == "Tester <t@example.org>"
    assert len([k for k in msg.keys() if k.lower() == "subject"]) == 1


@pytest.mark.slow
@pytest.mark.skipif(not TARBALL.exists(), reason="apt-get install linux-source-6.1")
def test_comment_only_series_is_answered_as_binary_identical_without_measuring(
        built_kernel, fetched, e2e_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import difflib

    from pipeline.cli import main
    from pipeline.util.gitutil import git as pgit

    monkeypatch.setenv("KPIPE_CACHE_DIR", str(e2e_cache))
    cfg = small_config(tmp_path, cycles=300, counted=3)
    old = pgit(["show", f"{fetched.commit}:kernel/rcu/srcutree.c"], fetched.store).output.splitlines(keepends=True)
    new = list(old)
    line = next(i for i, x in enumerate(old) if x.startswith(" * Sleepable Read-Copy Update"))
    new[line] = new[line].replace("Sleepable Read-Copy Update", "Sleepable read-copy update")  # same line count
    diff = "".join(difflib.unified_diff(old, new, "a/kernel/rcu/srcutree.c", "b/kernel/rcu/srcutree.c"))
    mbox = tmp_path / "comment.mbox"
    mbox.write_text("From: Tidy Person <tidy@example.org>\nSubject: [PATCH] srcu: lower-case a comment\n"
                    f"Message-ID: <comment-1@example.org>\n\nA comment only.\n---\n{diff}")
    assert main(["triage", str(mbox), "-c", str(cfg)]) == 0
    report = next(p for p in (tmp_path / "reports").iterdir() if p.is_dir())
    results = json.loads((report / "results.json").read_text())
    cand = next(n for n in results["candidates"] if n != "base")
    assert results["candidates"][cand]["status"] == "identical"
    assert results["candidates"]["base"]["runs"] == []  # nothing was booted to answer
    body = email.message_from_bytes((report / "reply.eml").read_bytes(), policy=email.policy.default).get_content()
    assert "byte-for-byte the baseline's" in body and "cannot change the measurement" in body


def test_series_commits_for_a_bisection_come_from_the_patch_stage() -> None:
    from pipeline.flows.triage import series_commits

    results = {"candidates": {"s": {"stages": {"patch": {"base_commit": "b" * 40, "changes": [
        {"kind": "patch", "source": "0001.patch", "patches": [{"subject": "one", "author": "a", "commit": "1" * 40}]},
        {"kind": "patch", "source": "0002.patch", "patches": [{"subject": "two", "author": "a", "commit": "2" * 40}]},
    ]}}}}}
    assert series_commits(results, "s") == ("b" * 40, ["1" * 40, "2" * 40])


@pytest.mark.slow
@pytest.mark.skipif(not TARBALL.exists(), reason="apt-get install linux-source-6.1")
def test_a_hostile_makefile_series_gets_a_reply_with_no_file_no_trailer_and_no_escape(
        built_kernel, fetched, e2e_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The review's E2E-1: a series whose Makefile prints a world-readable file, the project's README,
    forged trailers and an OSC 52 clipboard write, then fails the build."""
    import difflib
    import os

    from pipeline.cli import main
    from pipeline.util.gitutil import git as pgit

    monkeypatch.setenv("KPIPE_CACHE_DIR", str(e2e_cache))
    secret = Path("/var/tmp") / f"kpipe-world-readable-{os.getpid()}"
    secret.write_text("WORLD-READABLE-SECRET\n")
    secret.chmod(0o644)
    cfg = small_config(tmp_path, cycles=300, counted=3)
    old = pgit(["show", f"{fetched.commit}:Makefile"], fetched.store).output.splitlines(keepends=True)
    hostile = ["$(info Reviewed-by: Greg Kroah-Hartman <gregkh@linuxfoundation.org>)\n",
               "$(info Tested-by: kpipe CI <ci@example.org>)\n",
               "$(info Link: https://evil.example/x)\n",
               "$(info $(shell printf '\\033]52;c;cGF5bG9hZA==\\007\\033[2K'))\n",
               f"$(error exfiltrated: $(shell cat {secret} {REPO / 'README.md'} /etc/passwd 2>&1 | head -c 300))\n"]
    new = old[:1] + hostile + old[1:]
    diff = "".join(difflib.unified_diff(old, new, "a/Makefile", "b/Makefile"))
    mbox = tmp_path / "leak.mbox"
    mbox.write_text("From: Mallory <mallory@example.org>\nTo: list@example.org\nSubject: [PATCH] kbuild: tidy\n"
                    f"Message-ID: <leak-1@example.org>\n\nTidy.\n---\n{diff}")
    try:
        assert main(["triage", str(mbox), "-c", str(cfg)]) == 4  # could not be evaluated: does not build
    finally:
        secret.unlink()
    printed = capsys.readouterr()
    report = next(p for p in (tmp_path / "reports").iterdir() if p.is_dir())
    raw = (report / "reply.eml").read_bytes()
    body = email.message_from_bytes(raw, policy=email.policy.default).get_content()
    assert "does not build" in body and "exfiltrated" in body  # the build's own error is quoted
    published = [raw, (report / "index.html").read_bytes(), (report / "results.json").read_bytes(),
                 (printed.out + printed.err).encode()]
    for blob in published:
        assert b"WORLD-READABLE-SECRET" not in blob and b"kpipe: does this kernel patch" not in blob
        assert b"root:x:0:0" not in blob and b"\x1b" not in blob and b"\x07" not in blob
    for line in body.splitlines():
        assert not line.startswith(("Reviewed-by:", "Tested-by:", "Link:")), line


def test_reply_parts_a_maintainer_acts_on(tmp_path: Path) -> None:
    """The 0-day-style parts, on a committed run: machine and workload lines, the LKP-style table, the tags
    of a regression, and an archive whose pipeline.yaml loads: all within 72 columns."""
    import tarfile

    from pipeline.config import load_config
    from pipeline.flows.reproduce import fix_tags, lkp_table, machine_lines, workload_lines, write_archive

    run = REPO / "reports" / "20261127-053509-d16e"
    results = json.loads((run / "results.json").read_text())
    metadata = json.loads((run / "metadata.json").read_text())
    metadata["machine"] = {"cpu_model": "AMD EPYC 7B13", "cpus": "2", "mem_kb": str(24 * 1024**2),
                           "kernel": "6.1.0-28-amd64"}
    table = lkp_table(Results.from_json(results), "baseline", "regression-282d8998")
    lines = machine_lines(metadata) + workload_lines(metadata) + table.splitlines()
    assert all(len(x) <= 72 for x in lines), [x for x in lines if len(x) > 72]
    assert lines[0] == "Machine:   AMD EPYC 7B13, 2 threads, 24 GiB RAM"
    assert "3100 flash cycles" in " ".join(lines) and "placement apart" in " ".join(lines)
    boot = next(x for x in table.splitlines() if x.endswith("guest boot s"))
    # The verdict's change (ratio of geometric means), not the medians' 149.18 s / 8.43 s.
    from pipeline.report.analysis import analyze

    row = next(r for r in analyze(results)["rows"] if r["name"] == "regression-282d8998")
    assert f"{row['comparisons']['boot_s']['change_pct']:+.1f}%" in boot and "149.2" in boot
    tags = fix_tags("kpipe CI <ci@example.org>", "<m-1@example.org>")
    assert "| Reported-by: kpipe CI <ci@example.org>" in tags
    assert "| Closes: https://lore.kernel.org/r/m-1@example.org" in tags
    cfg = load_config(REPO / "pipeline.yaml")
    patch = REPO / "patches" / "0001-srcu-v5.19-rc1-expedited-policy-regression.patch"
    archive = write_archive(cfg, Results.from_json(results), [patch], "regression-282d8998", run,
                            tmp_path / "reproduce.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    assert (tmp_path / "reproduce" / "patches" / patch.name).read_bytes() == patch.read_bytes()
    assert "kpipe run -c reproduce/pipeline.yaml" in (tmp_path / "reproduce" / "README").read_text()
    again = load_config(tmp_path / "reproduce" / "pipeline.yaml")
    assert [c.name for c in again.candidates] == ["baseline", "regression-282d8998"]
    assert again.workload == cfg.workload and again.repetitions.counted == cfg.repetitions.counted
    # The second workloads too, the firmware recording copied in: the same settings, the same pattern.
    assert [(w.name, w.kind, w.args, w.headline) for w in again.workloads] == \
        [(w.name, w.kind, w.args, w.headline) for w in cfg.workloads]


def _thread_with_reviews(repo: Path, tmp_path: Path) -> Path:
    """v1 and v2 of a 2-patch series (v2 with a cover letter and a base-commit), a Reviewed-by reply to v2's
    patch 1 and an Acked-by reply to its cover letter, as a thread saved from a list."""
    base = git(repo, "rev-parse", "HEAD").strip()
    texts = []
    for version, extra in (("1", []), ("2", ["--cover-letter", "--base", base])):
        git(repo, "checkout", "-q", "-b", f"topic-v{version}", base)
        for i in range(2):  # v2 reworded: new commits, so new Message-IDs, as a real v2 has
            f = repo / "kernel" / "rcu" / "srcutree.c"
            f.write_text(f.read_text().replace(f"line {5 + i}\n", f"line {5 + i} patched\n"))
            git(repo, "commit", "-q", "-a", "-m", f"srcu: step {i + 1}\n\nBody of step {i + 1} (v{version}).\n\n"
                "Signed-off-by: Alice Dev <alice@example.org>")
        files = git(repo, "format-patch", "--thread", "-v", version, "-o", str(tmp_path / f"fp{version}"),
                    "--to=list@example.org", "--no-signature", *extra, "HEAD~2").split()
        texts += [Path(f).read_text() for f in files]
        git(repo, "checkout", "-q", "master")

    def ids(text: str) -> str:
        return next(x for x in text.splitlines() if x.lower().startswith("message-id:")).split(":", 1)[1].strip()

    cover, v2_1 = ids(texts[2]), ids(texts[3])
    replies = [
        f"From rita Mon Sep 17 00:00:00 2001\nFrom: Rita Reviewer <rita@example.org>\nTo: list@example.org\n"
        f"Subject: Re: [PATCH v2 1/2] srcu: step 1\nMessage-ID: <r1@example.org>\nIn-Reply-To: {v2_1}\n"
        f"References: {cover} {v2_1}\nDate: Wed, 02 Dec 2026 12:00:00 +0000\n\n> Body of step 1.\n\n"
        "Reviewed-by: Rita Reviewer <rita@example.org>\n",
        f"From ann Mon Sep 17 00:00:00 2001\nFrom: Ann Acker <ann@example.org>\nTo: list@example.org\n"
        f"Subject: Re: [PATCH v2 0/2] *** SUBJECT HERE ***\nMessage-ID: <r0@example.org>\nIn-Reply-To: {cover}\n"
        f"References: {cover}\nDate: Wed, 02 Dec 2026 13:00:00 +0000\n\nAcked-by: Ann Acker <ann@example.org>\n",
    ]
    mbox = tmp_path / "thread.mbox"
    mbox.write_text("".join(t if t.endswith("\n") else t + "\n" for t in texts + replies))
    return mbox


def test_b4_reads_the_thread_the_newest_revision_with_its_trailers(small_repo: Path, tmp_path: Path) -> None:
    """Intake through b4: v2 is tested, the replies' Reviewed-by and Acked-by are in the commits tested (as
    `b4 am` puts them), the base-commit is v2's; the reply names the revision and quotes the trailers
    prefixed, never as trailers of its own."""
    pytest.importorskip("b4")
    from pipeline.flows.triage import intake_lines

    base = git(small_repo, "rev-parse", "HEAD").strip()
    series = parse_series(_thread_with_reviews(small_repo, tmp_path), tmp_path / "work")
    assert series.intake.startswith("b4 ") and series.revision == 2
    assert [p.subject for p in series.patches] == ["[PATCH v2 1/2] srcu: step 1", "[PATCH v2 2/2] srcu: step 2"]
    assert series.base_commit == base
    assert "Reviewed-by: Rita Reviewer <rita@example.org> (patch 1)" in series.trailers
    assert "Acked-by: Ann Acker <ann@example.org> (the series)" in series.trailers
    git(small_repo, "am", *[str(p.path) for p in series.patches])
    first = git(small_repo, "log", "-1", "--format=%B", "HEAD~1")
    assert "Reviewed-by: Rita Reviewer <rita@example.org>" in first and "Acked-by: Ann Acker" in first
    lines = intake_lines(series)
    assert lines[0].startswith("Tested:    v2 of the series") and "b4" in lines[0]
    assert "| Reviewed-by: Rita Reviewer <rita@example.org> (patch 1)" in lines
    assert all(len(x) <= 72 for x in lines)


def test_a_thread_b4_cannot_read_is_read_by_kpipe_and_the_reply_says_so(
        small_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b4 = pytest.importorskip("b4")

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("hostile header")

    monkeypatch.setattr(b4, "LoreMailbox", broken)
    series = parse_series(_thread_with_reviews(small_repo, tmp_path), tmp_path / "work")
    assert series.revision == 2 and len(series.patches) == 2 and series.trailers == ()
    assert series.intake.startswith("b4 could not read the thread (ValueError: hostile header)")
    assert b4.can_network is True  # b4's own settings are given back
