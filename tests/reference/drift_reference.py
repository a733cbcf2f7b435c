#!/usr/bin/env python3
"""Independent reference for infermon's drift and label-quality statistics.

Used by tests/drift_reference.rs; every number here comes from numpy, scipy
or scikit-learn, never from infermon.

    drift_reference.py make REF.jsonl CUR.jsonl
        Write two synthetic recordings: a reference (model m, version 1) and
        current traffic whose windows drift by known amounts, with feedback.
    drift_reference.py expect REF.jsonl CUR.jsonl
        Print (JSON) the reference profile and, per 60 s window and feature,
        the statistics infermon must report, computed from the raw events.
    drift_reference.py exact IN.json
        Print scipy / sklearn values for the arrays in IN.json (the exact,
        unbinned functions).

Binning (documented in operators/src/drift/profile.rs, `bin_edges`): with at
most bins/2 distinct reference values, every value v gets the bin
[v, nextafter(v, inf)); otherwise interior edges at the k/bins quantiles of
the reference, the "lower" order statistic sorted[k*(n-1)//bins], duplicates
removed, an edge equal to the minimum dropped, plus the point bin of every
value holding at least ceil(n/bins) (and 2) of the values; a value x falls
in bin searchsorted(edges, x, side="right").
"""

import json
import math
import sys

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import log_loss, roc_auc_score

BINS, PSI_BINS, MIN_SAMPLES = 100, 10, 200
PSI_FLOOR = 1e-4
T = dict(psi=0.2, wasserstein=0.1, js=0.1, max_pvalue=1e-4, null_rate_increase=0.05)
WINDOW_MS = 60_000
REF_T0 = 1_763_600_000_000
CUR_T0 = 1_763_700_000_000 - 1_763_700_000_000 % WINDOW_MS
CATS = ["a", "b", "c", "d"]

# Current windows: (rows, x shift in sd, x scale, y null rate, category
# probabilities, score shift). Window 2 is too small to judge.
CUR_WINDOWS = [
    (1000, 0.0, 1.0, 0.02, [0.4, 0.3, 0.2, 0.1], 0.0),
    (1000, 0.3, 1.0, 0.02, [0.4, 0.3, 0.2, 0.1], 0.0),
    (150, 0.0, 1.0, 0.02, [0.4, 0.3, 0.2, 0.1], 0.0),
    (1000, 1.0, 1.0, 0.20, [0.1, 0.2, 0.2, 0.3, 0.2], 0.0),
    (1000, 0.0, 1.0, 0.02, [0.4, 0.3, 0.2, 0.1], 0.05),
    (1000, 0.0, 2.0, 0.02, [0.25, 0.25, 0.25, 0.25], 0.0),
]


def event(rng, rid, ts, x_shift, x_scale, y_null, cat_p, score_shift):
    feats = {"x": round(10.0 + 2.0 * (x_scale * rng.standard_normal() + x_shift), 6)}
    feats["y"] = None if rng.random() < y_null else round(float(rng.lognormal(1.0, 0.5)), 2)
    cats = CATS + ["zzz"]
    feats["c"] = cats[rng.choice(len(cat_p), p=cat_p)]
    ok = rng.random() >= 0.02
    e = {"topic": "inference.predictions", "request_id": rid, "ts": int(ts), "model": "m",
         "model_version": "1", "status": "ok" if ok else "error",
         "timings_ms": {"total": 1.0}, "features": feats}
    if ok:
        e["score"] = round(min(0.999, float(rng.beta(2, 20)) + score_shift), 6)
    return e


