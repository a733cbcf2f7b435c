#!/usr/bin/env python3
"""Drift benchmark: infermon's drift operator vs scipy per column (and
Evidently's DataDriftPreset when it is importable), on the same numbers, in
one run. Not a test: its figures go to docs/benchmarks.md.

    python tests/reference/drift_bench.py INFERMON_BENCH_BINARY [--rows 1000000]
        [--reference-rows 100000] [--features 20]

Prints a table of timings, the speed-up, and how far infermon's binned
statistics are from scipy's exact ones.
"""

import argparse
import json
import subprocess
import tempfile
import time

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon


def data(rows, ref_rows, features, seed=1):
    rng = np.random.default_rng(seed)
    ref = rng.lognormal(0.0, 0.6, size=(ref_rows, features))
    cur = rng.lognormal(0.0, 0.6, size=(rows, features))
    # Half the features drift by growing amounts.
    for j in range(0, features, 2):
        cur[:, j] *= 1.0 + 0.05 * j
    return ref, cur


def scipy_per_column(ref, cur):
    out = []
    for j in range(ref.shape[1]):
        r, c = ref[:, j], cur[:, j]
        ks = stats.ks_2samp(r, c)
        edges = np.quantile(r, np.linspace(0, 1, 11)[1:-1])
        rc = np.bincount(np.searchsorted(edges, r, side="right"), minlength=10) / len(r)
        cc = np.bincount(np.searchsorted(edges, c, side="right"), minlength=10) / len(c)
        p, q = np.maximum(rc, 1e-4), np.maximum(cc, 1e-4)
        out.append({"ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
                    "wasserstein": float(stats.wasserstein_distance(r, c) / r.std()),
                    "psi": float(np.sum((q - p) * np.log(q / p))),
                    "js": float(jensenshannon(rc, cc, base=2))})
    return out


def evidently_preset(ref, cur):
    """Evidently's preset on the arrays (imported by the caller first, so
    its import time is not in the timing)."""
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset
    cols = [f"f{j:02}" for j in range(ref.shape[1])]
    report = Report([DataDriftPreset()])
    report.run(pd.DataFrame(cur, columns=cols), pd.DataFrame(ref, columns=cols))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("infermon")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reference-rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    ref, cur = data(a.rows, a.reference_rows, a.features)
    with tempfile.TemporaryDirectory() as d:
        ref.astype("<f8").tofile(f"{d}/ref.f64")
        cur.astype("<f8").tofile(f"{d}/cur.f64")
        ours = json.loads(subprocess.run(
            [a.infermon, "drift", "--reference", f"{d}/ref.f64", "--current", f"{d}/cur.f64",
             "--features", str(a.features), "--rounds", str(a.rounds)],
            check=True, capture_output=True, text=True).stdout)
    best = float("inf")
    for _ in range(a.rounds):
        t = time.perf_counter()
        theirs = scipy_per_column(ref, cur)
        best = min(best, time.perf_counter() - t)
    try:
        import evidently.presets  # noqa: F401  (import time is not timed)
        t = time.perf_counter()
        evidently_preset(ref, cur)
        evidently_s = time.perf_counter() - t
    except ImportError as e:
        evidently_s = None
        print(f"(Evidently not importable: {e})")

    infermon_s = ours["profile_s"] + ours["window_s"]
    print(f"{a.rows} rows x {a.features} features vs a {a.reference_rows}-row reference")
    print(f"{'':32}{'seconds':>10}{'vs infermon':>14}")
    print(f"{'infermon (profile + window)':32}{infermon_s:>10.3f}{1.0:>13.1f}x")
    print(f"{'  reference profile':32}{ours['profile_s']:>10.3f}")
    print(f"{'  window counts + statistics':32}{ours['window_s']:>10.3f}")
    print(f"{'scipy per column':32}{best:>10.3f}{best / infermon_s:>13.1f}x")
    if evidently_s is not None:
        print(f"{'Evidently DataDriftPreset':32}{evidently_s:>10.3f}{evidently_s / infermon_s:>13.1f}x")
    print("\nmax |infermon - scipy| over features (infermon binned: 100 fine / 10 coarse quantile bins)")
    for k in ["ks", "wasserstein", "psi", "js"]:
        gaps = [abs(ours["stats"][f"f{j:02}"][k] - theirs[j][k]) for j in range(a.features)]
        print(f"  {k:12} {max(gaps):.4f}")
    drifted = [ours["stats"][f"f{j:02}"]["drifted"] for j in range(a.features)]
    print(f"drifted (infermon): {sum(drifted)} of {a.features} features (the even ones shift)")


if __name__ == "__main__":
    main()
