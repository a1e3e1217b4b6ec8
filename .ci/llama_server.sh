#!/usr/bin/env bash
# A separate virtual environment with llama-cpp-python's OpenAI-compatible server,
# for tests/test_server_integration.py. Kept apart from .venv so the server's
# dependencies (its own pydantic, fastapi, numpy, ...) never move the main pins.
#
#   bash .ci/llama_server.sh install   # build it (first time: compiles llama.cpp, ~8-15 min on 2 cores;
#                                      # already there: ~1 s)
#   bash .ci/llama_server.sh python    # print the interpreter path (valid before the install finishes)
#   bash .ci/llama_server.sh wait [S]  # wait up to S seconds (default 1800) for a running install
#   bash .ci/llama_server.sh check     # exit 0 if the server can be imported
#
# Where: $AFTERTUNE_LLAMA_SERVER_VENV, default ~/.cache/aftertune/llama-server-<version>-<build>
# (outside the checkout, so CI's fresh clones reuse it). The install builds into
# <venv>.partial and renames it into place, so the venv is complete or absent;
# <venv>.log holds pip's output and <venv>.failed appears if the install failed.
# The tests find the interpreter through AFTERTUNE_LLAMA_SERVER_PYTHON.
set -euo pipefail

VERSION=0.3.36
# llama.cpp is built for AVX2 (GGML_NATIVE off), not -march=native: on an Intel Xeon with AMX the native build
# compiles ggml's AMX kernels, and a virtual machine that does not grant the process AMX tile state kills the
# server with SIGILL on its first completion (measured 2026-12-07). AVX2 runs on every x86-64 CPU CI draws.
BUILD=avx2
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
VENV=${AFTERTUNE_LLAMA_SERVER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/aftertune/llama-server-$VERSION-$BUILD}
PY=${PYTHON:-python3}

check() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<EOF >/dev/null 2>&1
import llama_cpp, llama_cpp.server.app, uvicorn
assert llama_cpp.__version__ == "$VERSION", llama_cpp.__version__
EOF
}

install() {
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9  # one installer at a time; a second one waits, then finds the venv ready
  if check; then
    rm -f "$VENV.failed"
    echo "llama-cpp-python $VERSION server ready: $VENV/bin/python"
    return 0
  fi
  rm -rf "$VENV" "$VENV.partial" "$VENV.failed"
  echo "installing llama-cpp-python[server]==$VERSION into $VENV (log: $VENV.log)"
  if ! {
      "$PY" -m venv "$VENV.partial" &&
      "$VENV.partial/bin/python" -m pip install -q --upgrade pip &&
      CMAKE_ARGS="$CMAKE_FLAGS" "$VENV.partial/bin/python" -m pip install --no-cache-dir \
        "llama-cpp-python[server]==$VERSION"
    } >"$VENV.log" 2>&1; then
    tail -n 30 "$VENV.log" >"$VENV.failed"
    rm -rf "$VENV.partial"
    echo "llama-cpp-python install FAILED; last lines of $VENV.log:" >&2
    cat "$VENV.failed" >&2
    return 1
  fi
  mv "$VENV.partial" "$VENV"
  if ! check; then
    echo "installed, but llama_cpp.server does not import; see $VENV.log" | tee "$VENV.failed" >&2
    return 1
  fi
  echo "llama-cpp-python $VERSION server ready: $VENV/bin/python"
}

wait_ready() {
  local limit=${1:-1800} waited=0
  while ! check; do
    if [ -e "$VENV.failed" ]; then
      echo "llama-cpp-python install failed:" >&2
      cat "$VENV.failed" >&2
      return 1
    fi
    if [ "$waited" -ge "$limit" ]; then
      echo "llama-cpp-python server not ready after ${limit}s (log: $VENV.log)" >&2
      return 1
    fi
    sleep 5
    waited=$((waited + 5))
  done
  echo "$VENV/bin/python"
}

case "${1:-}" in
  install) install ;;
  python) echo "$VENV/bin/python" ;;
  wait) wait_ready "${2:-1800}" ;;
  check) check ;;
  *) echo "usage: $0 install|python|wait [SECONDS]|check" >&2; exit 2 ;;
esac
