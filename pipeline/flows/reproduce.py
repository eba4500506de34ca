"""reproduce: what a reader of a triage reply needs to act on it without asking back, the way 0-day's
reports give it: the machine and the workload's parameters, each side's runs in an LKP-style table, a
git bundle of exactly the commits measured, and an archive with the config, the series as applied, the
final .config files, the QEMU command line and kpipe's version, plus the one command that re-runs it."""
from __future__ import annotations

import io
import math
import re
import statistics
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import yaml

from pipeline import __version__
from pipeline.config import Config
from pipeline.records.read import Results
from pipeline.report.publish import labels as publish_labels
from pipeline.report.publish import local_path
from pipeline.util.gitutil import git
from pipeline.workloads.extra import ExtraWorkload
from pipeline.workloads.firmware import FirmwareReplayKind

WIDTH = 72
# The headline and the secondary metrics, as the table names them (unit in the label).
TABLE_METRICS = (("boot_s", "guest boot s"), ("host_cpu_s", "host CPU s"), ("gp_ms", "ms per grace period"),
                 ("updates_over_jiffy", "updates >= 1 jiffy"), ("update_p99_us", "update p99 us"))


def machine_lines(metadata: dict[str, Any]) -> list[str]:
    """The physical machine and the test host, in two or three lines."""
    m = metadata.get("machine") or {}
    host = metadata.get("host") or {}
    th = metadata.get("test_host") or {}
    acc = (metadata.get("accelerator") or {}).get("name", "?")
    mem = f", {int(m['mem_kb']) / 1024**2:.0f} GiB RAM" if str(m.get("mem_kb", "")).isdigit() else ""
    cpu = m.get("cpu_model") or host.get("machine", "?")
    qemu = re.search(r"version (\S+)", str(metadata.get("qemu", "")))
    gcc = re.search(r"\) (\d+\.\d+\.\d+)", str(metadata.get("compiler", "")))
    lines = [f"Machine:   {cpu}, {m.get('cpus') or host.get('cpus', '?')} threads{mem}",
             f"Software:  Linux {m.get('kernel', '?')}, QEMU {qemu.group(1) if qemu else '?'}, "
             f"gcc {gcc.group(1) if gcc else '?'}",
             f"Test host: {th.get('cpus', '?')} vCPUs, {th.get('memory_mb', '?')} MiB, QEMU {acc.upper()}"
             + (" (the workload's guest nested)" if acc == "tcg" else "")]
    return [_cut(x) for x in lines]


def workload_lines(metadata: dict[str, Any]) -> list[str]:
    """The workload's parameters in a few mail lines (cycles, readers, placement, runs a side)."""
    w = metadata.get("workload") or {}
    reps = metadata.get("repetitions") or {}
    cycles = int(w.get("cycles", 0))
    readers = int(w.get("spinners", 0))
    more = " first, more where the sequential rule asked" if int(reps.get("looks", 1) or 1) > 1 else ""
    line = (f"Workload: {cycles} flash cycles ({2 * cycles} KVM_SET_USER_MEMORY_REGION calls, {3 * cycles} "
            f"expedited SRCU grace periods in a 6.1 host), {readers} reader vCPU{'s' if readers != 1 else ''} "
            f"({w.get('spin_mode', '?')}), placement {w.get('placement', '?')}; {reps.get('counted', '?')} runs a "
            f"side{more}, interleaved, each on a freshly booted test host")
    return textwrap.wrap(line, WIDTH)


def _cut(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."


def _values(results: Results, cand: str, metric: str) -> list[float]:
    return [r.metrics[metric] for r in results.candidate(cand).runs if metric in r.metrics]


def _side(values: list[float]) -> str:
    if not values:
        return f"{'-':>10}      "
    med = statistics.median(values)
    mean = statistics.fmean(values)
    sd = 100 * statistics.stdev(values) / mean if len(values) > 1 and mean else 0.0
    return f"{_num(med):>10} ±{min(sd, 999):>4.0f}%"


def _num(v: float) -> str:
    a = abs(v)
    return f"{v:.0f}" if a >= 1000 else f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3f}"