def make(ref_path, cur_path):
    rng = np.random.default_rng(20261123)
    with open(ref_path, "w") as f:
        n = 30_000
        for i, ts in enumerate(np.sort(rng.integers(REF_T0, REF_T0 + 25 * 60_000, n))):
            f.write(json.dumps(event(rng, f"ref-{i}", ts, 0.0, 1.0, 0.02, [0.4, 0.3, 0.2, 0.1], 0.0)) + "\n")
    lines = []
    for w, (n, xs, xsc, yn, cp, ss) in enumerate(CUR_WINDOWS):
        start = CUR_T0 + w * WINDOW_MS
        for i, ts in enumerate(np.sort(rng.integers(start, start + WINDOW_MS, n))):
            e = event(rng, f"cur-{w}-{i}", ts, xs, xsc, yn, cp, ss)
            lines.append((e["ts"], e))
            if "score" in e and rng.random() < 0.5:
                label = int(rng.random() < e["score"])
                fts = e["ts"] + int(rng.integers(1000, 5000))
                lines.append((fts, {"topic": "inference.feedback", "request_id": e["request_id"],
                                    "ts": fts, "label": label}))
                if label == 0 and rng.random() < 0.05:  # a later click wins
                    lines.append((fts + 500, {"topic": "inference.feedback",
                                              "request_id": e["request_id"], "ts": fts + 500, "label": 1}))
    lines.append((CUR_T0 + 1, {"topic": "inference.feedback", "request_id": "nobody",
                               "ts": CUR_T0 + 1, "label": 1}))
    lines.sort(key=lambda t: t[0])
    with open(cur_path, "w") as f:
        for _, e in lines:
            f.write(json.dumps(e) + "\n")


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def quantile_edges(sorted_values, bins):
    n = len(sorted_values)
    edges = []
    for k in range(1, bins):
        e = sorted_values[k * (n - 1) // bins]
        if not edges or edges[-1] != e:
            edges.append(e)
    if edges and edges[0] == sorted_values[0]:
        edges.pop(0)
    return edges


def bin_edges(sorted_values, bins):
    values, counts = np.unique(sorted_values, return_counts=True)
    if len(values) <= bins // 2:
        return [e for v in values for e in (float(v), math.nextafter(float(v), math.inf))]
    heavy = max(2, -(-len(sorted_values) // bins))
    edges = set(quantile_edges(sorted_values, bins))
    for v, c in zip(values, counts):
        if c >= heavy:
            edges.update((float(v), math.nextafter(float(v), math.inf)))
    return sorted(edges)


def columns(events):
    """Per feature: list of values (None = null) over rows carrying features;
    score over ok rows."""
    preds = [e for e in events if e["topic"] == "inference.predictions"]
    feat_rows = [e for e in preds if e.get("features")]
    out = {}
    for name in sorted({k for e in feat_rows for k in e["features"]}):
        out[name] = [e["features"].get(name) for e in feat_rows]
    out["score"] = [e.get("score") for e in preds if e["status"] == "ok"]
    return out


def profile(events):
    prof = {}
    for name, values in columns(events).items():
        present = [v for v in values if v is not None]
        nulls = len(values) - len(present)
        if present and isinstance(present[0], str):
            cats, counts = np.unique(present, return_counts=True)
            order = sorted(range(len(cats)), key=lambda i: (-counts[i], cats[i]))
            prof[name] = {"type": "categorical", "categories": [str(cats[i]) for i in order],
                          "counts": [int(counts[i]) for i in order] + [0], "nulls": nulls}
        else:
            x = np.sort(np.array(present, dtype=float))
            edges = bin_edges(list(x), BINS)
            counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)
            prof[name] = {"type": "numeric", "edges": edges,
                          "coarse_edges": bin_edges(list(x), PSI_BINS),
                          "counts": [int(c) for c in counts], "nulls": nulls,
                          "mean": float(x.mean()), "std": float(x.std()),
                          "min": float(x[0]), "max": float(x[-1]), "_values": x}
    return prof


def psi(r, c):
    p = np.maximum(r / r.sum(), PSI_FLOOR)
    q = np.maximum(c / c.sum(), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def stephens_pvalue(d, n, m):
    """The KS p-value infermon documents: Kolmogorov's Q at Stephens' lambda."""
    ne = n * m / (n + m)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    if lam < 0.2:
        return 1.0
    k = np.arange(1, 101)
    return float(min(1.0, max(0.0, 2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k * k * lam * lam)))))


def compare(name, ref, values, rows):
    present = [v for v in values if v is not None]
    out = {"feature": name, "n_cur": len(present), "n_ref": int(sum(ref["counts"])),
           "null_rate": 1.0 - len(present) / rows if rows else 0.0}
    drift = False
    if ref["type"] == "numeric" and present:
        cur = np.sort(np.array(present, dtype=float))
        edges, coarse = ref["edges"], ref["coarse_edges"]
        rc = np.array(ref["counts"], dtype=float)
        cc = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1).astype(float)
        rcoarse = np.bincount(np.searchsorted(coarse, ref["_values"], side="right"), minlength=len(coarse) + 1)
        ccoarse = np.bincount(np.searchsorted(coarse, cur, side="right"), minlength=len(coarse) + 1)
        out["psi"] = psi(rcoarse.astype(float), ccoarse.astype(float))
        out["js"] = float(jensenshannon(rcoarse, ccoarse, base=2))
        # KS at the fine edges: both empirical CDFs evaluated exactly there.
        ks = float(np.max(np.abs(np.cumsum(rc)[:-1] / rc.sum() - np.cumsum(cc)[:-1] / cc.sum())))
        out["ks"] = ks
        out["ks_pvalue"] = stephens_pvalue(ks, out["n_ref"], out["n_cur"])
        n, m = sorted([out["n_ref"], out["n_cur"]], reverse=True)
        out["ks_pvalue_scipy_asymp"] = float(stats.kstwo.sf(ks, round(n * m / (n + m))))
        exact = stats.ks_2samp(ref["_values"], cur)
        out["ks_exact"] = float(exact.statistic)
        out["ks_pvalue_scipy"] = float(exact.pvalue)
        out["wasserstein_exact"] = float(stats.wasserstein_distance(ref["_values"], cur)) / ref["std"]
        effect = out["psi"] >= T["psi"] or out["wasserstein_exact"] >= T["wasserstein"] or out["js"] >= T["js"]
        drift = effect and out["ks_pvalue"] < T["max_pvalue"]
    elif ref["type"] == "categorical" and present:
        slot = {c: i for i, c in enumerate(ref["categories"])}
        cc = np.zeros(len(ref["counts"]))
        for v in present:
            cc[slot.get(v, len(ref["categories"]))] += 1
        rc = np.array(ref["counts"], dtype=float)
        out["psi"] = psi(rc, cc)
        out["js"] = float(jensenshannon(rc, cc, base=2))
        keep = (rc + cc) > 0
        table = np.array([rc[keep], cc[keep]])
        out["chi2_pvalue"] = float(stats.chi2_contingency(table).pvalue)
        drift = out["js"] >= T["js"] and out["chi2_pvalue"] < T["max_pvalue"]
    if rows >= MIN_SAMPLES:
        ref_null = ref["nulls"] / (ref["nulls"] + sum(ref["counts"]))
        out["drifted"] = bool(drift or out["null_rate"] - ref_null >= T["null_rate_increase"])
    return out


