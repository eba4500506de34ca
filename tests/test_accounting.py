"""Host CPU estimators (workloads/accounting.py) on synthetic and saved VMM output, and the committed
reports' figures against today's derivation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.flows.rederive import rederived_runs
from pipeline.workloads.accounting import nonidle_s, thread_classes, tick_busy_s, window_s
from pipeline.workloads.flash_metrics import derive_metrics

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"


def _line(cpu: str, **fields: int) -> dict:
    return {"cpu": cpu, **{k: fields.get(k, 0) for k in
                           ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")}}


def test_non_idle_time_is_the_window_minus_exact_idle_per_cpu() -> None:
    raw = {"clk_tck": 100, "stat_window_ns": 2_000_000_000, "boot_ns": 1_900_000_000,
           "proc_stat_delta": [_line("all", user=3, idle=200), _line("cpu0", user=3, idle=150),
                               _line("cpu1", idle=40, iowait=10)]}
    assert window_s(raw) == 2.0
    assert nonidle_s(raw) == pytest.approx(0.5 + 1.5)
    assert nonidle_s(raw, "cpu1") == pytest.approx(1.5)
    # The tick samples saw 30 ms of work where 2 s were done: what this module exists to avoid.
    assert tick_busy_s(raw) == pytest.approx(0.03)


def test_window_falls_back_to_the_boot_for_older_vmm_output() -> None:
    raw = {"boot_ns": 3_000_000_000, "proc_stat_delta": [_line("all"), _line("cpu0", idle=100)]}
    assert window_s(raw) == 3.0 and nonidle_s(raw) == pytest.approx(2.0)


def test_a_cpu_idle_for_longer_than_the_window_counts_as_zero_not_negative() -> None:
    raw = {"stat_window_ns": 1_000_000_000, "proc_stat_delta": [_line("all"), _line("cpu0", idle=101)]}
    assert nonidle_s(raw) == 0.0


def test_thread_classes_add_up_to_non_idle_time() -> None:
    raw = json.loads((DATA / "flashvmm-v2-regression-282d8998.json").read_text())
    cls = thread_classes(raw)
    assert cls["total"] == pytest.approx(cls["updater"] + cls["readers"] + cls["kworkers"] + cls["rest"])
    assert min(cls.values()) >= 0


def test_the_regression_is_not_cheaper_than_the_baseline_once_counted_exactly() -> None:
    """The saved TCG runs: tick samples put the regression's host CPU far below the baseline's; the exact
    estimator does not (its work falls between ticks)."""
    base = derive_metrics(json.loads((DATA / "flashvmm-v2-baseline.json").read_text()))
    reg = derive_metrics(json.loads((DATA / "flashvmm-v2-regression-282d8998.json").read_text()))
    assert reg["host_cpu_ticks_s"] < 0.5 * base["host_cpu_ticks_s"]
    assert reg["host_cpu_s"] > base["host_cpu_s"]
    assert reg["host_cpu_s"] > 5 * reg["host_cpu_ticks_s"]


def _committed() -> list[Path]:
    return sorted(p.parent for p in (REPO / "reports").glob("*/results.json"))


@pytest.mark.parametrize("run", _committed(), ids=lambda p: p.name)
def test_committed_reports_carry_todays_derivation(run: Path) -> None:
    """Every committed report's figures are what this version derives from the raw output it kept
    (`kpipe report --rederive` brings one up to date)."""
    results = json.loads((run / "results.json").read_text())
    assert rederived_runs(results) == 0, f"{run.name}: run `kpipe report --rederive {run}`"


def test_block_reader_settings_reach_the_vmm_and_bad_ones_name_their_key(tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.workloads.flash import Workload, vmm_argv

    argv = vmm_argv("/tmp/flashvmm", Workload(spin_mode="block", block_ms=2.5, block_gap_ms=1), 2)
    assert argv[argv.index("--block-us") + 1] == "2500" and argv[argv.index("--block-gap-us") + 1] == "1000"
    assert "--block-us" not in vmm_argv("/tmp/flashvmm", Workload(spin_mode="loop"), 2)
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text("trees: {t: {git: /nonexistent}}\nbaseline: b\ncandidates: [{name: b, tree: t}]\n"
                   "workload: {spin_mode: block, block_ms: true}\n")
    with pytest.raises(ConfigError, match=r"workload\.block_ms"):
        load_config(cfg)


def test_version_3_output_gives_the_mechanism_per_grace_period() -> None:
    raw = json.loads((DATA / "flashvmm-v2-regression-282d8998.json").read_text())
    raw |= {"version": 3, "flash_thread_nivcsw": 9300, "flash_thread_nvcsw": 10, "kworker_nvcsw": 18600,
            "stat_window_ns": raw["boot_ns"] + 1_000_000}
    m = derive_metrics(raw)
    assert m["updater_preempted_per_gp"] == pytest.approx(9300 / m["grace_periods"])
    assert m["kworker_sleeps_per_gp"] == pytest.approx(18600 / m["grace_periods"])
    assert m["kworker_ms_per_sleep"] == pytest.approx(m["kworker_cpu_s"] * 1e3 / 18600)
