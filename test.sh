#!/usr/bin/env bash
# Set everything up (idempotent, fast when done), then run every test:
# pytest (native GPU tests use lavapipe on CPU-only machines), then the Playwright browser suite.
# With arguments, runs only pytest with them, e.g. ./test.sh -x tests/test_tokenizer.py
set -uo pipefail
cd "$(dirname "$0")"
bash tools/setup.sh || exit 1

failed=()
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
    echo "pytest: no tests collected (not a failure)"
elif [ $rc -ne 0 ]; then
    failed+=("pytest (exit $rc)")
fi

if [ $# -eq 0 ]; then
    node_modules/.bin/playwright test
    rc=$?
    [ $rc -ne 0 ] && failed+=("playwright (exit $rc)")
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all tests passed"
