"""kpipe: does this kernel patch fix the slowdown, and what does it cost?

The command line is a thin layer over the library (`main(argv) -> int`);
exit codes are defined once, in pipeline.exitcodes.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import logging
import shutil
import sys
from pathlib import Path
from typing import NoReturn

from . import exitcodes
from .analysis import analyze
from .config import Config, load_config
from .errors import ConfigError, InfraError, PipelineError, UserError
from .progress import Progress
from .report import load_run, render_json, render_text, write_report
from .runner import Interrupted, run_pipeline

TOOLS = {  # command -> Debian package
    "qemu-system-x86_64": "qemu-system-x86", "gcc": "build-essential", "make": "make", "git": "git",
    "ccache": "ccache", "flex": "flex", "bison": "bison", "bc": "bc", "cpio": "cpio", "busybox": "busybox-static",
    "dropbear": "dropbear-bin", "dropbearkey": "dropbear-bin", "ssh-keygen": "openssh-client",
    "/usr/lib/openssh/sftp-server": "openssh-sftp-server", "xz": "xz-utils", "ldd": "libc-bin",
}
HEADERS = {"/usr/include/libelf.h": "libelf-dev", "/usr/include/openssl/ssl.h": "libssl-dev"}


class _Parser(argparse.ArgumentParser):
    """argparse that exits with kpipe's usage code (64), never 2, which scripts must not confuse."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(exitcodes.USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pipeline", description=__doc__.splitlines()[0],
                epilog="exit codes: 0 no regression, all measured; 3 regression found; 4 a candidate could not "
                       "be evaluated; 64 usage or configuration error; 70 pipeline or infrastructure failure",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default="pipeline.yaml", help="pipeline.yaml to use")
    common.add_argument("--hosts", metavar="FILE", help="YAML file whose 'hosts:' list replaces the config's pool "
                        "of test machines")
    common.add_argument("-v", "--verbose", action="count", default=0)
    common.add_argument("--only", action="append", metavar="CANDIDATE",
                        help="run only this candidate (and the baseline); repeatable")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run_p = sub.add_parser("run", parents=[common], help="run every candidate and render the report")
    run_p.add_argument("--resume", metavar="RUN", help="continue an interrupted run (id or folder)")
    run_p.add_argument("--no-wait", action="store_true", help="fail instead of waiting for a busy cache")
    sub.add_parser("validate", parents=[common], help="check pipeline.yaml and the patches it names")
    rep = sub.add_parser("report", parents=[common], help="re-render a report from a run's results.json")
    rep.add_argument("run", help="run id (under runs_dir) or a run folder")
    rep.add_argument("--format", choices=("html", "text", "json"), default="html")
    srv = sub.add_parser("serve", parents=[common], help="serve reports/ on 127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    sub.add_parser("doctor", parents=[common], help="list the tools a run needs and how to install them")
    tri = sub.add_parser("triage", parents=[common],
                         help="evaluate a posted patch series (mbox, maildir message or Message-ID) "
                              "against the baseline and write a reply email")
    tri.add_argument("source", help="an mbox file, a maildir message file, or a Message-ID (fetched with b4)")
    return p


def _run_dir(cfg_runs: Path, run: str) -> Path:
    path = Path(run)
    if (path / "results.json").exists():
        return path
    if (cfg_runs / run / "results.json").exists():
        return cfg_runs / run
    raise UserError(f"no run {run!r}: neither {path} nor {cfg_runs / run} holds a results.json")


def doctor(cfg_path: str, hosts_file: str | None = None, check_hosts: bool = False) -> list[str]:
    """Missing tools and files, each with the command that installs it; with check_hosts, unusable
    pool machines with the reason."""
    problems = []
    for tool, pkg in TOOLS.items():
        found = Path(tool).exists() if tool.startswith("/") else shutil.which(tool)
        if not found:
            problems.append(f"{tool}: missing; apt-get install {pkg}")
    for header, pkg in HEADERS.items():
        if not Path(header).exists():
            problems.append(f"{header}: missing; apt-get install {pkg}")
    try:
        cfg = load_config(cfg_path, hosts_file)
    except ConfigError as exc:
        problems.append(str(exc))
        return problems
    if check_hosts:
        from .pool import OK, check_pool

        for h in check_pool(cfg.hosts, cfg.test_host.accelerator, str(cfg.cache_dir), cfg.report.compare_across_kinds):
            line = f"host {h.name} ({h.spec.address}): {h.status}: {h.reason}"
            if h.status == OK:
                print(line)
            else:
                problems.append(line)
    return problems


def triage_command(cfg: Config, source: str) -> int:
    """Run baseline against the series; 0 no significant change or better, 2 a problem was found."""
    from .report import report_url
    from .results import new_run_id
    from .triage import outcome, parse_series, resolve_source, triage_config, write_reply

    workdir = cfg.runs_dir / "triage" / new_run_id()
    workdir.mkdir(parents=True)
    series = parse_series(resolve_source(source, workdir), workdir / "patches")
    tcfg, note = triage_config(cfg, series)
    cand = tcfg.candidates[1].name
    print(f"triage: {len(series.patches)} patch(es) as candidate '{cand}', {note}"
          + (f"; skipped {len(series.skipped)} non-patch message(s)" if series.skipped else ""), file=sys.stderr)
    folder = run_pipeline(tcfg, None, Progress())
    out = write_report(folder.path, cfg.report.dir)
    results, metadata = load_run(folder.path)
    a = analyze(results)
    first = outcome(results, a, cand, series) + f"\n\n(The series was {note}.)"
    link = report_url(cfg.report.base_url, folder.run_id)
    reply = write_reply(series, render_text(results, metadata, a), first, link, out / "reply.eml")
    print(first)
    print(f"\nreport: {out / 'index.html'}\nreply:  {reply} (not sent)")
    print(f"send it with: git send-email --confirm=always {reply}\n"
          f"          or: /usr/sbin/sendmail -t < {reply}")
    return exitcodes.for_analysis(a)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "doctor":
            problems = doctor(args.config, args.hosts, check_hosts=True)
            for line in problems:
                print(line)
            print("all tools present" if not problems else f"{len(problems)} problem(s)")
            return exitcodes.FAILURE if problems else exitcodes.OK
        cfg = load_config(args.config, args.hosts)
        if args.command == "validate":
            from .patch import check_changes
            from .runner import selected_candidates
            for c in selected_candidates(cfg, args.only):
                check_changes(c)
            print(f"{args.config}: OK ({len(cfg.candidates)} candidates, baseline {cfg.baseline})")
            return exitcodes.OK
        if args.command == "serve":
            handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(cfg.report.dir))
            with http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler) as httpd:
                print(f"serving {cfg.report.dir} on http://127.0.0.1:{args.port}/ (Ctrl-C stops)")
                try:
                    httpd.serve_forever()
                except KeyboardInterrupt:
                    pass
            return exitcodes.OK
        if args.command == "report":
            run_dir = _run_dir(cfg.runs_dir, args.run)
            results, metadata = load_run(run_dir)
            if args.format == "text":
                sys.stdout.write(render_text(results, metadata))
            elif args.format == "json":
                sys.stdout.write(render_json(results, metadata) + "\n")
            else:
                out = write_report(run_dir, cfg.report.dir)
                print(out / "index.html")
            return exitcodes.for_analysis(analyze(results))
        if args.command == "triage":
            return triage_command(cfg, args.source)
        if args.command == "run":
            problems = [p for p in doctor(args.config, args.hosts) if "missing" in p]
            if problems:
                raise InfraError("missing tools, install them first:\n  " + "\n  ".join(problems))
            resume = _run_dir(cfg.runs_dir, args.resume) if args.resume else None
            folder = run_pipeline(cfg, args.only, Progress(), resume=resume, wait_for_lock=not args.no_wait)
            out = write_report(folder.path, cfg.report.dir)
            results, metadata = load_run(folder.path)
            print(render_text(results, metadata))
            print(f"report: {out / 'index.html'}")
            return exitcodes.for_analysis(analyze(results))
    except (ConfigError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except (InfraError, PipelineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    except (KeyboardInterrupt, Interrupted):
        print("interrupted; QEMU processes stopped, results so far are in the run folder", file=sys.stderr)
        return exitcodes.FAILURE
    return exitcodes.FAILURE
