#!/usr/bin/env python3
"""Independent reference scores for a tabular model (e.g. ctr-ranker).

Reads RequestEvents (JSON lines; recorded lines with a "topic" field and
PredictionEvents work too, only `request_id`, `model` and `features` are
used), lays out each request's input row by the model's `feature_spec.json`
and runs Python onnxruntime (CPU). Writes one JSON line per input line:

    {"request_id": "r-1", "model": "ctr-ranker", "model_version": "1", "score": 0.0421...}
    {"request_id": "r-2", "model": "ctr-ranker", "model_version": "1", "error": "feature `price`: missing"}

`score` is the float32 model output widened to a double exactly (print it
with repr, compare in Rust as `f64::from(f32)`); `row` (with --rows) is the
float32 input row. This is what the Rust worker's integration test compares
against (tolerance 1e-6). Needs only numpy and onnxruntime.

    python inference/scripts/score_reference.py inference/models/ctr-ranker requests.jsonl
    python inference/scripts/score_reference.py inference/models/ctr-ranker requests.jsonl \
        --version 2 --batch-size 32 --out scores.jsonl --rows
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


class InvalidRequest(ValueError):
    pass


def latest_version(model_dir: Path) -> str:
    versions = [p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / "model.onnx").exists()]
    if not versions:
        raise SystemExit(f"no <N>/model.onnx under {model_dir}")
    return max(versions, key=int)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def encode_row(spec: dict, features) -> np.ndarray:
    """The float32 input row for one request, or InvalidRequest naming the
    feature. The rules are `encoding_rules` of the spec."""
    if features is None:
        features = {}
    if not isinstance(features, dict):
        raise InvalidRequest("`features`: not an object")
    # Validate every feature the model knows first, so errors name the feature.
    for name, f in spec["features"].items():
        v = features.get(name)
        if v is None:
            if f.get("required") and "default" not in f:
                raise InvalidRequest(f"feature `{name}`: {'null' if name in features else 'missing'}")
            continue
        if f["type"] == "number":
            if not is_number(v):
                raise InvalidRequest(f"feature `{name}`: expected a number, got {type(v).__name__}")
            if not math.isfinite(float(v)):
                raise InvalidRequest(f"feature `{name}`: not finite")
        elif f["type"] == "string":
            if not isinstance(v, str):
                raise InvalidRequest(f"feature `{name}`: expected a string, got {type(v).__name__}")
    cols = spec["columns"]
    row = np.zeros(len(cols), dtype=np.float32)
    for col in cols:
        name, enc = col["feature"], col["encode"]
        v = features.get(name)
        if enc == "number":
            # f64 -> f32 round-to-nearest, as Rust's `as f32`.
            row[col["index"]] = np.float32(float(spec["features"][name]["default"]) if v is None else float(v))
        elif enc == "is_null":
            row[col["index"]] = 1.0 if v is None else 0.0
        elif enc == "one_hot":
            row[col["index"]] = 1.0 if v == col["value"] else 0.0
        else:
            raise SystemExit(f"feature spec: unknown encoding {enc!r}")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", help="e.g. inference/models/ctr-ranker (holds feature_spec.json and <N>/model.onnx)")
    ap.add_argument("requests", help="JSON lines of RequestEvents ('-' = stdin)")
    ap.add_argument("--version", help="model version directory (default: the highest number)")
    ap.add_argument("--batch-size", type=int, default=0, help="rows per session.run (default 0: all at once)")
    ap.add_argument("--out", help="write JSON lines here instead of stdout")
    ap.add_argument("--rows", action="store_true", help="also write the float32 input row of each request")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    args = ap.parse_args()

    model_dir = Path(args.model_dir)
    spec = json.loads((model_dir / "feature_spec.json").read_text())
    version = args.version or latest_version(model_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model_dir / version / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    in_name = spec["inputs"][0]["name"]
    out_name = next(o["name"] for o in spec["outputs"] if o.get("score"))

    fh = sys.stdin if args.requests == "-" else open(args.requests, encoding="utf-8")
    results: list[dict] = []
    rows, slots = [], []
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except json.JSONDecodeError as err:
            results.append({"line": lineno, "error": f"not JSON: {err}"})
            continue
        r = {"request_id": e.get("request_id"), "model": e.get("model"), "model_version": version}
        results.append(r)
        if e.get("model") != spec["model"]:
            r["error"] = f"model `{e.get('model')}`: this spec is for `{spec['model']}`"
            continue
        try:
            rows.append(encode_row(spec, e.get("features")))
            slots.append(r)
        except InvalidRequest as err:
            r["error"] = str(err)

    if rows:
        x = np.stack(rows)
        bs = args.batch_size if args.batch_size > 0 else len(x)
        scores = np.concatenate([sess.run([out_name], {in_name: x[i : i + bs]})[0].reshape(-1) for i in range(0, len(x), bs)])
        assert scores.dtype == np.float32 and len(scores) == len(slots)
        for r, s, row in zip(slots, scores, x):
            r["score"] = float(s)
            if args.rows:
                r["row"] = [float(v) for v in row]

    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    for r in results:
        out.write(json.dumps(r) + "\n")
    if args.out:
        out.close()
    ok = sum("score" in r for r in results)
    print(f"scored {ok}, errors {len(results) - ok}, model {spec['model']} v{version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
