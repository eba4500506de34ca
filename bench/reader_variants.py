"""Experiment: which kvm->srcu reader reproduces the regression faithfully?  Prints figures; asserts nothing.

    .venv/bin/python bench/reader_variants.py [-c pipeline.yaml] [--candidates A,B] [--reps N]
                                              [--variants loop/apart,fault/apart,loop/shared,none]
                                              [--cycles N] [--cpus N]

Builds (or takes from the cache) each candidate's kernel as `run` would, then
for each repetition boots every candidate in turn (interleaved) and runs the
flash workload once per reader variant in that one booted test host.  A
variant is MODE/PLACEMENT[/SPINNERS] (mode: loop, io, cpuid, fault; placement:
apart, shared, free) or `none` (no reader vCPU).  Prints, per candidate and
variant, the median over repetitions of the guest boot time, the time per
expedited grace period, the updates of a jiffy or more, host CPU, the SRCU
kworkers' CPU and the readers' exits per second, then the ratio of every
candidate to the first one.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.machines.accel import choose_accelerator  # noqa: E402
from pipeline.machines.executor import LocalExecutor  # noqa: E402
from pipeline.records.results import RunFolder  # noqa: E402
from pipeline.run.prepare import Preparer  # noqa: E402
from pipeline.stages.boot import boot_test_host  # noqa: E402
from pipeline.stages.initramfs import build_initramfs  # noqa: E402
from pipeline.util.progress import Progress  # noqa: E402
from pipeline.workloads.flash import (  # noqa: E402
    Workload,  # noqa: E402
    WorkloadFailed,
    build_vmm,
    install_vmm,
    run_workload,
)

SHOWN = ("boot_s", "gp_ms", "updates_over_jiffy", "host_cpu_s", "kworker_cpu_s", "reader_exits_per_s")


def variant_workload(base: Workload, variant: str, cycles: int | None) -> Workload:
    if variant == "none":
        w = dataclasses.replace(base, spinners=0)
    else:
        parts = variant.split("/")
        w = dataclasses.replace(base, spin_mode=parts[0], placement=parts[1] if len(parts) > 1 else base.placement,
                                spinners=int(parts[2]) if len(parts) > 2 else max(1, base.spinners))
    return dataclasses.replace(w, cycles=cycles) if cycles else w


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", "--config", default=str(REPO / "pipeline.yaml"))
    ap.add_argument("--candidates", default="baseline,regression-282d8998")
    ap.add_argument("--variants", default="loop/apart,none")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--cycles", type=int, default=None)
    ap.add_argument("--cpus", type=int, default=None, help="test-host vCPUs (default: the config's)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if args.cpus:
        cfg = dataclasses.replace(cfg, test_host=dataclasses.replace(cfg.test_host, cpus=args.cpus))
    folder = RunFolder.create(Path(tempfile.mkdtemp(prefix="kpipe-variants-")))
    preps = Preparer(cfg, folder, Progress()).prepare_all([cfg.candidate(n) for n in args.candidates.split(",")])
    initramfs = build_initramfs(cfg.test_host.initramfs_recipe, cfg.cache_dir)
    vmm = build_vmm(cfg.cache_dir)
    accel = choose_accelerator(cfg.test_host.accelerator)
    variants = args.variants.split(",")
    print(f"accelerator: {accel.reason}; test host: {cfg.test_host.cpus} vCPUs; logs in {folder.path}", flush=True)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for rep in range(args.reps):
        for prep in preps:
            if not prep.artifacts or not prep.patched:
                print(f"{prep.candidate.name}: not built, skipped")
                continue
            name = prep.candidate.name
            with boot_test_host(LocalExecutor(), prep.artifacts, initramfs, cfg.test_host, prep.patched.cmdline,
                                folder.path / "logs" / name, f"rep{rep}", accel) as host:
                install_vmm(host, vmm)
                for v in variants:
                    w = variant_workload(cfg.workload_of(prep.candidate), v, args.cycles)
                    try:
                        m = run_workload(host, w, cfg.test_host.cpus).metrics
                    except WorkloadFailed as exc:
                        print(f"{name} {v} rep {rep}: failed: {str(exc).splitlines()[0]}", flush=True)
                        continue
                    results.setdefault((name, v), []).append(m)
                    print(f"{name:<32} {v:<16} rep {rep}: " + "  ".join(f"{k} {m.get(k, float('nan')):.3f}"
                                                                         for k in SHOWN), flush=True)
    print("\nmedians over repetitions")
    print(f"{'candidate':<32} {'variant':<16} " + " ".join(f"{k:>18}" for k in SHOWN) + f" {'vs first':>9}")
    first = preps[0].candidate.name
    for (name, v), ms in results.items():
        med = {k: statistics.median(m.get(k, float("nan")) for m in ms) for k in SHOWN}
        ref = results.get((first, v))
        ratio = med["boot_s"] / statistics.median(m["boot_s"] for m in ref) if ref else float("nan")
        print(f"{name:<32} {v:<16} " + " ".join(f"{med[k]:>18.3f}" for k in SHOWN) + f" {ratio:>8.2f}x")


if __name__ == "__main__":
    main()