def lkp_table(results: Results, base: str, cand: str, extra_metrics: tuple[tuple[str, str], ...] = ()) -> str:
    """Each side's median and spread (%stddev of its runs) and the change (ratio of geometric means, as the
    verdict reads it), per metric, in the manner of 0-day's `%stddev %change %stddev` tables; 72 columns."""
    nb, nc = (len(results.candidate(name).runs) for name in (base, cand))
    head = f"{'baseline (n=' + str(nb) + ')':>17} {'%change':>9} {'series (n=' + str(nc) + ')':>17}"
    out = [head, f"{'median ±%stddev':>17} {'':>9} {'median ±%stddev':>17}", "-" * len(head)]
    for metric, label in (*TABLE_METRICS, *extra_metrics):
        b, c = _values(results, base, metric), _values(results, cand, metric)
        if not b and not c:
            continue
        # Runs stopped unfinished (censored) give lower bounds: the series' side is then "at least".
        least = ">=" if any(r.stopped(metric) for r in results.candidate(cand).runs if metric in r.metrics) else ""
        if b and c and min(b + c) > 0:
            # The ratio of geometric means: the verdict's own change, so the table and the verdict agree.
            chg = f"{least}{100 * (math.exp(_mean_log(c) - _mean_log(b)) - 1):+.1f}%"
        else:
            chg = ""
        out.append(_cut(f"{_side(b)} {chg:>9} {_side(c)}  {label}"))
    out.append("%change: ratio of the geometric means (the verdict's change)")
    return "\n".join(out)


def _mean_log(values: list[float]) -> float:
    return statistics.fmean(math.log(v) for v in values)


def fix_tags(sender: str, message_id: str, lore: str = "https://lore.kernel.org/r/") -> str:
    """The tags a fix of a reported regression should carry (prefixed, so no tool collects them from the
    reply itself)."""
    link = lore + message_id.strip("<>") if message_id else "(the series' Message-ID)"
    return ("If you fix the issue in a separate patch (not just a new version of this\n"
            "series), kindly add these tags:\n"
            f"| Reported-by: {sender}\n"
            f"| Closes: {link}")


def write_bundle(store: Path, base: str, tip: str, run_id: str, dest: Path) -> Path | None:
    """A git bundle of the commits measured (base..tip, the base a prerequisite), or None when there are
    none (the series changed nothing the tree did not have)."""
    if not base or not tip or base == tip:
        return None
    ref = f"refs/kpipe/triage/{run_id}"
    git(["update-ref", ref, tip], store)
    git(["bundle", "create", str(dest), f"{base}..{ref}"], store, timeout=600)
    return dest


def _workload_doc(w: ExtraWorkload, files: dict[str, bytes]) -> dict[str, Any]:
    """A second workload as pipeline.yaml gives it, its file (script, recording) copied into the archive."""
    item: dict[str, Any] = {"name": w.name, "kind": w.kind, "timeout_s": w.timeout_s}
    if w.controls:
        item["controls"] = True
    if w.kind == "kvm-selftest":
        return item | {"test": w.test, "args": list(w.args)}
    assert w.path
    files[f"workloads/{w.path.name}"] = w.path.read_bytes()
    if w.kind == "firmware-replay":
        spinners, spin_mode = FirmwareReplayKind.readers(w)
        return item | {"recording": f"workloads/{w.path.name}", "spinners": spinners, "spin_mode": spin_mode}
    return item | {"path": f"workloads/{w.path.name}", "args": list(w.args), "headline": w.headline,
                   "higher_is_better": not w.lower_is_better}


