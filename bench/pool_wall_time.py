"""Wall time of an evaluation on one machine against a pool of SSH test machines.

Starts N real sshd daemons on 127.0.0.1 ports (root needed; the same helper the
tests use), writes a hosts file for them and runs the given pipeline.yaml twice:
once as configured (normally: this machine only) and once with `--hosts` the
loopback pool. Prints wall times, exit codes and which machine ran how many jobs.

    .venv/bin/python bench/pool_wall_time.py [-c pipeline.yaml] [--hosts-n 2] [--skip-single]

Loopback "machines" are this one machine (same boot_id), so by default they
take turns and the figure shows what going through SSH costs; with
--share-cpus they run at once and compete for the same CPUs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from sshd_hosts import SshdHost, keygen  # noqa: E402


def run(argv: list[str]) -> tuple[float, int, str]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", *argv], cwd=REPO, capture_output=True,
                          text=True, check=False)
    wall = time.monotonic() - t0
    run_line = next((ln for ln in proc.stderr.splitlines() if " run " in ln and " in /" in ln), "")
    run_dir = run_line.rsplit(" in ", 1)[-1].strip()
    return wall, proc.returncode, run_dir


def describe(run_dir: str) -> str:
    try:
        results = json.loads((Path(run_dir) / "results.json").read_text())
    except (OSError, ValueError):
        return "(no results.json)"
    hosts = ", ".join(f"{h['name']}: {h['jobs']} jobs ({h['status']})" for h in results.get("hosts", []))
    statuses = {n: c["status"] for n, c in results["candidates"].items()}
    return f"{results['status']}; {hosts}; candidates {statuses}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="pipeline.yaml")
    ap.add_argument("--hosts-n", type=int, default=2)
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument("--share-cpus", action="store_true",
                    help="let the loopback hosts run jobs at once (they are one machine: they compete for CPUs)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kpipe-pool-bench-"))
    pub = keygen(root / "client_key")
    hosts = [SshdHost(f"lab{i + 1}", root, pub) for i in range(args.hosts_n)]
    try:
        for h in hosts:
            h.start()
        known = root / "known_hosts"
        known.write_text("".join(h.known_hosts_line + "\n" for h in hosts))
        hosts_file = root / "hosts.yaml"
        entries = [h.yaml(root / "client_key", known) for h in hosts]
        if args.share_cpus:
            entries = [e.replace("min_free_gb: 0.5}", "min_free_gb: 0.5, share_cpus: true}") for e in entries]
        hosts_file.write_text("hosts:\n" + "".join(entries))
        rows = []
        if not args.skip_single:
            wall, rc, run_dir = run(["-c", args.config])
            rows.append(("this machine only", wall, rc, run_dir))
            print(f"single host: {wall:.0f} s, exit {rc}, {describe(run_dir)}", flush=True)
        wall, rc, run_dir = run(["-c", args.config, "--hosts", str(hosts_file)])
        rows.append((f"pool of {args.hosts_n} loopback sshd hosts", wall, rc, run_dir))
        print(f"pool: {wall:.0f} s, exit {rc}, {describe(run_dir)}", flush=True)
        print()
        print(f"{'setup':<36} {'wall':>8} {'exit':>4}  run")
        for name, wall, rc, run_dir in rows:
            print(f"{name:<36} {wall / 60:>5.1f}min {rc:>4}  {run_dir}")
    finally:
        for h in hosts:
            h.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
