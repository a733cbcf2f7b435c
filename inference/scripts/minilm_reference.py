#!/usr/bin/env python3
"""Reference embeddings and scores of the MiniLM query encoder.

all-MiniLM-L6-v2 (int8 ONNX, installed by install_minilm.sh) run with Python
onnxruntime and the `tokenizers` package on the same tokenizer.json the Rust
worker loads with the `tokenizers` crate. The ONNX graph returns token
embeddings only (`last_hidden_state`, [batch, seq, 384]); the sentence
embedding is computed here as sentence-transformers does for this model:

    1. tokenize: [CLS] wordpieces [SEP], lower-cased, token_type_ids all 0
    2. mean pooling over tokens with attention_mask = 1
    3. L2 normalisation (x / max(||x||, 1e-12))

score = cosine similarity (= dot product of the normalised embeddings) to the
fixed reference query "running shoes", in [-1, 1].

Texts longer than --max-tokens (default 128, the tokenizer.json truncation
length the model was trained with), counting [CLS] and [SEP], are an error
("text too long"), never silently truncated. Empty or missing text is an
error too.

Padding: tokenizer.json as shipped pads every input to 128 tokens. This script
turns that off and pads each batch to its longest member (pad id 0, mask 0);
with the mask applied, padding changes the embedding only in the last float32
bits (see minilm.md), so --batch-size 1 vs. a full batch agree to ~1e-7.

    python inference/scripts/minilm_reference.py "wireless earbuds" "red dress"
    python inference/scripts/minilm_reference.py --requests reqs.jsonl --out scores.jsonl
    python inference/scripts/minilm_reference.py --embeddings "running shoes"   # also print the 384 floats

Output: one JSON line per text: {"request_id"?, "text", "tokens", "ids"?,
"score", "norm_before_l2", "embedding"?} or {"request_id"?, "text", "error"}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

REFERENCE_QUERY = "running shoes"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "models" / "minilm" / "1"


class Encoder:
    def __init__(self, model_dir: Path, max_tokens: int = 128, threads: int = 1):
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.no_truncation()
        self.max_tokens = max_tokens
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])

    def tokenize(self, text) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("`text`: missing or empty")
        ids = self.tok.encode(text).ids
        if len(ids) > self.max_tokens:
            raise ValueError(f"`text`: too long ({len(ids)} tokens > {self.max_tokens})")
        return ids

    def embed_ids(self, batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 embeddings [n, 384] (pooling in float64) and
        the norms before normalisation."""
        seq = max(len(ids) for ids in batch)
        input_ids = np.zeros((len(batch), seq), dtype=np.int64)
        mask = np.zeros((len(batch), seq), dtype=np.int64)
        for i, ids in enumerate(batch):
            input_ids[i, : len(ids)] = ids
            mask[i, : len(ids)] = 1
        (hidden,) = self.sess.run(
            ["last_hidden_state"],
            {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)},
        )
        m = mask[:, :, None].astype(np.float64)
        pooled = (hidden.astype(np.float64) * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norm = np.linalg.norm(pooled, axis=1)
        emb = pooled / np.maximum(norm, 1e-12)[:, None]
        return emb, norm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("texts", nargs="*", help="query texts")
    ap.add_argument("--model-dir", default=str(DEFAULT_DIR), help=f"holds model.onnx + tokenizer.json (default {DEFAULT_DIR})")
    ap.add_argument("--requests", help="JSON lines of RequestEvents; their `text` is scored")
    ap.add_argument("--reference-query", help=f"default: the spec's, else {REFERENCE_QUERY!r}")
    ap.add_argument("--max-tokens", type=int, help="default: the spec's, else 128")
    ap.add_argument("--batch-size", type=int, default=0, help="texts per session.run (default 0: all at once)")
    ap.add_argument("--embeddings", action="store_true", help="include the 384-d embedding")
    ap.add_argument("--ids", action="store_true", help="include the token ids (to check a tokenizer port)")
    ap.add_argument("--out", help="write JSON lines here instead of stdout")
    args = ap.parse_args()

    # The committed spec next to the version directories, if there is one,
    # is the source of truth for the limits and the score.
    spec_path = Path(args.model_dir).resolve().parent / "feature_spec.json"
    if spec_path.exists():
        spec = json.loads(spec_path.read_text())
        if args.reference_query is None:
            args.reference_query = spec["score"]["reference_query"]
        if args.max_tokens is None:
            args.max_tokens = spec["tokenizer"]["max_tokens"]
    args.reference_query = args.reference_query or REFERENCE_QUERY
    args.max_tokens = args.max_tokens or 128

    enc = Encoder(Path(args.model_dir), args.max_tokens)
    ref, _ = enc.embed_ids([enc.tokenize(args.reference_query)])

    items: list[dict] = []
    if args.requests:
        for line in open(args.requests, encoding="utf-8"):
            if line.strip():
                e = json.loads(line)
                items.append({"request_id": e.get("request_id"), "text": e.get("text")})
    items += [{"text": t} for t in args.texts]

    todo = []
    for it in items:
        try:
            it["tokens"] = len(ids := enc.tokenize(it["text"]))
            if args.ids:
                it["ids"] = ids
            todo.append((it, ids))
        except ValueError as err:
            it["error"] = str(err)
    bs = args.batch_size if args.batch_size > 0 else max(len(todo), 1)
    for i in range(0, len(todo), bs):
        chunk = todo[i : i + bs]
        emb, norm = enc.embed_ids([ids for _, ids in chunk])
        for (it, _), e, n in zip(chunk, emb, norm):
            it["score"] = float(e @ ref[0])
            it["norm_before_l2"] = float(n)
            if args.embeddings:
                it["embedding"] = [float(v) for v in e]

    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    for it in items:
        out.write(json.dumps(it) + "\n")
    if args.out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
