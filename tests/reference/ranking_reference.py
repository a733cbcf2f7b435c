"""Independent reference for infermon's threshold and ranking quality.

Usage:
    python ranking_reference.py RECORDING.jsonl THRESHOLD K1,K2,...
        Reads a recording's predictions and feedback and prints, per 60 s
        window (by the prediction's event time) and model version:
        - the confusion counts, accuracy, precision, recall, F1 at THRESHOLD
          (score >= THRESHOLD is a predicted positive) with scikit-learn's
          confusion_matrix / accuracy_score / precision_recall_fscore_support;
        - for ranked lists (list_id): NDCG@k with scikit-learn's ndcg_score,
          MRR and HitRate@k, averaged over the lists with a click, plus the
          judged and clicked list counts and the CTR by position.
        Feedback labels a prediction by (request_id, item_id); the highest
        label wins; a list is judged when any of its items is labelled, and
        its unlabelled items count as not relevant.
"""

import json
import sys
from collections import defaultdict

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, ndcg_score,
                             precision_recall_fscore_support)

WINDOW_MS = 60_000


def main(path, threshold, ks):
    preds, labels = [], {}
    for line in open(path):
        e = json.loads(line)
        if e["topic"] == "inference.predictions":
            if e.get("status") == "ok" and e.get("score") is not None:
                preds.append(e)
        elif e["topic"] == "inference.feedback":
            key = (e["request_id"], e.get("item_id"))
            labels[key] = max(labels.get(key, 0), e["label"])
    windows = defaultdict(list)
    for p in preds:
        end = p["ts"] - p["ts"] % WINDOW_MS + WINDOW_MS
        windows[(end, p["model"], p["model_version"])].append(p)
    out = []
    for (end, model, version), ps in sorted(windows.items()):
        row = {"end_ms": end, "model": model, "model_version": version}
        labelled = [(p["score"], labels[(p["request_id"], p.get("item_id"))])
                    for p in ps if (p["request_id"], p.get("item_id")) in labels]
        if labelled:
            s = np.array([x[0] for x in labelled])
            y = np.array([x[1] for x in labelled])
            pred = (s >= threshold).astype(int)
            tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
            p, r, f, _ = precision_recall_fscore_support(
                y, pred, average="binary", zero_division=np.nan)
            row["quality"] = {
                "true_positives": int(tp), "false_positives": int(fp),
                "true_negatives": int(tn), "false_negatives": int(fn),
                "accuracy": float(accuracy_score(y, pred)),
                "precision": None if np.isnan(p) else float(p),
                "recall": None if np.isnan(r) else float(r),
                "f1": None if np.isnan(f) else float(f),
            }
        lists = defaultdict(list)
        for p in ps:
            if p.get("list_id") is not None:
                lists[p["list_id"]].append(p)
        judged = clicked = 0
        ndcg = {k: [] for k in ks}
        hits = {k: 0 for k in ks}
        rr = []
        shown = defaultdict(lambda: [0, 0])
        for items in lists.values():
            keys = [(p["request_id"], p.get("item_id")) for p in items]
            if not any(k in labels for k in keys):
                continue
            judged += 1
            items = sorted(items, key=lambda p: p["position"])
            rel = [labels.get((p["request_id"], p.get("item_id")), 0) for p in items]
            for p, y in zip(items, rel):
                if p["position"] <= max(ks):
                    shown[p["position"]][0] += 1
                    shown[p["position"]][1] += y
            if not any(rel):
                continue
            clicked += 1
            if len(rel) == 1:
                gains = {k: 1.0 for k in ks}  # ndcg_score needs two items
            else:
                order = [-float(p["position"]) for p in items]
                gains = {k: float(ndcg_score([rel], [order], k=k)) for k in ks}
            for k in ks:
                ndcg[k].append(gains[k])
                hits[k] += int(any(rel[:k]))
            rr.append(1.0 / (rel.index(1) + 1))
        if judged:
            ranking = {"lists": judged, "lists_clicked": clicked,
                       "position_ctr": {str(pos): {"impressions": n, "clicks": c}
                                        for pos, (n, c) in shown.items()}}
            if clicked:
                for k in ks:
                    ranking[f"ndcg_at_{k}"] = float(np.mean(ndcg[k]))
                    ranking[f"hit_rate_at_{k}"] = hits[k] / clicked
                ranking["mrr"] = float(np.mean(rr))
            row["ranking"] = ranking
        out.append(row)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), [int(k) for k in sys.argv[3].split(",")])
