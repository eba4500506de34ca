"""Every exit code a script reads, pinned: none is argparse's 2, and git bisect run can map them."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import exitcodes
from pipeline.cli import main


@pytest.mark.parametrize("regressions, failed, code", [
    ([], [], 0), (["r"], [], 3), ([], ["f"], 4), (["r"], ["f"], 3)])
def test_code_of_a_finished_run(regressions: list[str], failed: list[str], code: int) -> None:
    assert exitcodes.for_analysis({"regressions": regressions, "failed": failed}) == code


def test_codes_are_distinct_and_avoid_argparse_usage_code() -> None:
    codes = [exitcodes.OK, exitcodes.REGRESSION, exitcodes.INCOMPLETE, exitcodes.USAGE, exitcodes.FAILURE]
    assert len(set(codes)) == len(codes) and 2 not in codes and 1 not in codes


@pytest.mark.parametrize("code, bisect", [(0, 0), (3, 1), (4, 125), (64, 125), (70, 125)])
def test_git_bisect_run_mapping(code: int, bisect: int) -> None:
    assert exitcodes.for_bisect(code) == bisect


def test_usage_error_exits_64_not_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--no-such-option"])
    assert info.value.code == exitcodes.USAGE
    assert "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == exitcodes.USAGE


def test_configuration_error_exits_64(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text("trees: {}\nbaseline: x\ncandidates: []\nbogus: 1\n")
    assert main(["validate", "-c", str(cfg)]) == exitcodes.USAGE
    assert "bogus: unknown key" in capsys.readouterr().err
    assert main(["validate", "-c", str(tmp_path / "missing.yaml")]) == exitcodes.USAGE


def test_a_large_slowdown_the_runs_do_not_decide_is_never_a_silent_pass() -> None:
    """One disturbed baseline run can make a 17x regression 'inconclusive': that is exit code 5 (bisect:
    skip), never 0."""
    from pipeline.report.analysis import analyze

    def runs(boots: list[float]) -> list[dict]:
        return [{"metrics": {"boot_s": b, "host_cpu_s": 1.0, "kworker_cpu_s": 0.1}} for b in boots]

    results = {"run_id": "t", "baseline": "base", "candidate_order": ["base", "reg"], "candidate_specs": {},
               "settings": {"alpha": 0.01, "min_effect_pct": 5, "bootstrap_resamples": 200},
               "candidates": {"base": {"status": "ok", "runs": runs([8.1, 8.3, 38.0])},
                              "reg": {"status": "ok", "runs": runs([149.0, 148.5, 150.2])}}}
    a = analyze(results)
    reg = next(r for r in a["rows"] if r["name"] == "reg")
    assert reg["comparisons"]["boot_s"]["verdict"] == "inconclusive"
    assert a["regressions"] == [] and a["undecided"] == ["reg"]
    assert exitcodes.for_analysis(a) == exitcodes.UNDECIDED == 5
    assert exitcodes.for_bisect(exitcodes.UNDECIDED) == 125