def expect(ref_path, cur_path):
    prof = profile(read(ref_path))
    cur = read(cur_path)
    windows = []
    preds = [e for e in cur if e["topic"] == "inference.predictions"]
    for start in sorted({e["ts"] - e["ts"] % WINDOW_MS for e in preds}):
        in_w = [e for e in preds if start <= e["ts"] < start + WINDOW_MS]
        cols = columns([{**e} for e in in_w])
        feat_rows = sum(1 for e in in_w if e.get("features"))
        score_rows = sum(1 for e in in_w if e["status"] == "ok")
        for name in sorted(prof):
            rows = score_rows if name == "score" else feat_rows
            values = cols.get(name, [None] * rows)
            windows.append({"end_ms": start + WINDOW_MS, **compare(name, prof[name], values, rows)})
    # Label quality: the highest label per request wins.
    labels = {}
    for e in cur:
        if e["topic"] == "inference.feedback":
            labels[e["request_id"]] = max(labels.get(e["request_id"], 0), e["label"])
    quality = []
    for start in sorted({e["ts"] - e["ts"] % WINDOW_MS for e in preds}):
        pairs = [(e["score"], labels[e["request_id"]]) for e in preds
                 if start <= e["ts"] < start + WINDOW_MS and "score" in e and e["request_id"] in labels]
        s = np.array([p[0] for p in pairs])
        y = np.array([p[1] for p in pairs])
        ctr = float(y.mean())
        quality.append({"end_ms": start + WINDOW_MS, "n_labeled": len(pairs),
                        "auc": float(roc_auc_score(y, s)), "logloss": float(log_loss(y, s, labels=[0, 1])),
                        "ctr": ctr, "mean_score": float(s.mean()),
                        "calibration": float(s.mean()) / ctr})
    for p in prof.values():
        p.pop("_values", None)
    json.dump({"profile": prof, "drift": windows, "quality": quality}, sys.stdout)


def exact(in_path):
    data = json.load(open(in_path))
    out = []
    for case in data["samples"]:
        a, b = np.array(case["a"]), np.array(case["b"])
        out.append({"ks": float(stats.ks_2samp(a, b).statistic),
                    "wasserstein": float(stats.wasserstein_distance(a, b))})
    js = [float(jensenshannon(np.array(c["p"]), np.array(c["q"]), base=2)) for c in data["counts"]]
    chi2 = []
    for c in data["counts"]:
        r, q = np.array(c["p"], dtype=float), np.array(c["q"], dtype=float)
        keep = (r + q) > 0
        res = stats.chi2_contingency(np.array([r[keep], q[keep]]))
        chi2.append({"statistic": float(res.statistic), "pvalue": float(res.pvalue), "dof": int(res.dof)})
    quality = []
    for c in data["labelled"]:
        s, y = np.array(c["scores"]), np.array(c["labels"])
        quality.append({"auc": float(roc_auc_score(y, s)), "logloss": float(log_loss(y, s, labels=[0, 1]))})
    json.dump({"samples": out, "js": js, "chi2": chi2, "quality": quality}, sys.stdout)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2], sys.argv[3])
    elif cmd == "expect":
        expect(sys.argv[2], sys.argv[3])
    elif cmd == "exact":
        exact(sys.argv[2])
    else:
        sys.exit(f"unknown command {cmd}")
