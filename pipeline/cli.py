"""kpipe: does this kernel patch fix the slowdown, and what does it cost?

The command line is a thin layer over the library: one handler per
subcommand, `main(argv) -> int`, exit codes defined once in pipeline.exitcodes.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from pipeline import __version__, exitcodes
from pipeline.config import load_config
from pipeline.errors import ConfigError, InfraError, PipelineError, UserError
from pipeline.flows.rederive import rederive
from pipeline.flows.triage import TRIAGE_CENSOR
from pipeline.report.analysis import analyze
from pipeline.report.render import load_run, render_json, render_text, write_report
from pipeline.run.runner import Interrupted
from pipeline.util.progress import Progress
from pipeline.util.untrusted import clean, one_line

EPILOG = """\
exit codes:
  0   no regression, and every candidate was measured
  3   a candidate boots the guest significantly slower than its reference
  4   no regression found, but a candidate could not be evaluated (patch, build or boot failed)
  64  usage or configuration error
  70  pipeline or infrastructure failure, or the run was interrupted
"""


class _Parser(argparse.ArgumentParser):
    """argparse that exits with kpipe's usage code (64), never 2, which scripts must not confuse."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(exitcodes.USAGE, f"{self.prog}: error: {message}\n")


def _run_dir(runs_dir: Path, run: str) -> Path:
    path = Path(run)
    if (path / "results.json").exists():
        return path
    if (runs_dir / run / "results.json").exists():
        return runs_dir / run
    raise UserError(f"no run {run!r}: neither {path} nor {runs_dir / run} holds a results.json")


def _progress(args: argparse.Namespace) -> Progress:
    return Progress(quiet=args.quiet)


# -- one handler per subcommand ------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.doctor import missing_tools
    from pipeline.run.runner import run_pipeline

    cfg = load_config(args.config, args.hosts)
    problems = missing_tools()
    if problems:
        raise InfraError("missing tools, install them first (./setup.sh does):\n  " + "\n  ".join(problems))
    resume = _run_dir(cfg.runs_dir, args.resume) if args.resume else None
    folder = run_pipeline(cfg, args.only, _progress(args), resume=resume, wait_for_lock=not args.no_wait)
    out = write_report(folder.path, cfg.report.dir)
    results, metadata = load_run(folder.path)
    print(render_text(results, metadata))
    print(f"report: {out / 'index.html'}")
    return exitcodes.for_analysis(analyze(results))


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.run.runner import selected_candidates
    from pipeline.stages.patchcheck import check_changes

    cfg = load_config(args.config, args.hosts)
    for c in selected_candidates(cfg, args.only):
        check_changes(c)
    print(f"{args.config}: OK ({len(cfg.candidates)} candidates, baseline {cfg.baseline})")
    return exitcodes.OK


def cmd_report(args: argparse.Namespace) -> int:
    # A report needs only the run folder: no config, no kernel source on this machine.
    run_dir = _run_dir(Path(args.runs_dir), args.run)
    if args.rederive:
        print(f"{run_dir}: {rederive(run_dir)} run(s) re-derived from their raw output", file=sys.stderr)
    results, metadata = load_run(run_dir)
    if args.format == "text":
        sys.stdout.write(render_text(results, metadata))
    elif args.format == "json":
        sys.stdout.write(render_json(results, metadata) + "\n")
    else:
        out = write_report(run_dir, Path(args.output))
        print(out / "index.html")
    return exitcodes.for_analysis(analyze(results))


class _ReportHandler(http.server.SimpleHTTPRequestHandler):
    """Files under the served folder only: no directory listings, nothing reached through a symlink
    that leads out of the folder."""

    def list_directory(self, path: str | os.PathLike[str]) -> None:  # type: ignore[override]
        self.send_error(404, "no listing")
        return None

    timeout = 15  # a connection that sends nothing is closed (slow or half-sent requests hold no thread)

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")  # a log is never sniffed into a page
        super().end_headers()

    def translate_path(self, path: str) -> str:
        local = super().translate_path(path)
        if "\x00" in local:
            return os.path.join(os.path.realpath(self.directory), ".kpipe-not-served")
        root = os.path.realpath(self.directory)
        real = os.path.realpath(local)
        if real != root and not real.startswith(root + os.sep):
            return os.path.join(root, ".kpipe-not-served")  # a path that does not exist: 404
        return local


