"""Exact per-window latency statistics of a recording, with numpy.

The independent reference for infermon's windowed latency: reads a recorded
traffic file (JSON Lines), assigns each prediction to its 60 s event-time
window (aligned to the epoch, timestamp = window end) and prints, per
(model, model_version, stage, window), count / mean / max and the quantiles
p50..p999 with numpy's method="lower" (the element at rank floor(q*(n-1))).

Usage: python latency_quantiles.py FILE.jsonl > reference.json
"""

import json
import sys
from collections import defaultdict

import numpy as np

WINDOW_MS = 60_000
STAGES = ["total", "queue", "preprocess", "inference", "postprocess"]
QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p999": 0.999}


def main(path):
    values = defaultdict(list)
    with open(path) as f:
        for line in f:
            event = json.loads(line)
            if event.get("topic") != "inference.predictions":
                continue
            end = (event["ts"] // WINDOW_MS + 1) * WINDOW_MS
            for stage in STAGES:
                v = event["timings_ms"].get(stage)
                if v is not None:
                    values[(event["model"], event["model_version"], stage, end)].append(v)
    out = []
    for (model, version, stage, end), vs in sorted(values.items()):
        a = np.array(vs, dtype=np.float64)
        row = {
            "model": model,
            "model_version": version,
            "stage": stage,
            "window_end_ms": end,
            "count": int(a.size),
            "mean": float(a.mean()),
            "max": float(a.max()),
        }
        for name, q in QUANTILES.items():
            row[name] = float(np.quantile(a, q, method="lower"))
        out.append(row)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
