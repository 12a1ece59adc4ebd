#!/usr/bin/env bash
# The side virtual environment for the evaluation-harness tests (`make harness`, README
# "Evaluate an adapter with lm-evaluation-harness / lmms-eval"): lm-evaluation-harness and
# lmms-eval beside a CPU build of torch, outside the project's own venv (their pins differ from
# the service's). Idempotent: a finished venv is reused.
#   scripts/harness_venv.sh [DIR]     (default: $HARNESS_VENV or ~/.cache/selfreward/harness-venv)
set -euo pipefail
VENV="${1:-${HARNESS_VENV:-$HOME/.cache/selfreward/harness-venv}}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
if [ -f "$VENV/.installed" ]; then
    echo "$VENV"
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: lm-eval's default resolution pulls the multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q $TORCH_SPEC
# filelock<4: lmms-eval 0.7.3 imports filelock._api, which filelock 4 removed.
"$VENV/bin/python" -m pip install -q "lm-eval[hf,api]==0.4.13" "lmms-eval==0.7.3" "filelock<4" $TORCH_SPEC
touch "$VENV/.installed"
echo "$VENV"
