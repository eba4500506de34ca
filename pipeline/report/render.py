"""report: HTML (jinja2, autoescaped), a 72-column text summary and JSON, from results.json only."""
from __future__ import annotations

import json
import math
import re
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2

from pipeline.errors import UserError
from pipeline.records.read import Results
from pipeline.records.results import read_results, write_json_atomic, write_text_atomic
from pipeline.report.analysis import METRICS, analyze, fmt_num, fmt_p, is_number
from pipeline.report.jobs import job_lines
from pipeline.report.publish import copy_logs, publishable
from pipeline.report.stats import SMALL

TEMPLATES = Path(__file__).parent / "templates"
WIDTH = 72


def safe_href(path: Any) -> str:
    """A link into the report folder, or '#': results.json is data, and a path in it becomes a link only if
    it is relative, stays inside the folder and names no scheme (no 'javascript:', no '../')."""
    text = str(path or "")
    if not text or ":" in text or text.startswith(("/", "\\")) or ".." in Path(text).parts or "\\" in text:
        return "#"
    return text


def template_env() -> jinja2.Environment:
    """The jinja2 environment every page is rendered with: autoescaped, with the number filters."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt_num
    env.filters["pval"] = fmt_p
    env.filters["href"] = safe_href
    env.filters["pct"] = _pct
    env.filters["pct0"] = lambda v: f"{100.0 * v:.0f}%" if is_number(v) else "unknown"
    env.globals["small"] = SMALL
    return env


RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")


def load_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run folder's results and metadata (a missing metadata.json reads as empty)."""
    results = read_results(run_dir)
    meta_path = run_dir / "metadata.json"
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    except (UnicodeDecodeError, ValueError):
        metadata = {"unreadable": f"{meta_path.name} is not readable JSON"}
    return results, metadata


def report_url(base_url: str, run_id: str) -> str:
    """Where a run's page is published: under report.base_url, else the local path."""
    return f"{base_url.rstrip('/')}/{run_id}/index.html" if base_url else f"reports/{run_id}/index.html"


