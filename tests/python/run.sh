#!/bin/sh
# Runs Python test files with pytest against the ps package of a build:
#   run.sh [--require MODULE]... TEST_FILE... [PYTEST_ARG...]
# ctest gives PYTHONPATH (build/python), PS_BIN_DIR and PS_TEST_TMP. Exits
# 77 (ctest: skipped), saying why, when pytest, NumPy or a --require'd
# module (torch) is not installed: deploy/install-deps.sh --tests installs
# them.
set -eu
py=${PS_PYTHON:-python3}
need="pytest numpy ps"
while [ "${1:-}" = --require ]; do
  need="$need $2"
  shift 2
done
for m in $need; do
  if ! "$py" -c "import $m" 2>/dev/null; then
    echo "skipped: $py cannot import $m ($("$py" -c "import $m" 2>&1 | tail -n 1))"
    exit 77
  fi
done
cd "$(dirname "$0")"
exec "$py" -m pytest -q -p no:cacheprovider -rs "$@"
