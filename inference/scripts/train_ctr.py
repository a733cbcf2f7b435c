#!/usr/bin/env python3
"""Train the `ctr-ranker` click model and export it to ONNX.

Training data reproduces the tabular features of the traffic generator
(`replay-data/src/generate.rs`, fn `tabular`) with numpy and a fixed seed:

    price            LogNormal(ln 40, 0.9), rounded to 0.01
    user_ctr_7d      Beta(2, 60), rounded to 0.0001, null with p = 0.005
    item_popularity  LogNormal(ln 200, 1.2), rounded to an integer
    category         7 values, weights 0.18 0.22 0.17 0.13 0.10 0.10 0.10
    device           app 0.55, mobile 0.35, desktop 0.10
    click            Bernoulli(sigmoid(z)), the generator's own logistic model:
                     z = -3.2 - 0.3 ln(price/40) + 9 (ctr - 0.032)
                         + 0.12 ln(pop/200) + cat_effect + N(0, 0.3)

The model is a scikit-learn MLPClassifier (hidden 32, 16, ReLU) on
[log1p(price), ctr, ctr_is_null, log1p(pop), one-hot category, one-hot
device], standardised. It is exported with skl2onnx (zipmap off) and wrapped
so that the ONNX graph takes the *raw* numbers and does log1p + scaling
itself; the Rust worker only lays out one float32 row per request following
`feature_spec.json` (numbers as f32, null -> default + is_null = 1,
categoricals one-hot). Every op is a standard ONNX op (no ai.onnx.ml), so the
CUDA execution provider can run the whole graph.

    input   "features"   float32 [batch, 14]
    output  "click_prob" float32 [batch]

Usage (from the repository root):

    python inference/scripts/train_ctr.py                       # versions 1 and 2
    python inference/scripts/train_ctr.py --recording replay-data/recordings/latency-regression.jsonl.zst

`--recording` additionally compares the synthetic training data with the
ctr-ranker / recsys-ranker / ads-ctr predictions in a generator recording
(feature quantiles, and AUC on its feedback labels); it needs `zstandard`
for .zst files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from skl2onnx import to_onnx  # noqa: E402
from sklearn.metrics import log_loss, roc_auc_score  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

MODEL_NAME = "ctr-ranker"
CATEGORIES = ["electronics", "fashion", "home", "beauty", "sports", "books", "toys"]
CATEGORY_WEIGHTS = [0.18, 0.22, 0.17, 0.13, 0.10, 0.10, 0.10]
DEVICES = ["app", "mobile", "desktop"]
DEVICE_WEIGHTS = [0.55, 0.35, 0.10]
CAT_EFFECT = {"electronics": 0.25, "fashion": 0.1, "books": -0.2}
# Mean of Beta(2, 60) = 2/62, rounded like the generator rounds the feature.
CTR_DEFAULT = 0.0323
NULL_RATE = 0.005

# The ordered columns of the input row (the feature spec is built from this).
COLUMNS: list[dict] = (
    [
        {"feature": "price", "encode": "number"},
        {"feature": "user_ctr_7d", "encode": "number"},
        {"feature": "user_ctr_7d", "encode": "is_null"},
        {"feature": "item_popularity", "encode": "number"},
    ]
    + [{"feature": "category", "encode": "one_hot", "value": c} for c in CATEGORIES]
    + [{"feature": "device", "encode": "one_hot", "value": d} for d in DEVICES]
)
N_COLS = len(COLUMNS)
LOG1P_COLS = [0, 3]  # price, item_popularity: log1p(max(x, 0)) inside the graph

# Two versions for hot-reload tests: same layout, different seed / L2.
VERSIONS = {
    "1": {"seed": 1, "alpha": 1e-3},
    "2": {"seed": 2, "alpha": 1e-2},
}


def synth(n: int, seed: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """n request feature maps (as the generator writes them), their true
    click probability and a sampled click label."""
    rng = np.random.default_rng(seed)
    price = rng.lognormal(np.log(40.0), 0.9, n)
    ctr = rng.beta(2.0, 60.0, n)
    pop = rng.lognormal(np.log(200.0), 1.2, n)
    cat = rng.choice(len(CATEGORIES), n, p=np.array(CATEGORY_WEIGHTS) / sum(CATEGORY_WEIGHTS))
    dev = rng.choice(len(DEVICES), n, p=DEVICE_WEIGHTS)
    effect = np.array([CAT_EFFECT.get(c, 0.0) for c in CATEGORIES])[cat]
    z = (
        -3.2
        - 0.3 * np.log(price / 40.0)
        + 9.0 * (ctr - 0.032)
        + 0.12 * np.log(pop / 200.0)
        + effect
        + rng.normal(0.0, 0.3, n)
    )
    p = 1.0 / (1.0 + np.exp(-z))
    null = rng.random(n) < NULL_RATE
    label = (rng.random(n) < p).astype(np.int64)
    rows = [
        {
            "price": round(float(price[i]), 2),
            "user_ctr_7d": None if null[i] else round(float(ctr[i]), 4),
            "item_popularity": float(np.round(pop[i])),
            "category": CATEGORIES[cat[i]],
            "device": DEVICES[dev[i]],
        }
        for i in range(n)
    ]
    return rows, p, label


def encode(rows: list[dict]) -> np.ndarray:
    """The raw float32 input row, exactly as the Rust worker builds it
    (the same rules as score_reference.py, kept inline so this script has
    no import path games)."""
    x = np.zeros((len(rows), N_COLS), dtype=np.float32)
    for i, r in enumerate(rows):
        for j, col in enumerate(COLUMNS):
            v = r.get(col["feature"])
            if col["encode"] == "number":
                x[i, j] = np.float32(CTR_DEFAULT if v is None else float(v))
            elif col["encode"] == "is_null":
                x[i, j] = 1.0 if v is None else 0.0
            else:
                x[i, j] = 1.0 if v == col["value"] else 0.0
    return x


def transform(x: np.ndarray) -> np.ndarray:
    """What the ONNX prefix does before scaling (float64 for training)."""
    t = x.astype(np.float64).copy()
    t[:, LOG1P_COLS] = np.log1p(np.maximum(t[:, LOG1P_COLS], 0.0))
    return t


def build_onnx(mlp: MLPClassifier, mean: np.ndarray, scale: np.ndarray, meta: dict) -> onnx.ModelProto:
    """skl2onnx's MLP graph, cut at the positive-class sigmoid, behind a
    log1p + standardisation prefix, with a [batch] probability output."""
    sk = to_onnx(
        mlp,
        np.zeros((1, N_COLS), dtype=np.float32),
        options={id(mlp): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    g = sk.graph
    sk_in = g.input[0].name
    # Keep only the nodes the sigmoid output depends on (drops the label branch
    # and its ai.onnx.ml ArrayFeatureExtractor).
    sig = [n for n in g.node if n.op_type == "Sigmoid"]
    assert len(sig) == 1, [n.op_type for n in g.node]
    wanted, keep = {sig[0].output[0]}, []
    for n in reversed(g.node):
        if any(o in wanted for o in n.output):
            keep.append(n)
            wanted.update(n.input)
    keep.reverse()
    used = {i for n in keep for i in n.input}
    inits = [t for t in g.initializer if t.name in used]

    mask = np.zeros(N_COLS, dtype=np.float32)
    mask[LOG1P_COLS] = 1.0
    consts = [
        numpy_helper.from_array(np.zeros(1, dtype=np.float32), "pre_zero"),
        numpy_helper.from_array(np.ones(1, dtype=np.float32), "pre_one"),
        numpy_helper.from_array(mask, "pre_log_mask"),
        numpy_helper.from_array((1.0 - mask).astype(np.float32), "pre_keep_mask"),
        numpy_helper.from_array(mean.astype(np.float32), "pre_mean"),
        numpy_helper.from_array((1.0 / scale).astype(np.float32), "pre_inv_scale"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "post_axes"),
    ]
    pre = [
        helper.make_node("Max", ["features", "pre_zero"], ["pre_nonneg"]),
        helper.make_node("Add", ["pre_nonneg", "pre_one"], ["pre_plus1"]),
        helper.make_node("Log", ["pre_plus1"], ["pre_log1p"]),
        helper.make_node("Mul", ["pre_log1p", "pre_log_mask"], ["pre_logged"]),
        helper.make_node("Mul", ["features", "pre_keep_mask"], ["pre_kept"]),
        helper.make_node("Add", ["pre_logged", "pre_kept"], ["pre_t"]),
        helper.make_node("Sub", ["pre_t", "pre_mean"], ["pre_centered"]),
        helper.make_node("Mul", ["pre_centered", "pre_inv_scale"], [sk_in]),
    ]
    post = [helper.make_node("Squeeze", [sig[0].output[0], "post_axes"], ["click_prob"])]
    graph = helper.make_graph(
        pre + keep + post,
        "ctr_ranker",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", N_COLS])],
        [helper.make_tensor_value_info("click_prob", TensorProto.FLOAT, ["batch"])],
        initializer=consts + inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="infermon train_ctr.py (skl2onnx MLPClassifier)",
        doc_string="ctr-ranker click model; input layout: feature_spec.json",
    )
    model.ir_version = 8  # readable by every ONNX Runtime >= 1.14
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, str(v)
    onnx.checker.check_model(model, full_check=True)
    return model


def spec() -> dict:
    return {
        "model": MODEL_NAME,
        "kind": "tabular",
        "applies_to_versions": sorted(VERSIONS),
        "inputs": [
            {
                "name": "features",
                "dtype": "float32",
                "shape": ["batch", N_COLS],
                "layout": "row-major, one row per request, columns in `columns` order",
            }
        ],
        "outputs": [
            {
                "name": "click_prob",
                "dtype": "float32",
                "shape": ["batch"],
                "score": True,
                "meaning": "predicted click probability of the row, in [0, 1]",
            }
        ],
        "features": {
            "price": {"type": "number", "required": True, "nullable": False,
                      "note": "the graph applies log1p(max(x, 0)); pass the raw value"},
            "user_ctr_7d": {"type": "number", "required": False, "nullable": True,
                            "default": CTR_DEFAULT,
                            "note": "missing or null -> value column = default, is_null column = 1"},
            "item_popularity": {"type": "number", "required": True, "nullable": False,
                                "note": "the graph applies log1p(max(x, 0)); pass the raw value"},
            "category": {"type": "string", "required": True, "nullable": False,
                         "vocabulary": CATEGORIES,
                         "unknown": "all-zero one-hot (accepted, worth counting)"},
            "device": {"type": "string", "required": True, "nullable": False,
                       "vocabulary": DEVICES,
                       "unknown": "all-zero one-hot (accepted, worth counting)"},
        },
        "columns": [dict(index=i, **c) for i, c in enumerate(COLUMNS)],
        "encoding_rules": {
            "number": "f32 of the JSON number (f64 -> f32, round to nearest); null/missing -> `default` "
                      "if the feature has one, otherwise the request is invalid",
            "is_null": "1.0 if the feature is missing or null, else 0.0",
            "one_hot": "1.0 if the feature's string equals `value`, else 0.0",
            "invalid": "a required feature missing/null, a number given as a string, a string given "
                       "as a number, or a non-finite number -> error (DLQ / status=error), naming the feature",
            "extra_features": "ignored",
        },
        "graph": "Max(x,0)->Add 1->Log on columns 0 and 3 (mask), (t-mean)*inv_scale, "
                 "MLP 14-32-16-1 ReLU, Sigmoid, Squeeze; ONNX opset 17, standard ops only",
    }


def train_version(version: str, seed: int, alpha: float, n: int, out: Path) -> tuple[MLPClassifier, dict]:
    rows, p_true, y = synth(n, seed=1000 + seed)
    x = encode(rows)
    t = transform(x)
    mean, scale = t.mean(axis=0), t.std(axis=0)
    scale[scale == 0] = 1.0
    mlp = MLPClassifier(
        hidden_layer_sizes=(32, 16),
        alpha=alpha,
        batch_size=1024,
        learning_rate_init=3e-4,
        max_iter=15,  # fixed epoch budget: early stopping scores accuracy,
        tol=0.0,  # which is flat (~0.955) at a 4.5 % click rate
        random_state=seed,
    )
    mlp.fit((t - mean) / scale, y)

    rows_v, p_v, y_v = synth(50_000, seed=9000 + seed)
    xv = encode(rows_v)
    p_sk = mlp.predict_proba((transform(xv) - mean) / scale)[:, 1]
    metrics = {
        "auc": round(float(roc_auc_score(y_v, p_sk)), 4),
        "auc_true_p": round(float(roc_auc_score(y_v, p_v)), 4),
        "logloss": round(float(log_loss(y_v, p_sk)), 5),
        "mean_score": round(float(p_sk.mean()), 5),
        "ctr": round(float(y_v.mean()), 5),
        "corr_with_true_p": round(float(np.corrcoef(p_sk, p_v)[0, 1]), 4),
    }
    meta = {
        "infermon.model": MODEL_NAME,
        "infermon.version": version,
        "infermon.input": "features",
        "infermon.output": "click_prob",
        "train.seed": seed,
        "train.alpha": alpha,
        "train.rows": n,
        "train.iterations": mlp.n_iter_,
        **{f"valid.{k}": v for k, v in metrics.items()},
    }
    model = build_onnx(mlp, mean, scale, meta)
    path = out / MODEL_NAME / version / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))

    # The exported graph must agree with scikit-learn on float32 inputs.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    p_onnx = sess.run(["click_prob"], {"features": xv})[0]
    p_ref = mlp.predict_proba((transform(xv) - mean) / scale)[:, 1]
    diff = float(np.abs(p_onnx.astype(np.float64) - p_ref).max())
    assert p_onnx.shape == (len(xv),) and p_onnx.dtype == np.float32
    assert diff < 1e-5, diff
    metrics["max_abs_diff_onnx_vs_sklearn"] = diff
    print(f"v{version}: {path} ({path.stat().st_size} B) iters={mlp.n_iter_} {metrics}")
    return mlp, metrics


def check_recording(path: str, models: dict[str, Path]) -> None:
    """Compare the synthetic features with a generator recording and score
    its predictions with the exported models (AUC on its feedback labels)."""
    import io

    import onnxruntime as ort

    if path.endswith(".zst"):
        import zstandard

        fh = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")), encoding="utf-8")
    else:
        fh = open(path, encoding="utf-8")
    preds, labels = {}, {}
    for line in fh:
        e = json.loads(line)
        if e.get("topic") == "inference.predictions" and e.get("status") == "ok" and "price" in e.get("features", {}):
            preds[e["request_id"]] = e
        elif e.get("topic") == "inference.feedback":
            labels[e["request_id"]] = e["label"]
    rec = list(preds.values())
    syn, _, _ = synth(len(rec), seed=4242)
    print(f"recording {path}: {len(rec)} tabular predictions, {len(labels)} labels")
    for f in ["price", "user_ctr_7d", "item_popularity"]:
        a = np.array([r["features"][f] for r in rec if r["features"].get(f) is not None])
        b = np.array([r[f] for r in syn if r[f] is not None])
        q = [0.05, 0.5, 0.95]
        print(f"  {f:16s} recording q05/50/95 {np.round(np.quantile(a, q), 4)}  synthetic {np.round(np.quantile(b, q), 4)}")
    for f, vocab in [("category", CATEGORIES), ("device", DEVICES)]:
        a = [sum(r["features"][f] == v for r in rec) / len(rec) for v in vocab]
        b = [sum(r[f] == v for r in syn) / len(syn) for v in vocab]
        print(f"  {f:16s} recording {np.round(a, 3)}  synthetic {np.round(b, 3)}")
    ids = [r["request_id"] for r in rec if r["request_id"] in labels]
    y = np.array([labels[i] for i in ids])
    x = encode([preds[i]["features"] for i in ids])
    gen = np.array([preds[i]["score"] for i in ids])
    print(f"  labelled: {len(ids)}, ctr {y.mean():.4f}; generator score AUC {roc_auc_score(y, gen):.4f}")
    for v, p in models.items():
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(["click_prob"], {"features": x})[0]
        print(f"  model v{v}: AUC {roc_auc_score(y, s):.4f}, mean {s.mean():.4f}, corr with generator score {np.corrcoef(s, gen)[0, 1]:.4f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "models"),
                    help="models directory (default: inference/models)")
    ap.add_argument("--rows", type=int, default=500_000, help="training rows per version")
    ap.add_argument("--versions", nargs="*", default=sorted(VERSIONS))
    ap.add_argument("--recording", action="append", default=[], help="generator recording to compare with")
    args = ap.parse_args()
    out = Path(args.out)
    (out / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    spec_path = out / MODEL_NAME / "feature_spec.json"
    spec_path.write_text(json.dumps(spec(), indent=2) + "\n")
    print(f"wrote {spec_path}")
    for v in args.versions:
        train_version(v, VERSIONS[v]["seed"], VERSIONS[v]["alpha"], args.rows, out)
    for r in args.recording:
        check_recording(r, {v: out / MODEL_NAME / v / "model.onnx" for v in args.versions})
    return 0


if __name__ == "__main__":
    sys.exit(main())
