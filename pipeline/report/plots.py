"""Inline SVG plots for the HTML report (matplotlib), drawn from the typed records of records.read only."""
from __future__ import annotations

import io
import re
import statistics
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.records.read import Results  # noqa: E402
from pipeline.records.results import RunRecord  # noqa: E402

matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                            "axes.spines.right": False, "svg.hashsalt": "kpipe"})
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
          "#7f7f7f", "#393b79", "#ad494a"]


def svg_of(fig: Any) -> str:
    """A matplotlib figure as inline SVG (no date in it, so the same input gives the same page); closes it."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})  # same input, same page
    plt.close(fig)
    text = buf.getvalue()
    # Inline: drop the XML prolog and DOCTYPE, keep the <svg> element.
    return text[text.index("<svg"):]


def _label(text: str) -> str:
    # Candidate names are validated ([A-Za-z0-9._-]); escape anyway for SVG text.
    return re.sub(r"[<>&\"']", "_", text)


def _runs(results: Results, name: str, metric: str = "boot_s") -> list[RunRecord]:
    """A candidate's runs that measured `metric` to the end: a censored run has only a lower bound, and the
    tables, not the plots, show it (as ">=")."""
    return [r for r in results.candidate(name).runs if not r.stopped(metric)]


def distribution(results: Results, order: list[str], metric: str, title: str, unit: str) -> str:
    """An SVG strip plot of each candidate's runs of `metric`, one row per candidate."""
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * max(1, len(order))))
    for i, name in enumerate(order):
        vals = [r.metrics[metric] for r in _runs(results, name)]
        if not vals:
            continue
        color = COLORS[i % len(COLORS)]
        ax.boxplot([vals], positions=[i], orientation="horizontal", widths=0.5, showfliers=False,
                   medianprops={"color": color, "linewidth": 2})
        ax.scatter(vals, [i] * len(vals), s=14, color=color, alpha=0.8, zorder=3)
    ax.set_yticks(range(len(order)), [_label(n) for n in order])
    ax.invert_yaxis()
    log = _wide(results, order, metric)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"{title} ({unit}{', log scale' if log else ''}), one dot per counted run")
    return svg_of(fig)


def _wide(results: Results, order: list[str], metric: str) -> bool:
    """True when the values span more than 5x: a log axis then keeps small differences visible."""
    vals = [r.metrics[metric] for n in order for r in _runs(results, n) if r.metrics.get(metric, 0) > 0]
    return bool(vals) and max(vals) / min(vals) > 5