def render_text(results: dict[str, Any], metadata: dict[str, Any], analysis: dict[str, Any] | None = None) -> str:
    """A summary fit to paste into a mailing-list reply (72 columns)."""
    a = analysis or analyze(results)
    run_id = results.get("run_id", "?")
    base_url = results.get("settings", {}).get("base_url", "")
    out = []

    def para(text: str) -> None:
        out.extend(textwrap.wrap(text, WIDTH) or [""])

    para(f"kpipe run {run_id}: guest boot time and host CPU of a KVM guest whose "
         "firmware-style boot makes "
         f"{_updates_hint(results)} memslot updates, on each candidate kernel, "
         f"compared with '{a['baseline']}'.")
    out.append("")
    head = (f"{'candidate':<21} {'n':>2} {'boot s':>7} {'change':>8} {'p':>7} {'CPU s':>6} {'change':>8} "
            f"{'ms/GP':>6}")
    out.append(head)
    out.append("-" * len(head))
    for r in a["rows"]:
        b = r["summaries"]["boot_s"]
        cpu = r["summaries"]["host_cpu_s"]
        cb = r["comparisons"].get("boot_s", {})
        cc = r["comparisons"].get("host_cpu_s", {})
        name = r["name"] if len(r["name"]) <= 21 else r["name"][:20] + "~"
        if r["status"] != "ok":
            out.append(f"{name:<21} {r['status']}")
            continue
        chg = "(base)" if r["is_baseline"] else _pct(cb.get("change_pct"))
        cchg = "(base)" if r["is_baseline"] else _pct(cc.get("change_pct"))
        pv = "" if r["is_baseline"] else fmt_p(cb.get("p_value", math.nan))
        out.append(f"{name:<21} {r['n']:>2} {fmt_num(b['median']):>7} {chg:>8} {pv:>7} "
                   f"{fmt_num(cpu['median']):>6} {cchg:>8} {fmt_num(r['summaries']['gp_ms']['median'], 3):>6}")
    out.append("")
    para(f"Verdicts (t-test on log times, the more cautious of Welch's and the pooled, two-sided; each at "
         f"level {a['level']:.3g} = alpha {a['alpha']:g} / {len(a['family'])} candidates deciding the exit code / "
         f"{a['looks']} look{'s' if a['looks'] != 1 else ''}; min effect {a['min_effect_pct']:.0f}%; change = "
         f"ratio of geometric means, with its {a['ci_label']} interval; each against the baseline unless 'vs' "
         f"says otherwise):")
    for r in a["rows"]:
        if r["is_baseline"]:
            continue
        cb = r["comparisons"].get("boot_s", {})
        cc = r["comparisons"].get("host_cpu_s", {})
        if r["status"] != "ok":
            line = f"  {r['name']}: {r['status']}"
            if r["status_detail"]:
                line += f" - {r['status_detail']}"
            out.extend(textwrap.wrap(line, WIDTH, subsequent_indent="    "))
            continue
        vs = "" if r["compare_to"] == a["baseline"] else f" vs {r['compare_to']}"
        role = " (control)" if r.get("role") == "control" else ""
        least = f"at least ({cb['censored']} run(s) stopped unfinished) " if cb.get("censored") else ""
        line = (f"  {r['name']}{role}{vs}: boot {cb['verdict']} {least}{_pct(cb['change_pct'])} "
                f"[{_pct(cb['change_ci_low'])}, {_pct(cb['change_ci_high'])}], "
                f"host CPU {cc['verdict']} {_pct(cc['change_pct'])} "
                f"[{_pct(cc['change_ci_low'])}, {_pct(cc['change_ci_high'])}]")
        up, down = cb.get("detectable_pct"), cb.get("detectable_down_pct")
        if cb["verdict"] in ("no significant change", "inconclusive") and is_number(up):
            either = f" or -{down:.0f}%" if is_number(down) else ""
            line += f"; these runs detect boot changes of +{up:.0f}%{either} or more"
        if r["name"] in a.get("undecided", []):
            line += "; UNDECIDED slowdown (exit code 5): run more repetitions"
        out.extend(textwrap.wrap(line, WIDTH, subsequent_indent="    "))
    seq = a.get("sequential") or {}
    if seq:
        runs = ", ".join(f"{r['name']} {r['n']}" for r in a["rows"] if r["status"] == "ok")
        para(f"Runs: the sequential rule made {seq.get('looks_made')} of {seq.get('looks')} looks and spent "
             f"{seq.get('spent_s', 0):.0f} of {seq.get('budget_s', 0):.0f} s on extra runs ({runs}).")
        for key, why in (seq.get("reasons") or {}).items():
            out.extend(textwrap.wrap(f"  {key}: {why}", WIDTH, subsequent_indent="    "))
    if a.get("workloads"):
        out.append("")
        for w in a["workloads"]:
            label, unit = a["metric_labels"].get(w["headline"], (w["headline"], ""))
            para(f"Second workload {w['name']} ({w['kind']}{' ' + w['test'] if w.get('test') else ''}), "
                 f"headline {label} ({unit or 'no unit'}), medians; does it agree with the guest boot time?")
            for r in a["rows"]:
                s = r["summaries"].get(w["headline"], {})
                agr = next((g for g in r.get("agreement", []) if g["workload"] == w["name"]), None)
                if r["is_baseline"]:
                    line = f"  {r['name']}: {fmt_num(s.get('median', math.nan), 3)} (base)"
                elif r["status"] != "ok" or agr is None:
                    line = f"  {r['name']}: {r['status']}"
                else:
                    stopped = r["comparisons"].get(w["headline"], {}).get("censored")
                    least = f"at least ({stopped} run(s) stopped unfinished) " if stopped else ""
                    line = (f"  {r['name']}: {fmt_num(s.get('median', math.nan), 3)} {least}"
                            f"{_pct(agr['change_pct'])} (p {fmt_p(agr['p_value'])}, {agr['verdict']}); {agr['text']}")
                    if w["kind"] == "firmware-replay":
                        base = next(b for b in a["rows"] if b["is_baseline"])["summaries"].get(w["headline"], {})
                        lost = s.get("median", math.nan) - base.get("median", math.nan)
                        line += f"; a real firmware boot {'gains' if lost < 0 else 'loses'} {abs(lost):.2f} s here"
                out.extend(textwrap.wrap(line, WIDTH, subsequent_indent="    "))
    for r in a["rows"]:
        for c in r.get("on_top_of", []):
            b, cpu = c["boot_s"], c["host_cpu_s"]
            out.extend(textwrap.wrap(
                f"  {r['name']} vs {c['reference']} (its changes plus more): boot {b['verdict']} "
                f"{_pct(b['change_pct'])} [{_pct(b['change_ci_low'])}, {_pct(b['change_ci_high'])}], host CPU "
                f"{cpu['verdict']} {_pct(cpu['change_pct'])}", WIDTH, subsequent_indent="    "))
    for w in a.get("warnings", []):
        out.append("")
        para("Warning: " + w)
    out.append("")
    accel = metadata.get("accelerator", {}).get("name", "?")
    th = metadata.get("test_host", {})
    para(f"Test host: {th.get('cpus', '?')} CPUs, {th.get('memory_mb', '?')} MiB, QEMU accelerator {accel}; "
         f"{metadata.get('compiler', '')}.")
    for line in [_machines_line(a), *job_lines(a["rows"])]:
        if line:
            para(line)
    para("host CPU = test-host non-idle time over the guest boot (all CPUs: the window minus the kernel's "
         "exact idle time, not its tick samples) minus the reader vCPUs' own guest spinning. ms/GP = time "
         "in KVM_SET_USER_MEMORY_REGION per expedited SRCU grace period (two per memslot delete, one per "
         "create in a 6.1 host).")
    if "tcg" in str(accel).lower():
        para("The test host runs under QEMU TCG and the workload's guest nested in it: compare ratios, "
             "not absolute times.")
    out.append("")
    out.append(f"Full report: {report_url(base_url, run_id)}")
    return "\n".join(line.rstrip() for line in out) + "\n"


