#!/usr/bin/env python3
"""scipy's two-sample KS test on raw values, for tests/faults.rs.

    ks_reference.py IN.json
        IN.json is {"pairs": [[reference values], [current values]], ...]};
        prints a JSON list of {"ks": D, "pvalue": p} from
        scipy.stats.ks_2samp (method "auto"), one per pair.
"""

import json
import sys

from scipy import stats


def main():
    with open(sys.argv[1]) as f:
        pairs = json.load(f)["pairs"]
    out = []
    for ref, cur in pairs:
        r = stats.ks_2samp(ref, cur)
        out.append({"ks": float(r.statistic), "pvalue": float(r.pvalue)})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
