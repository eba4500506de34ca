"""Rendering from saved real results.json files: failed candidates, hostile strings, 72 columns."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.report.analysis import analyze
from pipeline.report.render import render_html, render_text, write_report

DATA = Path(__file__).parent / "data"
HOSTILE = '<script>alert("x")</script> srcu: & "quoted"'


@pytest.fixture
def real() -> tuple[dict, dict]:
    return (json.loads((DATA / "results-real.json").read_text()),
            json.loads((DATA / "metadata-real.json").read_text()))


def with_failures(results: dict) -> dict:
    """The real run plus a candidate whose patch did not apply, carrying hostile strings."""
    r = copy.deepcopy(results)
    r["candidate_order"].append("evil")
    r["candidates"]["evil"] = {
        "name": "evil", "status": "patch-failed", "status_detail": HOSTILE, "runs": [], "warmup_runs": [],
        "stages": {"patch": {"status": "fail", "message": HOSTILE, "excerpt": "error: patch failed: " + HOSTILE,
                             "location": "kernel/rcu/srcutree.c:565"}}}
    # A hostile subject and author on a real applied patch as well.
    for c in r["candidates"].values():
        for ch in c.get("stages", {}).get("patch", {}).get("changes", []):
            for p in ch.get("patches", []):
                p["subject"] = HOSTILE
                p["author"] = "<img src=x onerror=alert(1)> <a@b>"
    return r


def test_regression_is_found_in_the_real_run(real) -> None:
    results, _ = real
    a = analyze(results)
    assert a["baseline"] == "baseline"
    assert "regression-282d8998" in a["regressions"]
    row = next(r for r in a["rows"] if r["name"] == "regression-282d8998")
    assert row["comparisons"]["boot_s"]["p_value"] < 0.05
    assert row["comparisons"]["boot_s"]["change_ci_low"] > 0


def test_text_summary_fits_72_columns(real) -> None:
    results, metadata = real
    text = render_text(with_failures(results), metadata)
    assert all(len(line) <= 72 for line in text.splitlines()), text
    assert "regression-282d8998" in text and "slower" in text
    assert "evil: patch-failed" in text


def test_html_escapes_hostile_strings(real) -> None:
    results, metadata = real
    page = render_html(with_failures(results), metadata)
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;" in page
    assert "kernel/rcu/srcutree.c:565" in page
    assert page.count("<svg") >= 5


def test_write_report_and_index(real, tmp_path: Path) -> None:
    results, metadata = real
    run_dir = tmp_path / "runs" / results["run_id"]
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(with_failures(results)))
    (run_dir / "metadata.json").write_text(json.dumps(metadata))
    out = write_report(run_dir, tmp_path / "reports")
    assert (out / "index.html").exists() and (out / "summary.txt").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert "evil" in summary["analysis"]["failed"]
    index = (tmp_path / "reports" / "index.html").read_text()
    assert results["run_id"] in index and "<script>" not in index


def test_report_command_formats_and_exit_code(real, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results, metadata = real
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(DATA / "results-real.json", run_dir / "results.json")
    shutil.copy(DATA / "metadata-real.json", run_dir / "metadata.json")
    # No config and no kernel source needed: the run folder is enough.
    assert main(["report", str(run_dir), "--format", "text"]) == 3  # regression found
    assert "Full report:" in capsys.readouterr().out
    assert main(["report", str(run_dir), "--format", "json"]) == 3
    assert json.loads(capsys.readouterr().out)["analysis"]["regressions"]
    out = tmp_path / "published"
    assert main(["report", str(run_dir), "--output", str(out)]) == 3
    assert (out / results["run_id"] / "index.html").is_file()
    assert main(["report", "no-such-run", "--runs-dir", str(tmp_path)]) == 64


def test_swept_parameter_is_found_and_plotted(real) -> None:
    from pipeline.records.read import Results
    from pipeline.report.plots import swept_parameters

    results, metadata = real
    r = copy.deepcopy(results)
    src = r["candidates"]["srcu-params-5.19"]
    r["candidates"]["phase-10"] = copy.deepcopy(src)
    r["candidate_order"].append("phase-10")
    r["candidate_specs"]["phase-10"] = {"changes": [{"kind": "cmdline",
                                                    "value": "srcutree.srcu_max_nodelay_phase=10"}]}
    r["candidates"]["phase-1"] = copy.deepcopy(src)
    r["candidate_order"].append("phase-1")
    r["candidate_specs"]["phase-1"] = {"changes": [{"kind": "cmdline", "value": "srcutree.srcu_max_nodelay_phase=1"}]}
    sweeps = swept_parameters(Results.from_json(r), r["candidate_order"])
    # srcu-params-5.19 changes two parameters at once: not a point of either sweep.
    assert [(v, n) for v, n in sweeps["srcutree.srcu_max_nodelay_phase"]] == [(1.0, "phase-1"), (10.0, "phase-10")]
    assert "srcutree.srcu_max_nodelay" not in sweeps
    page = render_html(r, metadata)
    assert "Swept boot parameter srcutree.srcu_max_nodelay_phase" in page


def _published(tmp_path: Path) -> tuple[Path, Path]:
    """A report as committed under reports/<run-id>/: results, metadata and logs side by side."""
    reports = tmp_path / "reports"
    results = json.loads((DATA / "results-real.json").read_text())
    out = reports / results["run_id"]
    (out / "logs" / "baseline").mkdir(parents=True)
    shutil.copy(DATA / "results-real.json", out / "results.json")
    shutil.copy(DATA / "metadata-real.json", out / "metadata.json")
    (out / "logs" / "baseline" / "build.log").write_text("make -j2 bzImage\n")
    return reports, out


def test_rendering_a_published_report_in_place_loses_nothing(tmp_path: Path) -> None:
    reports, out = _published(tmp_path)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert write_report(out, reports) == out
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for name, data in before.items():
        assert after.get(name) == data, f"{name} was changed or deleted"
    assert (out / "index.html").is_file() and (reports / "index.html").is_file()


def test_results_json_is_data_not_instructions(tmp_path: Path) -> None:
    reports, out = _published(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for publishing\n")
    run = tmp_path / "run"
    shutil.copytree(out, run)
    (run / "logs" / "baseline" / "leak.log").symlink_to(secret)
    (run / "logs" / "linked").symlink_to(tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["candidates"]["baseline"]["stages"]["build"]["log"] = "javascript:alert(1)"
    results["candidates"]["baseline"]["stages"]["boot"]["console_log"] = "../../../etc/passwd"
    (run / "results.json").write_text(json.dumps(results))
    page = write_report(run, reports / "x").joinpath("index.html").read_text()
    assert "javascript:" not in page and "../../../etc/passwd\"" not in page
    published = list((reports / "x").rglob("*"))
    assert not any("leak" in p.name or "linked" in p.parts for p in published)
    assert not any(p.is_file() and p.read_text(errors="replace") == "not for publishing\n" for p in published)
    results["run_id"] = "../outside"
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(UserError, match="is not a run id"):
        write_report(run, reports)
    assert not (tmp_path / "outside").exists()


def test_current_results_render_with_controls_tradeoff_and_on_top_comparisons(tmp_path: Path) -> None:
    """The default evaluation's own results.json (2026-11-27): per-grace-period figures, controls with their
    predictions, the fix-on-regression comparison, the histogram."""
    results = json.loads((DATA / "results-v2.json").read_text())
    metadata = json.loads((DATA / "metadata-v2.json").read_text())
    a = analyze(results)
    assert a["regressions"] == ["regression-282d8998"]  # controls found slower are not regressions
    rows = {r["name"]: r for r in a["rows"]}
    assert 12 < rows["regression-282d8998"]["summaries"]["gp_ms"]["median"] < 20
    assert rows["regression-282d8998"]["comparisons"]["boot_s"]["test"] == "welch-log"
    [top] = rows["kvm-srcu-nodelay-on-regression"]["on_top_of"]
    assert top["reference"] == "regression-282d8998" and top["boot_s"]["verdict"] == "faster"
    page = render_html(results, metadata, a)
    for anchor in ('id="tradeoff"', 'id="controls"', 'id="on-top-of"', 'id="plot-histogram"', 'id="tcg-caveat"'):
        assert anchor in page
    assert "Prediction" in page
    text = render_text(results, metadata, a)
    assert all(len(line) <= 72 for line in text.splitlines())
    assert "kvm-srcu-nodelay-on-regression vs regression-282d8998" in text


def test_every_committed_report_re_renders_byte_identical(tmp_path: Path) -> None:
    """The JSON shape and the renderer agree with what was published: each committed run folder under
    reports/ renders to the same index.html, summary.txt and summary.json it holds."""
    from pipeline.report.render import write_report

    root = Path(__file__).resolve().parent.parent / "reports"
    runs = sorted(p for p in root.iterdir() if (p / "results.json").is_file())
    assert runs, "no committed report to check"
    for run in runs:
        if (run / "reply.eml").is_file():  # a triage report links its reply when the reply is beside it
            (tmp_path / run.name).mkdir(parents=True, exist_ok=True)
            (tmp_path / run.name / "reply.eml").write_bytes((run / "reply.eml").read_bytes())
        out = write_report(run, tmp_path)
        for name in ("index.html", "summary.txt", "summary.json"):
            assert (out / name).read_bytes() == (run / name).read_bytes(), f"{run.name}/{name} renders differently"


def test_published_documents_carry_no_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.report.publish import publishable

    monkeypatch.setenv("KPIPE_CACHE_DIR", "/srv/ci/kpipe-cache")
    run = tmp_path / "runs" / "20260101-000000-abcd"
    doc = {"build": {"dir": "/srv/ci/kpipe-cache/builds/0a1b", "log": f"{run}/logs/x/build.log"},
           "origin": "/usr/src/linux-source-6.1.tar.xz", "msg": "cannot open /home/alice/secret/key.pem: denied",
           "url": "https://example.org/a/b", "list": [f"{Path.home()}/.ssh/id"], "plain": "no path here"}
    out = publishable(doc, run)
    text = json.dumps(out)
    assert "/srv/ci" not in text and "/home/alice" not in text and str(Path.home()) + "/" not in text
    assert out["build"]["dir"] == "<cache>/builds/0a1b" and out["build"]["log"] == "<run>/logs/x/build.log"
    assert out["origin"] == "/usr/src/linux-source-6.1.tar.xz" and out["url"] == "https://example.org/a/b"
    assert out["msg"] == "cannot open <local>/key.pem: denied" and out["plain"] == "no path here"
    assert publishable(out, run) == out  # publishing twice changes nothing


def test_a_report_rendered_from_its_run_folder_quotes_no_local_path(tmp_path: Path) -> None:
    """The run folder keeps local paths (a workload's recording, say); the summary and the page are
    rendered from the published results, so the analysis that quotes the settings carries none either."""
    from pipeline.report.render import write_report

    src = REPO / "reports" / "20261207-110155-62ba"
    run = tmp_path / "runs" / src.name
    shutil.copytree(src, run)
    local = str(tmp_path / "checkout" / "vm-templates" / "firmware" / "ovmf-x86-fresh.pattern")
    text = (run / "results.json").read_text().replace("<kpipe>/vm-templates/firmware/ovmf-x86-fresh.pattern", local)
    assert local in text
    (run / "results.json").write_text(text)
    out = write_report(run, tmp_path / "reports")
    for name in ("results.json", "summary.json", "summary.txt", "index.html"):
        assert str(tmp_path) not in (out / name).read_text(), name