def tradeoff(results: Results, order: list[str]) -> str:
    """An SVG of guest boot time against host CPU, one point per run: the latency-cost trade-off."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, name in enumerate(order):
        runs = _runs(results, name)
        if not runs:
            continue
        ax.scatter([r.metrics["boot_s"] for r in runs], [r.metrics["host_cpu_s"] for r in runs],
                   s=22, color=COLORS[i % len(COLORS)], label=_label(name), alpha=0.85)
    ax.set_xlabel("guest boot time (s)  - lower is better")
    ax.set_ylabel("host CPU over the boot (s)  - lower is better")
    if _wide(results, order, "boot_s"):
        ax.set_xscale("log")
        ax.set_xlabel("guest boot time (s, log scale)  - lower is better")
    else:
        ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    if ax.has_data():
        ax.legend(fontsize=8, frameon=False)
    return svg_of(fig)


def timeline(results: Results, order: list[str]) -> str:
    """Memslot updates completed against time, for each candidate's median run."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, name in enumerate(order):
        runs = sorted(_runs(results, name), key=lambda r: r.metrics["boot_s"])
        if not runs:
            continue
        run = runs[(len(runs) - 1) // 2]  # the run at (or just below) the median
        points = run.raw.get("timeline_ns", [])
        total = run.metrics["updates"]
        xs = [0.0] + [p / 1e9 for p in points if p]
        ys = [0.0] + [total * (k + 1) / len(points) for k, p in enumerate(points) if p]
        ax.plot(xs, ys, marker=".", color=COLORS[i % len(COLORS)], label=_label(name))
    ax.set_xlabel("time since the guest's flash phase began (s)")
    ax.set_ylabel("memslot updates done")
    if ax.has_data():
        ax.legend(fontsize=8, frameon=False)
    return svg_of(fig)


def latency_percentiles(results: Results, order: list[str]) -> str:
    """An SVG of memslot update latency percentiles per candidate (from the runs' histograms)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    keys = [("update_p50_us", "p50"), ("update_p90_us", "p90"), ("update_p99_us", "p99"), ("update_max_us", "max")]
    width = 0.8 / max(1, len(order))
    for i, name in enumerate(order):
        runs = _runs(results, name)
        if not runs:
            continue
        per_key = [sorted(r.metrics[key] for r in runs if key in r.metrics) for key, _ in keys]
        if not all(per_key):
            continue
        meds = [statistics.median(vals) for vals in per_key]
        ax.bar([k + i * width for k in range(len(keys))], meds, width=width, color=COLORS[i % len(COLORS)],
               label=_label(name))
    ax.set_yscale("log")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], [label for _, label in keys])
    ax.set_ylabel("KVM_SET_USER_MEMORY_REGION latency (us, log)")
    if ax.has_data():
        ax.legend(fontsize=8, frameon=False)
    return svg_of(fig)


def gp_histogram(results: Results, order: list[str]) -> str:
    """Share of memslot updates per latency bin (all counted runs), one line per candidate, log axes."""
    fig, ax = plt.subplots(figsize=(6.8, 3.8))
    edges: list[float] = []
    for i, name in enumerate(order):
        total: list[int] = []
        for r in _runs(results, name):
            raw = r.raw
            if "hist_edges_us" not in raw:
                continue
            edges = [float(e) for e in raw["hist_edges_us"]]
            counts = [d + c for d, c in zip(raw["hist_delete"], raw["hist_create"], strict=True)]
            total = [a + b for a, b in zip(total, counts, strict=True)] if total else counts
        n = sum(total)
        if not n:
            continue
        # Bin k spans [edges[k-1], edges[k]); the first starts at 1 us, the open last one is drawn 2 ms wide.
        lows = [1.0] + edges
        highs = edges + [edges[-1] + 2000.0]
        xs, ys = [], []
        for lo, hi, cnt in zip(lows, highs, total, strict=True):
            xs += [lo / 1000, hi / 1000]
            ys += [cnt / n, cnt / n]
        ax.plot(xs, ys, color=COLORS[i % len(COLORS)], label=_label(name), linewidth=1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("KVM_SET_USER_MEMORY_REGION latency (ms, log; 1 ms bins above 1 ms)")
    ax.set_ylabel("share of updates (log)")
    if ax.has_data():
        ax.legend(fontsize=8, frameon=False)
    return svg_of(fig)


def swept_parameters(results: Results, order: list[str]) -> dict[str, list[tuple[float, str]]]:
    """Kernel parameters given numeric values by two or more candidates: name -> [(value, candidate)]."""
    found: dict[str, list[tuple[float, str]]] = {}
    for name in order:
        changes = results.spec(name).changes
        words = [w for kind, value in changes if kind == "cmdline" for w in value.split()]
        if len(words) != 1 or len(changes) != 1:
            continue  # a sweep point changes one parameter and nothing else
        key, _, value = words[0].partition("=")
        try:
            found.setdefault(key, []).append((float(value), name))
        except ValueError:
            pass
    return {k: sorted(v) for k, v in found.items() if len({x for x, _ in v}) >= 2}


def sweep(results: Results, order: list[str], param: str, points: list[tuple[float, str]]) -> str:
    """Median guest boot time and host CPU (with min-max bars) against a swept boot parameter."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for metric, color, label in (("boot_s", COLORS[0], "guest boot (s)"), ("host_cpu_s", COLORS[1], "host CPU (s)")):
        xs, meds, lo, hi = [], [], [], []
        for value, name in points:
            vals = sorted(r.metrics[metric] for r in _runs(results, name, metric) if metric in r.metrics)
            if not vals:
                continue
            med = statistics.median(vals)
            xs.append(value)
            meds.append(med)
            lo.append(med - vals[0])
            hi.append(vals[-1] - med)
        if xs:
            ax.errorbar(xs, meds, yerr=[lo, hi], marker="o", color=color, label=label, capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel(_label(param) + " (log)")
    ax.set_ylim(bottom=0)
    if ax.has_data():
        ax.legend(fontsize=8, frameon=False)
    return svg_of(fig)


def all_plots(results: Results, order: list[str]) -> dict[str, str]:
    """Every plot the run's page shows, by name, as SVG text."""
    sweeps = {f"sweep: {k}": sweep(results, order, k, v) for k, v in swept_parameters(results, order).items()}
    return sweeps | {
        "boot": distribution(results, order, "boot_s", "guest boot time", "s"),
        "cpu": distribution(results, order, "host_cpu_s", "host CPU over the boot", "s"),
        "tradeoff": tradeoff(results, order),
        "timeline": timeline(results, order),
        "latency": latency_percentiles(results, order),
        "histogram": gp_histogram(results, order),
    }