class _BoundedServer(http.server.ThreadingHTTPServer):
    """At most MAX_CONNECTIONS requests served at once; one more is closed at once, not queued in a thread."""

    MAX_CONNECTIONS = 32
    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def cmd_serve(args: argparse.Namespace) -> int:
    directory = Path(args.directory).resolve()
    handler = functools.partial(_ReportHandler, directory=str(directory))
    with _BoundedServer((args.bind, args.port), handler) as httpd:
        print(f"serving {directory} on http://{args.bind}:{httpd.server_address[1]}/ (Ctrl-C stops)")
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
    return exitcodes.OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from pipeline.doctor import doctor

    fine, problems = doctor(args.config, args.hosts, check_hosts=True)
    for line in fine + problems:
        print(line)
    print("all tools present" if not problems else f"{len(problems)} problem(s)")
    return exitcodes.FAILURE if problems else exitcodes.OK


def _censor_factor(text: str) -> float:
    value = float(text)
    if not (value == 0 or 1.5 <= value <= 1000):
        raise argparse.ArgumentTypeError("0 (never) or 1.5 to 1000")
    return value


def cmd_triage(args: argparse.Namespace) -> int:
    from pipeline.flows.triage import run_triage

    cfg = load_config(args.config, args.hosts)
    t = run_triage(cfg, args.source, _progress(args), bisect=args.bisect, censor=args.censor)
    print(clean(t.first_paragraph))  # it quotes the build's or the console's output
    for w in t.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"\nreport: {t.report_dir / 'index.html'}\nreply:  {t.reply} (not sent)")
    print(f"send it with: git send-email --confirm=always {t.reply}\n"
          f"          or: /usr/sbin/sendmail -t < {t.reply}")
    return exitcodes.for_analysis(t.analysis)


