"""The same evaluation as LAVA jobs and through the local runtime, alternately: do they agree?

    .venv/bin/python bench/lava_vs_local.py [--config examples/lava.yaml] [--passes 2] [--also lava=RUN ...]

Needs the local LAVA (vm-templates/lava/lava-local.sh start) and a quiet machine: every pass runs
`kpipe run -q` once through the local runtime (the config without `runtime:` and `lava:`) and once as
LAVA jobs, alternating, so a drift of the machine's speed falls on both. Prints, per runtime, each
candidate's median guest boot and per-grace-period cost over all its passes, the ratio of every
candidate to the baseline, how far LAVA is from local (per cent), the LAVA jobs' median cost beyond
the guest boot, and the reports of the last pass.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def run_once(config: Path, runs_dir: Path) -> Path:
    """`kpipe run -q -c config`; the new run's folder."""
    before = set(runs_dir.iterdir()) if runs_dir.exists() else set()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "-q", "-c", str(config)], cwd=REPO, check=False)
    new = sorted(set(runs_dir.iterdir()) - before)
    if proc.returncode not in (0, 3) or not new:
        raise SystemExit(f"kpipe run -c {config} exited {proc.returncode}")
    print(f"  {config.name}: {new[-1].name} in {time.monotonic() - t0:.0f} s", flush=True)
    return new[-1]


def figures(run_dirs: list[Path]) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Per candidate: median boot_s and gp_ms over every counted run of the folders; the jobs' overheads."""
    values: dict[str, dict[str, list[float]]] = {}
    overheads: list[float] = []
    for d in run_dirs:
        res = json.loads((d / "results.json").read_text())
        for name, c in res["candidates"].items():
            for r in c.get("runs", []):
                m = r["metrics"]
                v = values.setdefault(name, {"boot_s": [], "gp_ms": []})
                v["boot_s"].append(m["boot_s"])
                v["gp_ms"].append(m.get("gp_ms", float("nan")))
                if job := r.get("raw", {}).get("job"):
                    overheads.append(job["job_s"] - m["boot_s"])
    return ({n: {k: statistics.median(x) for k, x in v.items()} | {"n": len(v["boot_s"])} for n, v in values.items()},
            overheads)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "examples/lava.yaml")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--also", action="append", default=[], metavar="RUNTIME=RUN",
                    help="pool an earlier run of this bench (local=<run id> or lava=<run id>); repeatable")
    args = ap.parse_args()
    lava_cfg = args.config.resolve()
    doc = yaml.safe_load(lava_cfg.read_text())
    baseline = doc["baseline"]
    runs_dir = (lava_cfg.parent / doc.get("runs_dir", "runs")).resolve()
    local = {k: v for k, v in doc.items() if k not in ("runtime", "lava")}
    with tempfile.NamedTemporaryFile("w", suffix=".local.yaml", dir=lava_cfg.parent, delete=False) as f:
        yaml.safe_dump(local, f, sort_keys=False)
        local_cfg = Path(f.name)
    dirs: dict[str, list[Path]] = {"local": [], "lava": []}
    for also in args.also:
        rt, _, run_id = also.partition("=")
        dirs[rt].append(runs_dir / run_id)
    try:
        for i in range(args.passes):
            print(f"pass {i + 1} of {args.passes}", flush=True)
            dirs["local"].append(run_once(local_cfg, runs_dir))
            dirs["lava"].append(run_once(lava_cfg, runs_dir))
    finally:
        local_cfg.unlink()
    got = {rt: figures(d) for rt, d in dirs.items()}
    print(f"\n{'candidate':24} {'runtime':7} {'runs':>4} {'boot s':>8} {'ms/GP':>7} {'x base':>7}")
    for name in got["local"][0]:
        for rt in ("local", "lava"):
            fig = got[rt][0].get(name)
            if fig:
                ratio = fig["boot_s"] / got[rt][0][baseline]["boot_s"]
                print(f"{name:24} {rt:7} {int(fig['n']):4d} {fig['boot_s']:8.2f} {fig['gp_ms']:7.2f} {ratio:7.2f}")
        lo, la = got["local"][0].get(name), got["lava"][0].get(name)
        if lo and la:
            r_lo, r_la = (g[0][name]["boot_s"] / g[0][baseline]["boot_s"] for g in (got["local"], got["lava"]))
            print(f"{'':24} lava vs local: per GP {100 * (la['gp_ms'] / lo['gp_ms'] - 1):+.1f}%, boot "
                  f"{100 * (la['boot_s'] / lo['boot_s'] - 1):+.1f}%, "
                  f"ratio to {baseline} {100 * (r_la / r_lo - 1):+.1f}%")
    over = got["lava"][1]
    if over:
        print(f"\nLAVA jobs: {len(over)}, time on the device beyond the guest boot: median "
              f"{statistics.median(over):.1f} s ({min(over):.1f}-{max(over):.1f})")
    print("reports of the last pass: " + ", ".join(f"{rt} reports/{d[-1].name}" for rt, d in dirs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
