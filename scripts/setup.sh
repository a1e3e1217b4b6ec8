#!/usr/bin/env bash
# Create .venv with aftertune and its dependencies. Safe to re-run.
# torch is pinned to the CPU build 2.13.0 first, so nothing later pulls a CUDA build; everything else
# comes at the exact versions CI tested (constraints.txt, rewritten by scripts/lock.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -c constraints.txt -e ".[dev,bench]"
python scripts/check_lock.py
python -c "import torch, transformers, peft, trl; print(f'aftertune env ready: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}')"