def _machines_line(a: dict[str, Any]) -> str:
    """Which machine ran what, and what was left out of the comparison."""
    hosts = a.get("hosts") or []
    used = [h for h in hosts if h.get("jobs")]
    lost = [h for h in hosts if h.get("status") == "lost"]
    if len(hosts) <= 1 and not lost:
        return ""
    runs_by_host: Counter[str] = Counter()
    for r in a["rows"]:
        runs_by_host.update(r.get("hosts", {}))
    parts = [f"{h['name']} ({runs_by_host.get(h['name'], 0)} counted runs)" for h in used]
    text = f"Test machines: {', '.join(parts) or 'none'}"
    kinds = {h.get("kind") for h in used}
    text += f", all of kind '{kinds.pop()}'." if len(kinds) == 1 else "."
    for h in lost:
        text += f" {h['name']} was lost during the run and its job moved to another machine."
    if a.get("reference_kind"):
        n = sum(r.get("excluded_other_kind", 0) for r in a["rows"])
        text += f" Compared only runs on kind '{a['reference_kind']}' ({n} runs on other kinds left out)."
    return text


def _pct(v: float | None) -> str:
    if is_number(v) and math.isinf(v):  # type: ignore[arg-type]
        return "unbounded"  # the far end of a change read from censored runs
    return f"{v:+.1f}%" if is_number(v) else "-"


def _updates_hint(results: dict[str, Any]) -> str:
    for c in results.get("candidates", {}).values():
        for r in c.get("runs", []):
            return str(int(r["metrics"]["updates"]))
    return "thousands of"


def render_json(results: dict[str, Any], metadata: dict[str, Any], analysis: dict[str, Any] | None = None) -> str:
    """summary.json: the analysis and the run's identity, NaN written as null."""
    a = analysis or analyze(results)
    return json.dumps(_clean({"run_id": results.get("run_id"), "status": results.get("status"),
                              "analysis": a, "metadata": metadata}), indent=1)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def render_html(results: dict[str, Any], metadata: dict[str, Any], analysis: dict[str, Any] | None = None,
                reply: bool = False) -> str:
    """index.html of one run: tables, plots, logs and verdicts (jinja2, autoescaped)."""
    from pipeline.report.plots import all_plots

    a = analysis or analyze(results)
    order = [r["name"] for r in a["rows"]]
    plots = all_plots(Results.from_json(results), order) if any(r["n"] for r in a["rows"]) else {}
    return template_env().get_template("run.html.j2").render(
        results=results, metadata=metadata, a=a, plots=plots, metrics=METRICS, reply=reply,
        text_summary=render_text(results, metadata, a), specs=results.get("candidate_specs", {}))


def write_report(run_dir: Path, reports_dir: Path) -> Path:
    """Render every format for one run into reports/<run-id>/ and refresh reports/index.html."""
    results, metadata = load_run(run_dir)
    run_id = str(results.get("run_id", ""))
    if not RUN_ID_RE.match(run_id):
        raise UserError(f"{run_dir / 'results.json'}: run_id {run_id!r} is not a run id (letters, digits, '-', '_')")
    out = reports_dir / run_id
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != run_dir.resolve():  # rendering a published report in place copies nothing onto itself
        copy_logs(run_dir, out)
        # What others read carries no local path (the run folder keeps them).
        results, metadata = publishable(results, run_dir), publishable(metadata, run_dir)
        write_json_atomic(out / "results.json", results)
        if (run_dir / "metadata.json").exists():
            write_json_atomic(out / "metadata.json", metadata)
    a = analyze(results)  # from what is published: the analysis quotes the run's settings (workload files)
    # Each file replaced whole: a reader (another run's write_index, a web server) never sees a torn one.
    write_text_atomic(out / "summary.txt", render_text(results, metadata, a))
    write_text_atomic(out / "summary.json", render_json(results, metadata, a))
    write_text_atomic(out / "index.html", render_html(results, metadata, a, (out / "reply.eml").is_file()))
    write_index(reports_dir)
    return out


def write_index(reports_dir: Path) -> Path:
    """reports/index.html: every rendered run, newest first (a broken summary is left out)."""
    entries = []
    for d in sorted(reports_dir.iterdir(), reverse=True) if reports_dir.is_dir() else []:
        s = d / "summary.json"
        if not s.is_file():
            continue
        try:
            data = json.loads(s.read_text(encoding="utf-8"))
            a = data.get("analysis", {})
            if not isinstance(a, dict):
                raise ValueError("analysis is not an object")
        except (OSError, ValueError, AttributeError):
            continue  # another run's broken or half-copied summary: that run is left out of the index
        entries.append({"run_id": d.name, "status": data.get("status"), "headline": a.get("headline", ""),
                        "regressions": a.get("regressions", []), "failed": a.get("failed", [])})
    path = reports_dir / "index.html"
    write_text_atomic(path, template_env().get_template("index.html.j2").render(entries=entries))
    return path

