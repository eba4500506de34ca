"""triage: from a patch series posted to a mailing list to a report and a reply email.

The email is untrusted: it is parsed with the standard library, size-checked,
its diffs' paths are checked before git sees them (patchcheck.check_patch_paths),
its text reaches the HTML only through autoescaping, and nothing from it is
ever passed to a shell.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.candidates import Candidate, Change, Tree
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.flows.intake import resolve_source
from pipeline.flows.mail import WIDTH, Series, parse_series, reply_sender, write_reply
from pipeline.flows.reproduce import fix_tags, lkp_table, machine_lines, workload_lines, write_archive, write_bundle
from pipeline.records.read import CandidateStatus, Results
from pipeline.stages.fetch import object_store
from pipeline.util.gitutil import git
from pipeline.util.untrusted import one_line, quote_block


def _slug(subject: str) -> str:
    s = re.sub(r"^(\[[^\]]*\]\s*)+", "", subject)
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-.").lower()
    return ("series-" + s)[:64].rstrip("-.") or "series"

TRIAGE_CENSOR = 3.0  # a series' run stops at 3x the baseline's median: "at least +200%" answers a triage


def triage_config(cfg: Config, series: Series, censor: float = TRIAGE_CENSOR) -> tuple[Config, str]:
    """A config with the baseline and one candidate: the series on the baseline's tree
    (or on the series' base-commit when the object store has it).  The series' runs stop at `censor`
    times the baseline's median boot (0: never), so a regression answers in the time of a few
    baseline boots instead of minutes a run."""
    base = cfg.candidate(cfg.baseline)
    tree_name = base.tree
    trees = dict(cfg.trees)
    note = f"applied on the baseline tree '{base.tree}'"
    if series.base_commit:
        store = object_store(cfg.cache_dir)
        has = git(["cat-file", "-e", f"{series.base_commit}^{{commit}}"], store, check=False).returncode == 0
        if has:
            tree_name = "series-base"
            # Any commit of the object store, another triaged series' among them: untrusted.
            trees[tree_name] = Tree(tree_name, git=str(store), ref=series.base_commit, trusted=False)
            note = f"applied on its base-commit {series.base_commit[:12]}"
        else:
            note += f" (its base-commit {series.base_commit[:12]} is not in the tree)"
    name = _slug(series.subject)
    if name == base.name:
        name += "-1"
    cand = Candidate(name, tree_name, tuple(Change("patch", p.path.name, p.path) for p in series.patches),
                     description=series.subject)
    # Code from a mailing list: its build always runs confined, whatever the config says.
    kernel = dataclasses.replace(cfg.kernel, sandbox=True)
    # Two runs a side make the first look (the sequential rule adds runs while a comparison is undecided);
    # a stopped run of the series has answered, so its other workloads are skipped.
    reps = cfg.repetitions
    first = min(reps.counted, 2) if reps.looks > 1 and reps.budget_s > 0 else reps.counted
    reps = dataclasses.replace(reps, censor_factor=censor, counted=first, skip_others_when_censored=True)
    return dataclasses.replace(cfg, trees=trees, candidates=(base, cand), kernel=kernel, repetitions=reps), note

def outcome(results: dict[str, Any], analysis: dict[str, Any], cand: str, series: Series) -> str:
    """The one paragraph a maintainer reads first."""
    res = Results.from_json(results)
    c = res.candidate(cand)
    st, status = c.stages, c.status
    if status == CandidateStatus.PATCH_FAILED:
        failed = st.get("patch", {})
        where = failed.get("location") or "?"
        which = failed.get("change", "")
        num = next((p for p in series.patches if which.endswith(p.path.name)), None)
        label = f"patch {num.number} ({one_line(num.subject, 120)})" if num else one_line(which, 120)
        return f"The series does not apply: {label} fails at {where}.\n\n{quote_block(failed.get('excerpt', ''), 30)}"
    if status == CandidateStatus.IDENTICAL:
        return ("The kernel built with the series is byte-for-byte the baseline's, with the same command line "
                "and workload: this series cannot change the measurement, so it was not measured.")
    if status == CandidateStatus.BUILD_TIMEOUT:
        return ("The kernel build with the series did not finish within its time limit and was stopped:\n\n"
                + quote_block(st.get("build", {}).get("excerpt", ""), 40))
    if status == CandidateStatus.BUILD_FAILED:
        return ("The series applies but the kernel does not build:\n\n"
                + quote_block(st.get("build", {}).get("excerpt", ""), 40))
    if status in (CandidateStatus.BOOT_FAILED, CandidateStatus.BOOT_TIMEOUT):
        return (f"The kernel with the series does not boot ({status}). Console:\n\n"
                + quote_block(st.get("boot", {}).get("excerpt", ""), 40))
    if status != CandidateStatus.OK:
        return f"The evaluation could not finish ({status}): {one_line(c.status_detail, 300)}"
    row = next(r for r in analysis["rows"] if r["name"] == cand)
    b = row["comparisons"].get("boot_s", {})
    cpu = row["comparisons"].get("host_cpu_s", {})
    nan = float("nan")
    verdict = b.get("verdict", "")
    word = {"slower": "regresses", "faster": "improves", "inconclusive": "may change (undecided)"}.get(
        verdict, "makes no significant change to")
    if b.get("censored"):
        factor = res.settings.censor_factor or TRIAGE_CENSOR
        return (f"The series {word} the guest boot time: at least {b.get('change_pct', nan):+.1f}% "
                f"(p = {b.get('p_value', nan):.4f}; {b['censored']} of its {row['n']} runs were stopped at "
                f"{factor:g}x the baseline's median boot, so that is a lower bound, and their host CPU was "
                f"not measured).")
    return (f"The series {word} the guest boot time: {b.get('change_pct', nan):+.1f}% "
            f"[{b.get('change_ci_low', nan):+.1f}%, {b.get('change_ci_high', nan):+.1f}%] "
            f"(p = {b.get('p_value', nan):.4f}); host CPU {cpu.get('change_pct', nan):+.1f}% "
            f"({cpu.get('verdict')}).")

@dataclass(frozen=True)
class TriageResult:
    """A triage's answer: the first paragraph, the report folder, the reply and its warnings."""

    first_paragraph: str
    report_dir: Path
    reply: Path
    analysis: dict[str, Any]
    warnings: tuple[str, ...] = ()

def series_commits(results: dict[str, Any], cand: str) -> tuple[str, list[str]]:
    """(base commit, one commit per patch in order) of a triaged series, from its patch stage."""
    stage = results["candidates"][cand]["stages"].get("patch", {})
    commits = [p["commit"] for ch in stage.get("changes", []) for p in ch.get("patches", [])]
    return stage.get("base_commit", ""), commits

def bisect_series(cfg: Config, results: dict[str, Any], cand: str, series: Series, progress: Any) -> str:
    """Which patch of a regressing series regresses: a bisection over its commits. Returns a paragraph."""
    from pipeline.flows.bisect import Bisector
    from pipeline.flows.bisect_report import write_report as bisect_report

    base, commits = series_commits(results, cand)
    if len(commits) < 2 or not base:
        return ""
    tree = next(c.tree for c in cfg.candidates if c.name == cand)
    # The steps are the series' own commits: built as untrusted as the series itself.
    cfg = dataclasses.replace(cfg, trees={**cfg.trees, tree: dataclasses.replace(cfg.trees[tree], trusted=False)})
    r = Bisector(cfg, tree, base, commits[-1], progress=progress).run()
    out = bisect_report(r, cfg.report.dir)
    if r.first_bad is None:
        return f"A bisection over the series could not single out one patch ({r.status}); see {out / 'index.html'}."
    i = commits.index(r.first_bad)
    patch = series.patches[i]
    return (f"A bisection over the series ({len(r.steps)} steps) names patch {patch.number} as the first that "
            f"regresses: \"{patch.subject}\" ({r.first_bad[:12]}); bisection report: {out / 'index.html'}.")


def run_triage(cfg: Config, source: str, progress: Any = None, bisect: bool = False,
               censor: float = TRIAGE_CENSOR) -> TriageResult:
    """Evaluate a posted series against the baseline: parse it, run both, render the report and the reply.
    With `bisect`, a series of several patches that regresses is bisected to the patch that does it."""
    from pipeline.records.results import new_run_id
    from pipeline.report.analysis import analyze
    from pipeline.report.render import load_run, render_text, report_url, write_report
    from pipeline.run.runner import run_pipeline
    from pipeline.util.progress import Progress

    workdir = cfg.runs_dir / "triage" / new_run_id()
    workdir.mkdir(parents=True)
    try:
        series = parse_series(resolve_source(source, workdir), workdir / "patches")
    except UserError:
        shutil.rmtree(workdir, ignore_errors=True)  # nothing was evaluated: leave nothing behind
        raise
    tcfg, note = triage_config(cfg, series, censor)
    cand = tcfg.candidates[1].name
    progress = progress or Progress()
    progress.say("triage", cand, f"v{series.revision}, {len(series.patches)} patch(es) (read by "
                 f"{series.intake or 'kpipe'}), {note}"
                 + (f"; skipped {len(series.skipped)} non-patch message(s)" if series.skipped else ""))
    folder = run_pipeline(tcfg, None, progress)
    out = cfg.report.dir / folder.run_id  # where write_report puts the page; the reply goes beside it
    out.mkdir(parents=True, exist_ok=True)
    results, metadata = load_run(folder.path)
    a = analyze(results)
    first = outcome(results, a, cand, series) + f"\n\n(The series was {note}.)"
    if bisect and cand in a["regressions"]:
        found = bisect_series(tcfg, results, cand, series, progress)
        if found:
            first += "\n\n" + found
    link = report_url(cfg.report.base_url, folder.run_id)
    folder_link = link.rsplit("/", 1)[0] if "/" in link else str(out)
    passed = results["candidates"][cand].get("status") == "ok" and cand not in a["regressions"]
    regressed = cand in a["regressions"]
    base_commit, commits = series_commits(results, cand)
    store = object_store(cfg.cache_dir)
    bundle = write_bundle(store, base_commit, commits[-1] if commits else "", folder.run_id,
                          out / "tested-commits.bundle") if commits else None
    records = Results.from_json(results)
    archive = write_archive(tcfg, records, [p.path for p in series.patches], cand, folder.path,
                            out / "reproduce.tar.gz")
    details = "\n".join(intake_lines(series) + machine_lines(metadata) + workload_lines(metadata))
    if records.candidate(cand).runs and records.candidate(tcfg.baseline).runs:
        details += "\n\n" + lkp_table(records, tcfg.baseline, cand)
    sender, _ = reply_sender(cfg.report.reply_from)
    tags = fix_tags(sender, series.message_id) if regressed else ""
    reply, warnings = write_reply(series, render_text(results, metadata, a), first, link, out / "reply.eml",
                                  reproduction(results, cand, series, folder_link, archive, bundle, folder.run_id),
                                  folder.run_id, cfg.report.reply_from, passed, details=details, tags=tags)
    write_report(folder.path, cfg.report.dir)  # after the reply, so the page links it
    return TriageResult(first, out, reply, a, tuple(warnings))

def intake_lines(series: Series) -> list[str]:
    """Which revision was tested and who read the thread; the trailers its replies gave (prefixed, so no
    tool collects them from the reply itself)."""
    who = f"read by {series.intake}" if series.intake.startswith("b4") else \
        f"read by kpipe's parser ({series.intake})" if series.intake else "read by kpipe's parser"
    out = textwrap.wrap(f"Tested:    v{series.revision} of the series, the newest in the thread, {who}", WIDTH,
                        subsequent_indent=" " * 11)
    if series.trailers:
        out.append("Trailers the thread gave (in the commits tested):")
        out += [f"| {t}"[:WIDTH] for t in series.trailers[:20]]
    return out


def reproduction(results: dict[str, Any], cand: str, series: Series, folder_link: str = "",
                 archive: Path | None = None, bundle: Path | None = None, run_id: str = "") -> str:
    """How to get the same kernels and the same run: the archive and its command, the bundle of the
    tested commits, the trees and commits (within 72 columns)."""
    where = folder_link.rstrip("/")
    lines = [f"To reproduce (kpipe {__version__}):"]
    if archive is not None:
        lines += [f"  {where}/{archive.name}", f"  tar xzf {archive.name} && kpipe run -c reproduce/pipeline.yaml"]
    lines.append("")
    lines.append("Tested commits:")
    imported = False
    for name, label in ((results.get("baseline", ""), "base"), (cand, "series")):
        st = results.get("candidates", {}).get(name, {}).get("stages", {})
        fetch, patch, build = st.get("fetch", {}), st.get("patch", {}), st.get("build", {})
        if not fetch:
            continue
        commit = str(patch.get("commit") or fetch.get("commit", ""))
        origin = str(fetch.get("origin", "?"))
        text = f"  {label + ':':<8}{commit[:12]}" + (f", kernel {build['kernel_release']}"
                                                     if build.get("kernel_release") else "")
        if commit == fetch.get("commit"):
            imported = imported or origin.startswith("/")
            text += f", {Path(origin).name if origin.startswith('/') else origin}"
        lines.append(text[:WIDTH])
    if bundle is not None:
        lines += ["  git fetch the bundle (its prerequisite is the base commit):", f"  {where}/{bundle.name}",
                  f"  refs/kpipe/triage/{run_id}"]
    if imported:
        lines.append("  (kpipe imports a tarball deterministically: same tarball, same commit)")
    n = len(series.patches)
    lines.append(f"  {n} patch{'es' if n != 1 else ''} on the base, in the bundle and the archive")
    return "\n".join(lines)
