#!/bin/sh
# export_ref.sh - runs the Python tests of `flowkit export` (tests/python:
# the strict safetensors reader, the numpy reference against logprob).
#
# They need a Python 3 with numpy and nothing else: $PYTHON when set, else
# the first of python3 and /usr/bin/python3 that imports numpy (a python3
# first on PATH may be an interpreter without it).  None: skipped (77).
set -u
py=
for cand in "${PYTHON:-}" python3 /usr/bin/python3; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 &&
        "$cand" -c 'import sys, numpy; sys.exit(sys.version_info < (3, 6))' \
            >/dev/null 2>&1; then
        py=$cand
        break
    fi
done
if [ -z "$py" ]; then
    echo "SKIP: no Python 3 with numpy (tried \$PYTHON, python3," \
        "/usr/bin/python3); install python3-numpy to run these tests"
    exit 77
fi
echo "using $(command -v "$py") ($("$py" -c 'import numpy; print("numpy", numpy.__version__)'))"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
# from a scratch directory, without writing bytecode into the sources
cd "$t" || exit 1
PYTHONPATH="$top_srcdir/tests/python" PYTHONDONTWRITEBYTECODE=1 \
    "$py" -m unittest -v test_safetensors test_export_ref