def cmd_bisect(args: argparse.Namespace) -> int:
    from pipeline.flows.bisect import Bisector, tree_for_bisect
    from pipeline.flows.bisect_report import render_text as bisect_text
    from pipeline.flows.bisect_report import write_report as bisect_report
    cfg = load_config(args.config, args.hosts)
    folder = Path(args.resume) if args.resume else None
    if folder and not (folder / "bisect.json").exists():
        raise UserError(f"--resume {args.resume}: no bisect.json there")
    b = Bisector(cfg, tree_for_bisect(cfg, args.tree), args.good, args.bad, args.metric, args.start_rounds,
                 args.max_rounds, folder, _progress(args))
    result = b.run()
    out = bisect_report(result, cfg.report.dir)
    print(bisect_text(result))
    print(f"report: {out / 'index.html'}\nstate:  {result.folder / 'bisect.json'} (continue with --resume)")
    return exitcodes.OK if result.first_bad else exitcodes.INCOMPLETE


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kpipe", description=__doc__.splitlines()[0], epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"kpipe {__version__}")
    verbosity = _Parser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    config = _Parser(add_help=False)
    config.add_argument("-c", "--config", default="pipeline.yaml", help="pipeline.yaml to use")
    hosts = _Parser(add_help=False)
    hosts.add_argument("--hosts", metavar="FILE", help="YAML file whose 'hosts:' list replaces the config's pool")
    only = _Parser(add_help=False)
    only.add_argument("--only", action="append", metavar="CANDIDATE",
                      help="only this candidate (with the baseline and its references); repeatable")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, func, help_text: str, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[verbosity, *parents], help=help_text, description=help_text,  # type: ignore[list-item]
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        return sp

    run_p = add("run", cmd_run, "run every candidate and render the report", [config, hosts, only])
    run_p.add_argument("--resume", metavar="RUN", help="continue an interrupted run (id or folder)")
    run_p.add_argument("--no-wait", action="store_true", help="fail instead of waiting for a busy cache")
    add("validate", cmd_validate, "check pipeline.yaml and the patches it names; nothing runs",
        [config, hosts, only])
    rep = add("report", cmd_report, "render a run's report again from its results.json", [])
    rep.add_argument("run", help="a run folder (runs/<id> or reports/<id>), or a run id under --runs-dir")
    rep.add_argument("--runs-dir", default="runs", help="where run ids are looked up (default: runs)")
    rep.add_argument("--format", choices=("html", "text", "json"), default="html")
    rep.add_argument("--output", default="reports", help="folder the HTML report goes under (default: reports)")
    rep.add_argument("--rederive", action="store_true", help="first compute the workload's figures again from "
                     "each run's raw output with this version's accounting (rewrites the folder's results.json)")
    srv = add("serve", cmd_serve, "serve a folder (reports/; a LAVA artefact store) on 127.0.0.1 or --bind", [])
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--bind", default="127.0.0.1", help="address to listen on (a lab's workers: this machine's)")
    srv.add_argument("--directory", default="reports", help="folder to serve (default: reports)")
    add("doctor", cmd_doctor, "list missing tools and check the test machines", [config, hosts])
    tri = add("triage", cmd_triage, "evaluate a posted patch series (mbox, maildir message or Message-ID) "
                                    "against the baseline and write a reply email", [config, hosts])
    tri.add_argument("source", help="an mbox file, a maildir message file, or a Message-ID (fetched with b4)")
    tri.add_argument("--bisect", action="store_true", help="when a series of several patches regresses, bisect "
                                                          "it to the patch that does")
    tri.add_argument("--censor", type=_censor_factor, default=TRIAGE_CENSOR, metavar="K",
                     help="stop a run of the series at K times the baseline's median boot and read it as 'at "
                          "least' (default 3; 0 measures every run to its end, host CPU included)")
    bis = add("bisect", cmd_bisect, "find the first commit between a good and a bad revision whose measurement "
                                    "differs from the good end's", [config, hosts])
    bis.add_argument("--good", required=True, help="a revision measured as good (commit, tag, branch)")
    bis.add_argument("--bad", required=True, help="a later revision measured as bad")
    bis.add_argument("--tree", help="the tree (a key of trees:) whose history is bisected (default: the baseline's)")
    bis.add_argument("--metric", default="boot_s", help="the metric judged (default: boot_s, the guest boot time)")
    bis.add_argument("--start-rounds", type=int, default=3, help="rounds per step before the first verdict")
    bis.add_argument("--max-rounds", type=int, default=7, help="most rounds a step takes when inconclusive")
    bis.add_argument("--resume", metavar="FOLDER", help="continue a bisection (its folder, with bisect.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The kpipe command line: parse argv, run one subcommand, return its exit code (exitcodes)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (ConfigError, UserError) as exc:
        print(f"error: {clean(str(exc))}", file=sys.stderr)
        return exitcodes.USAGE
    except (InfraError, PipelineError) as exc:
        print(f"error: {clean(str(exc))}", file=sys.stderr)
        return exitcodes.FAILURE
    except OSError as exc:  # the machine's: a full disk, a permission, a file gone
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return exitcodes.FAILURE
    except (KeyboardInterrupt, Interrupted):
        print("interrupted; QEMU processes stopped, results so far are in the run folder", file=sys.stderr)
        return exitcodes.FAILURE
    except Exception as exc:  # noqa: BLE001 - a one-line error, never a traceback; -vv shows it
        if args.verbose > 1:
            raise
        print(f"internal error (a kpipe bug, please report it): {type(exc).__name__}: {one_line(str(exc), 300)}; "
              f"run again with -vv for the traceback", file=sys.stderr)
        return exitcodes.FAILURE
