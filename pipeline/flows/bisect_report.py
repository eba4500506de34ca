"""bisect's pages: the text summary, the path plot and `<reports>/<bisect id>/index.html`."""
from __future__ import annotations

import json
import math
import shutil
import textwrap
from pathlib import Path

from pipeline.flows.bisect import BisectResult
from pipeline.flows.bisect_search import BAD, SKIP
from pipeline.records.results import write_text_atomic
from pipeline.report.analysis import METRICS, fmt_num
from pipeline.report.plots import plt, svg_of
from pipeline.report.render import template_env

# -- the report ---------------------------------------------------------------------------------

def render_text(r: BisectResult, width: int = 72) -> str:
    """bisect.txt: the headline ('first bad commit: ...') and one line per step, within `width` columns."""
    out = []
    for s in r.steps:
        label = "ends" if s.index == -2 else f"{s.index + 1:>3}/{len(r.commits)}"
        out.append(f"{label:<8} {s.commit[:12]} {s.outcome:<5} {fmt_num(s.median, 2):>8} "
                   f"{'' if math.isnan(s.change_pct) else f'{s.change_pct:+.0f}%':>7} {s.subject[:30]}")
    head = [f"kpipe bisect: {len(r.commits)} commits, {len(r.steps)} steps, metric {r.metric} "
            f"(median; change against the good end)."]
    if r.first_bad:
        subject = next(c["subject"] for c in r.commits if c["sha"] == r.first_bad)
        head.append(f"first bad commit: {r.first_bad[:12]} (\"{subject}\")")
    elif r.status == "ends-do-not-differ":
        head.append("the bad end is not measurably different from the good end: nothing to bisect")
    elif r.status == "ends-not-measured":
        ends = next((s for s in r.steps if s.index == -2), None)
        head.append("the ends could not be measured, so nothing was bisected: " + (ends.note if ends else "?"))
    else:
        head.append("skipped commits hide the first bad commit; it is one of: "
                    + ", ".join(x[:12] for x in r.suspects))
    text = "\n".join(textwrap.fill(h, width) for h in head)
    return text + "\n\n" + "\n".join(out) + "\n"


def plot_path(r: BisectResult, unit: str) -> str:
    """An SVG of the metric's median along the commit path, good and bad steps coloured, skips marked."""
    tested = sorted((s for s in r.steps if s.index >= 0 and not math.isnan(s.median)), key=lambda s: s.index)
    fig, ax = plt.subplots(figsize=(7, 2.6))
    good = [s.good_median for s in r.steps if not math.isnan(s.good_median)]
    if good:
        ax.axhline(sorted(good)[len(good) // 2], color="#2a7", lw=1, ls="--", label="good end")
    ends = next((s for s in r.steps if s.index == -2), None)
    if ends and not math.isnan(ends.median):
        ax.scatter([len(r.commits)], [ends.median], color="#c33", marker="s", label="bad end", zorder=3)
    for s in tested:
        ax.scatter([s.index + 1], [s.median], color="#c33" if s.outcome == BAD else "#2a7", zorder=3)
    for s in r.steps:
        if s.outcome == SKIP and s.index >= 0:
            ax.axvline(s.index + 1, color="#999", lw=0.8, ls=":")
    ax.set_xlabel("commit along the path (1 = after the good end)")
    ax.set_ylabel(f"{r.metric} ({unit})" if unit else r.metric)
    ax.set_xlim(0, len(r.commits) + 1)
    ax.legend(loc="best", fontsize=8)
    return svg_of(fig)


def write_report(r: BisectResult, reports_dir: Path) -> Path:
    """`<reports>/<bisect id>/index.html` (and bisect.txt, bisect.json beside it)."""
    out = reports_dir / r.folder.name
    out.mkdir(parents=True, exist_ok=True)
    state = json.loads((r.folder / "bisect.json").read_text())
    unit = METRICS.get(r.metric, ("", ""))[1]
    text = render_text(r)
    first_subject = next((c["subject"] for c in r.commits if c["sha"] == r.first_bad), "")
    b = {**state, "folder_name": r.folder.name, "first_bad": r.first_bad, "first_subject": first_subject,
         "steps": r.steps, "commits": r.commits, "unit": unit, "diffstat": r.extra.get("diffstat", ""),
         "headline": text.splitlines()[1] if len(text.splitlines()) > 1 else ""}
    html = template_env().get_template("bisect.html.j2").render(b=b, plot=plot_path(r, unit), text=text)
    write_text_atomic(out / "index.html", html)
    write_text_atomic(out / "bisect.txt", text)
    shutil.copyfile(r.folder / "bisect.json", out / "bisect.json")
    return out
