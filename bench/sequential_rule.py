"""The sequential rule's error rate, power and cost, simulated with pipeline.yaml's settings. Prints a table.

    .venv/bin/python bench/sequential_rule.py [--trials 1000] [--sd 0.113]

For each scenario (a family of candidates against one baseline, as in the default evaluation): the
share of evaluations with any false verdict (null scenarios) or with the planted change found, the
extra test-host seconds spent and the median runs per side; beside it the same scenario with a fixed
3 runs a side (looks 1), the rule this one replaces.  Noise is log-normal; the default log-sd is that
of the fast candidates in the committed reports.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.report.analysis import decision_family  # noqa: E402
from pipeline.report.sequential import simulate  # noqa: E402
from pipeline.report.stats import FASTER, SLOWER  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--sd", type=float, default=0.113)
    args = ap.parse_args()
    cfg = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    specs = {c["name"]: c for c in cfg["candidates"]}
    family = len(decision_family(list(specs), specs, cfg["baseline"]))
    reps, alpha = cfg["repetitions"], float(cfg["report"]["alpha"])
    scenarios = [("all null", [0.0] * family, 1.0, None),
                 ("+30% among nulls", [0.3] + [0.0] * (family - 1), 1.0, SLOWER),
                 ("-30% among nulls", [-0.3] + [0.0] * (family - 1), 1.0, FASTER),
                 ("17.7x, one baseline run x3", [16.7] + [0.0] * (family - 1), 3.0, SLOWER)]
    print(f"pipeline.yaml: family {family}, alpha {alpha}, counted {reps['counted']}, looks {reps['looks']}, "
          f"max_counted {reps['max_counted']}, budget_s {reps['budget_s']}; log-sd {args.sd}, "
          f"{args.trials} trials each")
    print(f"{'scenario':<30} {'rule':<10} {'rate':>6} {'95% CI':>15} {'extra s':>8} {'runs base/c0':>13}")
    for name, effects, outlier, want in scenarios:
        for rule, looks in (("sequential", reps["looks"]), ("fixed 3", 1)):
            rng = np.random.default_rng(1)
            hits, spent, runs = 0, [], []
            for _ in range(args.trials):
                verdicts, s, n = simulate(effects, args.sd, reps["counted"], looks, reps["max_counted"],
                                          reps["budget_s"], alpha, rng, outlier)
                hits += (any(v in (SLOWER, FASTER) for v in verdicts) if want is None else verdicts[0] == want)
                spent.append(s)
                runs.append((n["base"], n["c0"]))
            rate = hits / args.trials
            half = 1.96 * (rate * (1 - rate) / args.trials) ** 0.5
            base_n, c0_n = np.median(runs, axis=0)
            what = "false" if want is None else "found"
            print(f"{name:<30} {rule:<10} {rate:6.3f} [{max(0, rate - half):.3f}, {min(1, rate + half):.3f}] "
                  f"{np.median(spent):8.0f} {base_n:6.0f}/{c0_n:<6.0f} ({what})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