def write_archive(cfg: Config, results: Results, series_patches: list[Path], cand: str,
                  run_dir: Path, dest: Path) -> Path:
    """reproduce.tar.gz: reproduce/pipeline.yaml (the baseline and the series, with the settings this run
    used), the series' patches as applied, the kernel fragments, each side's final .config, the QEMU
    command line, kpipe's version and a README with the command."""
    base = cfg.baseline
    tree = cfg.trees[cfg.candidate(base).tree]
    if tree.tarball is not None:
        tree_doc: dict[str, Any] = {"tarball": str(tree.tarball)}
    elif tree.git and "://" in tree.git:
        tree_doc = {"git": tree.git, "ref": tree.ref or "HEAD"}
    else:
        tree_doc = {"git": "REPLACE-with-a-clone-of-the-baseline-tree", "ref": tree.ref or "HEAD"}
    files: dict[str, bytes] = {}
    patches = []
    for p in series_patches:
        name = f"patches/{p.name}"
        files[name] = p.read_bytes()
        patches.append({"patch": name})
    frags = []
    for f in cfg.kernel.fragments:
        files[f"kernel/{f.name}"] = f.read_bytes()
        frags.append(f"kernel/{f.name}")
    w = cfg.workload
    doc = {
        "trees": {"tree": tree_doc},
        "baseline": base,
        "candidates": [{"name": base, "tree": "tree"},
                       {"name": cand, "tree": "tree", "changes": patches}],
        "kernel": {"base": cfg.kernel.base, "fragments": frags, "sandbox": True,
                   "build_timeout_s": cfg.kernel.build_timeout_s},
        "test_host": {"cpus": cfg.test_host.cpus, "memory_mb": cfg.test_host.memory_mb,
                      "accelerator": cfg.test_host.accelerator, "cmdline": cfg.test_host.cmdline,
                      "boot_timeout_s": cfg.test_host.boot_timeout_s},
        "workload": {"cycles": w.cycles, "static_slots": w.static_slots, "spinners": w.spinners,
                     "spin_mode": w.spin_mode, "placement": w.placement, "timeout_s": w.timeout_s},
        "repetitions": {"warmup": cfg.repetitions.warmup, "counted": cfg.repetitions.counted,
                        "max_counted": cfg.repetitions.max_counted, "retries": cfg.repetitions.retries},
        "report": {"alpha": cfg.report.alpha, "min_effect_pct": cfg.report.min_effect_pct},
    }
    if cfg.workloads:
        doc["workloads"] = [_workload_doc(x, files) for x in cfg.workloads]
    files["pipeline.yaml"] = ("# Made by kpipe triage: the run it reproduces, with this run's settings.\n"
                              + yaml.safe_dump(doc, sort_keys=False)).encode()
    for name in (base, cand):
        cfg_file = results.candidate(name).stages.get("build", {}).get("dir")
        if cfg_file and (Path(cfg_file) / "config").is_file():
            files[f"config-{'baseline' if name == base else 'series'}"] = (Path(cfg_file) / "config").read_bytes()
    qemu = _qemu_command(run_dir)
    if qemu:  # with this machine's paths made into labels, as everything published
        files["qemu-command.txt"] = local_path(qemu, publish_labels(run_dir)).encode()
    files["VERSION"] = f"kpipe {__version__}\n".encode()
    files["README"] = (f"Re-run the evaluation of run {results.run_id or '?'} (kpipe {__version__}):\n\n"
                       "    tar xzf reproduce.tar.gz && kpipe run -c reproduce/pipeline.yaml\n\n"
                       "config-baseline and config-series are the final .config files; qemu-command.txt is\n"
                       "the command line the test hosts ran (its port was this machine's; <cache> is kpipe's\n"
                       "cache directory there).\n").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"reproduce/{name}")
            info.size, info.mtime, info.mode = len(data), 946684800, 0o644
            tar.addfile(info, io.BytesIO(data))
    dest.write_bytes(buf.getvalue())
    return dest


def _qemu_command(run_dir: Path) -> str:
    """The first QEMU command line logged in the run (the line the executor writes before starting it)."""
    for log in sorted((run_dir / "logs").rglob("*.qemu.log")):
        with open(log, encoding="utf-8", errors="replace") as f:
            first = f.readline(8192)
        if first.startswith("$ "):
            return first[2:]
    return ""
