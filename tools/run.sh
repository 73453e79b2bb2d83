#!/usr/bin/env bash
# One-step set-up and run: creates .venv (if missing), installs spot with its
# test extras from PyPI at the versions CI tested (constraints.txt), then runs
# `spot demo ...` or the test suite.
#   bash tools/run.sh demo [--quick] [--out DIR] [--seed N]
#   bash tools/run.sh test [--slow] [pytest args]   (--slow: also the journeys, as CI)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
STAMP=.venv/.spot-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ constraints.txt -nt "$STAMP" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  touch "$STAMP"
fi
cmd="${1:-test}"; shift || true
case "$cmd" in
  demo) exec .venv/bin/spot demo "$@" ;;
  test) exec .venv/bin/python -m pytest tests "$@" ;;
  *) echo "usage: bash tools/run.sh demo|test [args]" >&2; exit 2 ;;
esac
