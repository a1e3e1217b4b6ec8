#!/usr/bin/env bash
# Rewrite constraints.txt from the working .venv: the exact version of every installed package
# (the editable project itself left out), so setup.sh and .ci/run install what was tested.
# Run after a deliberate upgrade, then run `bash .ci/run` before committing the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
{
  echo "# Exact versions CI tested (python $(python -c 'import sys; print(".".join(map(str, sys.version_info[:2])))')); written by scripts/lock.sh, installed by"
  echo "# scripts/setup.sh with pip -c. torch's local tag (+cpu) is dropped: 2.13.0 matches the CPU build."
  python -m pip freeze --exclude-editable --all | grep -vE '^(pip|setuptools|wheel)==' | sed -E 's/^(torch==[^+]+)\+.*/\1/' | sort -f
} > constraints.txt
echo "wrote constraints.txt ($(grep -c '==' constraints.txt) pins)"
